"""Faults during a sweep: killed trials, NaN, out of memory. Nothing is lost (Ctrl-C:
tests/hpo/test_interrupt.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.dispatch.chaos import parse_chaos
from hpo.run import main as run_main
from tests.sweep_files import write_sweep

pytestmark = pytest.mark.slow


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'optuna.db'}")


def assert_same_as_uncut(resumed: optuna.trial.FrozenTrial, whole: optuna.trial.FrozenTrial,
                         resumed_dir: Path, whole_dir: Path) -> None:
    """A resumed trial ends where the uncut one does: value and every rung within 1e-3, the
    same best step, and the exported LoRA (``<dir>/runs/<name>/best_lora``) within 1e-5."""
    from safetensors.torch import load_file

    from trials.api import WEIGHTS_NAME

    assert abs(resumed.value - whole.value) <= 1e-3
    for step, score in whole.user_attrs["score_per_rung"].items():
        assert abs(resumed.user_attrs["score_per_rung"][step] - score) <= 1e-3, step
    assert resumed.user_attrs["best_step"] == whole.user_attrs["best_step"]
    loras = [load_file(d / "runs" / d.name / "best_lora" / WEIGHTS_NAME)
             for d in (whole_dir, resumed_dir)]
    difference = max(float((loras[0][k] - loras[1][k]).abs().max()) for k in loras[0])
    print(f"max abs LoRA difference through Ray: {difference:.3g}")
    assert difference <= 1e-5


def test_chaos_draws_are_per_trial_and_reproducible() -> None:
    plan = parse_chaos("kill=0.1,nan=0.05", seed=3)
    draws = [plan.fault_for(f"trial{i}", 20) for i in range(400)]
    assert draws == [plan.fault_for(f"trial{i}", 20) for i in range(400)]
    kills = sum(1 for d in draws if d and d["kind"] == "kill")
    nans = sum(1 for d in draws if d and d["kind"] == "nan")
    assert 20 <= kills <= 60 and 5 <= nans <= 35
    assert all(1 <= d["step"] <= 20 for d in draws if d)
    assert parse_chaos(None).fault_for("x", 5) is None


def test_a_crash_draws_its_moment_unless_the_spec_fixes_it() -> None:
    # Issue 31: crash=RATE strikes once at a random step and moment (mid-step, mid-checkpoint,
    # after a rung); crash@rung:5 always just after the first rung at or after step 5.
    draws = [parse_chaos("crash=1.0").fault_for(f"t{i}", 20) for i in range(60)]
    assert {d["at"] for d in draws} == {"step", "checkpoint", "rung"}
    assert parse_chaos("crash@rung:5=1.0").fault_for("t", 20) == \
        {"kind": "crash", "step": 5, "at": "rung"}
    # The kinds before issue 31 draw as they did: no moment, the same steps.
    assert parse_chaos("kill=1.0", seed=3).fault_for("t", 20) == {"kind": "kill", "step": 11}
    for bad in ("nan@rung=1", "crash@soon=1", "crash@rung:x=1"):
        with pytest.raises(ValueError, match="KIND"):
            parse_chaos(bad)


def test_killed_trials_are_retried_then_fail_and_the_sweep_finishes(ray_cluster,
                                                                    tmp_path) -> None:
    sweep = write_sweep(tmp_path, name="killed-trials", early_terminate=None,
                        **{"resources.max_retries": 1})
    out = tmp_path / "runs"
    assert run_main(["--sweep", str(sweep), "--trials", "2", "--out", str(out),
                     "--address", ray_cluster, "--inject-faults", "kill=1.0"]) == 0
    study = load(out, "killed-trials")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    for t in study.trials:
        assert "failed 2 time(s)" in t.user_attrs["fail_reason"]  # first try + 1 retry
        assert t.user_attrs["injected_fault"]["kind"] == "kill"


def test_nan_and_out_of_memory_fail_with_their_reason(ray_cluster, tmp_path) -> None:
    sweep = write_sweep(tmp_path, name="nan-oom", early_terminate=None)
    out = tmp_path / "runs"
    assert run_main(["--sweep", str(sweep), "--trials", "4", "--out", str(out),
                     "--address", ray_cluster, "--inject-faults", "nan=0.5,oom=0.5"]) == 0
    study = load(out, "nan-oom")
    assert len(study.trials) == 4
    for t in study.trials:
        fault = t.user_attrs["injected_fault"]
        reason = t.user_attrs["fail_reason"]
        assert t.state == TrialState.FAIL
        if fault["kind"] == "nan":
            assert reason.startswith("TrialDiverged") and f"at step {fault['step']}" in reason
        else:
            assert reason.startswith("TrialOutOfMemory")
            assert f"rank {t.params['rank']}, train_batch_size 2" in reason
    assert not (out / "nan-oom" / "best.yaml").exists()  # no COMPLETE trial, no best


def test_a_full_disk_mid_sweep_is_one_error_line_and_the_study_resumes(
        ray_cluster, tmp_path, monkeypatch, capsys) -> None:
    """The disk fills while the driver writes the study: from the third rung on, the recorder's
    write of a rung into the SQLite study fails as SQLite fails then (``database or disk is
    full``, wrapped by SQLAlchemy). The sweep stops with one ``error:`` line and exit code 2,
    no traceback, and the rerun (space freed) finishes the study with every trial."""
    import sqlite3

    import sqlalchemy.exc

    from hpo.dispatch import recorder

    real = recorder.set_intermediate
    calls = []

    def fill_up(*args, **kwargs):
        calls.append(args)
        if len(calls) >= 3:
            raise sqlalchemy.exc.OperationalError(
                "INSERT INTO trial_intermediate_values ...", {},
                sqlite3.OperationalError("database or disk is full"))
        return real(*args, **kwargs)

    sweep = write_sweep(tmp_path, name="disk-full", early_terminate=None)
    out = tmp_path / "runs"
    command = ["--sweep", str(sweep), "--trials", "3", "--out", str(out), "--address",
               ray_cluster]
    monkeypatch.setattr(recorder, "set_intermediate", fill_up)
    assert run_main(command) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "the study database: database or disk is full" in errors[0], errors
    assert "rerun the same command" in errors[0] and "Traceback" not in err
    monkeypatch.setattr(recorder, "set_intermediate", real)  # space freed
    assert run_main(command) == 0
    study = load(out, "disk-full")
    counted = [t for t in study.trials
               if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(counted) == 3
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_a_worker_killed_after_its_second_rung_resumes_there_with_the_same_score(
        ray_cluster, tmp_path, capsys) -> None:
    """Issue 31: the retry goes on from the rung-8 checkpoint (Tune's), reports only rung 12,
    and ends where a trial that was never killed ends."""

    from trials.api import RESUME_DIR

    studies = {}
    for name, faults in (("whole", None), ("resumed", "crash@rung:5=1.0")):
        sweep = write_sweep(tmp_path / name, name=name, early_terminate=None,
                            **{"resources.max_retries": 1, "confirm.top_k": 0,
                               "parameters.max_train_steps": {"value": 12}})
        out = tmp_path / name / "runs"
        args = ["--sweep", str(sweep), "--trials", "1", "--out", str(out),
                "--address", ray_cluster]
        assert run_main(args + (["--inject-faults", faults] if faults else [])) == 0
        (studies[name],) = load(out, name).trials
    console = capsys.readouterr().out
    whole, resumed = studies["whole"], studies["resumed"]
    assert whole.params == resumed.params  # the same first draw of the same seed
    assert resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["injected_fault"] == {"kind": "crash", "step": 5, "at": "rung"}
    assert resumed.user_attrs["resumed_from_step"] == 8 and resumed.user_attrs["attempt"] == 2
    assert "trial 0   resumed from step 8" in console
    # Each rung once, the killed attempt's two and the retry's one.
    assert sorted(resumed.intermediate_values) == [4, 8, 12]
    assert resumed.user_attrs["last_step"] == 12
    assert_same_as_uncut(resumed, whole, tmp_path / "resumed", tmp_path / "whole")
    assert not (tmp_path / "resumed" / "runs" / "resumed" / "best_lora" / RESUME_DIR).exists()


def test_a_trial_requeued_after_its_driver_died_goes_on_from_its_last_rung(
        ray_cluster, tmp_path) -> None:
    """Issue 31: the driver is killed (SIGKILL) after the trial's rung-8 checkpoint is in the
    study; the rerun queues the trial again with its checkpoints, and the new trial goes on from
    step 8, inherits rungs 4 and 8, and ends where a trial that was never cut ends."""
    import signal
    import subprocess
    import sys

    from hpo.study.storage import CHECKPOINT_PATHS
    from tests.sweep_files import REPO, wait_for_trials
    from trials.api import resume_step

    def sweep_args(name: str) -> list[str]:
        sweep = write_sweep(tmp_path / name, name=name, early_terminate=None,
                            **{"confirm.top_k": 0, "parameters.max_train_steps": {"value": 12}})
        return ["--sweep", str(sweep), "--trials", "1", "--out", str(tmp_path / name / "runs"),
                "--address", ray_cluster]

    assert run_main(sweep_args("whole")) == 0
    (whole,) = load(tmp_path / "whole" / "runs", "whole").trials

    args = sweep_args("cut")
    driver = subprocess.Popen([sys.executable, "-m", "hpo.run", *args], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = wait_for_trials(tmp_path / "cut" / "runs", "cut", lambda trials: any(
        len(t.user_attrs.get(CHECKPOINT_PATHS) or []) >= 2 for t in trials))
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    assert saved, "the trial's second rung checkpoint never reached the study"
    (cut,) = load(tmp_path / "cut" / "runs", "cut").trials
    if cut.state != TrialState.RUNNING:
        pytest.skip(f"the trial ended ({cut.state.name}) before the driver was killed")
    # The last checkpoint the study holds: rung 8's, or rung 12's when it was saved before the
    # signal landed (the trial goes on while the kill is sent); the rerun resumes from it.
    last_saved = resume_step(Path(cut.user_attrs[CHECKPOINT_PATHS][-1]))
    assert last_saved in (8, 12)

    assert run_main(args) == 0
    trials = load(tmp_path / "cut" / "runs", "cut").trials
    assert trials[0].user_attrs.get("interrupted") is True  # not counted
    again = trials[1]
    assert again.user_attrs["retry_of"] == 0 and again.state == TrialState.COMPLETE
    assert again.params == whole.params
    assert again.user_attrs["resumed_from_step"] == last_saved
    assert sorted(again.intermediate_values) == [4, 8, 12]  # inherited up to last_saved
    assert_same_as_uncut(again, whole, tmp_path / "cut", tmp_path / "whole")
