"""The console a person reads: trial event lines from a fake stream of events, the bar, the
driver log's routing of library loggers."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from hpo.outputs.console import SweepConsole, driver_log, rung_line
from hpo.verdict.paired import paired_difference

BASE = [50.0, 52.0, 47.0, 55.0]


@dataclass
class FakeTrial:
    """What the console reads of an optuna.Trial."""

    number: int
    params: dict[str, Any]
    user_attrs: dict[str, Any] = field(default_factory=dict)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def rung(step: int, score: float, per_prompt: list[float], **extra: Any) -> dict[str, Any]:
    return {"step": step, "max_train_steps": 60, "clip_score": score, "clip_score_stderr": 2.5,
            "per_prompt": per_prompt, **extra}


def play(console: SweepConsole) -> None:
    """A sweep of three trials: one completes, one is stopped early, one fails after a retry."""
    t7 = FakeTrial(7, {"rank": 4, "learning_rate": 0.0029554483, "target_modules": "attn"})
    t8 = FakeTrial(8, {"rank": 8, "learning_rate": 0.05, "target_modules": "attn_ff"},
                   {"retry_of": 3})
    t9 = FakeTrial(9, {"rank": 2, "learning_rate": 1e-4, "target_modules": "cross_attn"})
    console.trial_started(t7)
    console.trial_started(t8)
    console.rung_saved(t7, rung(15, 60.0, [56.0, 60.0, 55.0, 69.0]), "ckpt")
    console.rung_saved(t8, rung(15, 40.0, [40.0, 41.0, 38.0, 41.0], control_delta=-0.41,
                                drift=93.21), "ckpt")
    console.trial_finished(t8, TrialState.PRUNED, {
        "score_per_rung": {"15": 40.0}, "best_step": 15, "last_step": 15,
        "delta_vs_baseline": -11.0, "delta_vs_baseline_stderr": 1.2})
    console.trial_started(t9)
    console.rung_saved(t7, rung(30, 66.0, [62.0, 66.0, 61.0, 75.0]), "ckpt")
    console.trial_finished(t7, TrialState.COMPLETE, {
        "score_per_rung": {"15": 60.0, "30": 66.0}, "best_step": 30, "last_step": 60,
        "delta_vs_baseline": 15.0, "delta_vs_baseline_stderr": 1.5})
    console.trial_retried(t9, 2, "RayActorError: The actor died unexpectedly")
    console.trial_started(t9)  # the retry starts again: said once, by trial_retried
    console.trial_finished(t9, TrialState.FAIL, {
        "fail_reason": "TrialDiverged: loss is NaN at step 12 " + "x" * 500})
    console.close()


def test_event_lines_name_the_study_trial_and_what_happened(tmp_path: Path) -> None:
    out = io.StringIO()
    record = io.StringIO()
    play(SweepConsole(3, ["clip_score"], baseline_per_prompt=BASE, stream=out, record=record))
    lines = out.getvalue().splitlines()
    assert all(re.match(r"trial [789] ", line) for line in lines), lines
    assert lines[0] == "trial 7   started: rank 4, learning_rate 0.00296, target_modules attn"
    assert lines[1] == ("trial 8   started (again for trial 3, interrupted): rank 8, "
                        "learning_rate 0.05, target_modules attn_ff")
    paired = paired_difference([56.0, 60.0, 55.0, 69.0], BASE)
    assert lines[2] == (f"trial 7   step 15/60: clip_score 60.00 ± 2.50, Δ {paired.delta:+.2f} ± "
                        f"{paired.stderr:.2f} vs base")
    # Extra figures (issue 21's preservation metrics) appear by name when the rung has them.
    assert lines[3].endswith("vs base, control Δ -0.41, drift 93.2")
    assert "control Δ" not in lines[2] and "drift" not in lines[2]
    assert lines[4].startswith("trial 8   stopped early at step 15 (ASHA): best clip_score "
                               "40.00 at step 15, Δ -11.00 ± 1.20 vs base   [1/3 trials, ")
    assert lines[6].startswith("trial 7   step 30/60")
    assert lines[7].startswith("trial 7   completed: best clip_score 66.00 at step 30, "
                               "Δ +15.00 ± 1.50 vs base   [2/3 trials, ")
    assert lines[8] == ("trial 9   retrying (attempt 2): RayActorError: The actor died "
                        "unexpectedly")
    assert sum(line.startswith("trial 9   started") for line in lines) == 1
    assert lines[9].startswith("trial 9   failed: TrialDiverged: loss is NaN at step 12 xxx")
    assert re.search(r"x\.\.\.   \[3/3 trials, \d\d:\d\d elapsed, ETA 00:00\]$", lines[9])
    assert len(lines[9]) < 260  # a long reason is cut on the console (the study keeps it)
    assert len(lines) == 10
    # driver.log gets the same lines, time-stamped.
    recorded = record.getvalue().splitlines()
    assert [ln.split(" ", 2)[2] for ln in recorded] == lines


def test_not_a_terminal_means_no_bar_and_no_escape_codes() -> None:
    out = io.StringIO()
    play(SweepConsole(3, ["clip_score"], baseline_per_prompt=BASE, stream=out))
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    assert "|" not in out.getvalue()  # no bar


def test_a_terminal_gets_a_live_bar_below_the_lines() -> None:
    out = Tty()
    console = SweepConsole(3, ["clip_score"], baseline_per_prompt=BASE, stream=out)
    assert console.live
    play(console)
    text = out.getvalue()
    assert "\r" in text  # the bar redraws in place
    assert re.search(r"trials 3/3 \|[█#]+\| \d\d:\d\d elapsed, ETA 00:00, best clip_score 66\.00 "
                     r"\(trial 7\)", text)
    # The event lines are there too, whole, without the plain progress text.
    assert "trial 7   completed: best clip_score 66.00 at step 30, Δ +15.00 ± 1.50 vs base\n" \
        in text


def test_a_rung_without_baseline_or_scores_still_prints() -> None:
    assert rung_line({"step": 4}, ["clip_score"], None) == "step 4: no score"
    assert rung_line(rung(4, 50.0, [50.0]), ["clip_score"], None) == \
        "step 4/60: clip_score 50.00 ± 2.50"
    # One prompt pairs, but has no standard error.
    assert rung_line(rung(4, 50.0, [51.0]), ["clip_score"], [50.0]).endswith("Δ +1.00 vs base")


@pytest.mark.parametrize("verbose", [False, True])
def test_driver_log_takes_ray_and_optuna_records_off_the_console(
        tmp_path: Path, verbose: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hpo")  # as hpo.run's logging.basicConfig sets it
    caplog.set_level(logging.INFO, logger="optuna")  # other tests quiet Optuna to WARNING
    console = io.StringIO()
    ray_logger, optuna_logger = logging.getLogger("ray"), logging.getLogger("optuna")
    ray_before, optuna_before = list(ray_logger.handlers), list(optuna_logger.handlers)
    ray_logger.addHandler(on_console := logging.StreamHandler(console))  # as Ray's own
    path = tmp_path / "study" / "driver.log"
    try:
        with driver_log(path, verbose, "python -m hpo.run --trials 2"):
            assert (on_console in ray_logger.handlers) == verbose
            assert any(h in optuna_logger.handlers for h in optuna_before) == verbose
            logging.getLogger("optuna.study.study").info("Using an existing study")
            logging.getLogger("ray.tune.tune").warning("Resume experiment with: Tuner.restore")
            logging.getLogger("hpo").info("our own line")
        assert ray_logger.handlers == [*ray_before, on_console]  # given back as they were
        assert optuna_logger.handlers == optuna_before
    finally:
        ray_logger.removeHandler(on_console)
    assert ("Tuner.restore" in console.getvalue()) == verbose
    text = path.read_text(encoding="utf-8")
    assert "===== " in text and "python -m hpo.run --trials 2" in text
    assert "INFO optuna.study.study: Using an existing study" in text
    assert "WARNING ray.tune.tune: Resume experiment with: Tuner.restore" in text
    assert "INFO hpo: our own line" in text
    with driver_log(path, verbose, "again"):  # a rerun appends
        pass
    assert path.read_text(encoding="utf-8").startswith(text)


def test_a_subset_rung_and_a_raced_trial_say_what_they_scored() -> None:
    from hpo.outputs.console import finished_line

    subset = {**rung(15, 57.5, [60.0, 55.0]), "prompt_indices": [3, 1]}
    line = rung_line(subset, ["clip_score"], BASE)
    # paired with the base model on those two prompts only
    paired = paired_difference([60.0, 55.0], [BASE[3], BASE[1]])
    assert line.startswith("step 15/60 (2 prompts): clip_score 57.50")
    assert f"Δ {paired.delta:+.2f} ± {paired.stderr:.2f} vs base" in line
    raced = {"step": 30, "n": 16, "prompts_total": 48, "delta": -9.124, "stderr": 2.4,
             "p_value": 0.00081, "test": "t", "level": 0.01, "reference_trial": 3}
    assert finished_line(TrialState.PRUNED, {"raced": raced}, "clip_score") == (
        "stopped by racing at step 30 after 16 of 48 prompts: Δ -9.12 ± 2.40 vs trial 3's "
        "rung (one-sided t, p 0.00081 < 0.01)")
    cutoff = finished_line(TrialState.PRUNED, {"raced": {**raced, "against": "cutoff"}},
                           "clip_score")
    assert "vs trial 3's rung (ASHA's cutoff) (one-sided t" in cutoff
