"""End to end: real local Ray, real SQLite study, the tiny model, ``python -m hpo.run``."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.run import main as run_main
from hpo.verdict.winner import best_trial
from tests.sweep_files import REPO, wait_for_trials, write_sweep

pytestmark = pytest.mark.slow

def load_study(out: Path, name: str = "e2e") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'optuna.db'}")


@pytest.fixture(scope="module")
def finished_sweep(ray_cluster, tmp_path_factory) -> Path:
    """Six trials of the tiny sweep with aggressive ASHA, run once for several tests."""
    folder = tmp_path_factory.mktemp("sweep")
    sweep = write_sweep(folder)
    code = run_main(["--sweep", str(sweep), "--trials", "6", "--out", str(folder / "runs"),
                     "--address", ray_cluster])
    assert code == 0
    return folder / "runs"


def test_sweep_finishes_the_requested_trials(finished_sweep) -> None:
    study = load_study(finished_sweep)
    states = [t.state for t in study.trials]
    assert len(states) == 6
    assert all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states), states
    assert TrialState.COMPLETE in states
    attrs = study.user_attrs
    assert attrs["baseline_clip_score"] is not None
    assert attrs["sampler"]["method"] == "tpe" and "optuna" in attrs["libraries"]
    assert attrs["clip_model"] == "toyworld"


def test_asha_stopped_trials_are_pruned_with_their_rungs(finished_sweep) -> None:
    study = load_study(finished_sweep)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "aggressive ASHA (grace 4, factor 3) should stop some of 6 trials"
    # max_train_steps [8, 12] with a constant LR is a fidelity: every trial trains up to 12.
    for t in pruned:
        assert "max_train_steps" not in t.params
        assert t.user_attrs["last_step"] < 12
        assert t.intermediate_values  # the rungs it reached, at their training steps
        assert set(t.intermediate_values) <= {4, 8, 12}
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["last_step"] == 12
            # the best rung among the step counts the sweep may export (8 and 12); rung 4,
            # ASHA's alone, screens and is never the result
            assert t.value == max(v for s, v in t.intermediate_values.items() if s != 4)
            assert t.user_attrs["best_step"] in (8, 12)
            assert Path(t.user_attrs["lora_path"], "pytorch_lora_weights.safetensors").is_file()


def test_outputs_are_written(finished_sweep) -> None:
    folder = finished_sweep / "e2e"
    assert (folder / "best_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (folder / "best_lora" / "lora_kohya.safetensors").is_file()  # AUTOMATIC1111/ComfyUI
    import pandas as pd

    frame = pd.read_csv(folder / "trials.csv")
    # The study names its objective, so Optuna calls the column value_clip_score.
    assert len(frame) == 6 and {"state", "value_clip_score", "params_rank"} <= set(frame.columns)
    assert (folder / "report.html").is_file()
    assert any((folder / "artifacts").iterdir())
    best = yaml.safe_load((folder / "best.yaml").read_text())
    study = load_study(finished_sweep)
    winner = best_trial(study)  # the best confirmed trial
    assert best["result"]["trial"] == winner.number
    assert best["result"]["clip_score"] == winner.value  # its search score
    # The delta against the baseline carries its paired standard error (over prompts).
    assert best["result"]["delta_vs_baseline"] == pytest.approx(
        winner.value - study.user_attrs["baseline_clip_score"])
    assert best["result"]["delta_vs_baseline_stderr"] == winner.user_attrs[
        "delta_vs_baseline_stderr"] > 0
    assert "delta_vs_baseline_stderr" in " ".join(frame.columns)
    assert "accelerate launch train_text_to_image_lora.py" in best["result"]["reference_command"]
    assert all("value" in spec for spec in best["parameters"].values())
    # The best rung's step is the exported run's length (a prefix of the trained one).
    assert best["parameters"]["max_train_steps"]["value"] == best["result"]["best_step"]


def test_the_winner_is_the_best_of_the_top_k_confirmed_on_fresh_seeds(finished_sweep) -> None:
    study = load_study(finished_sweep)
    conf = yaml.safe_load((finished_sweep / "e2e" / "best.yaml").read_text())["result"][
        "confirmation"]
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                      key=lambda t: -t.value)
    top = [t.number for t in complete[:2]]
    assert sorted(conf["trials"]) == sorted(top)
    assert conf["seed"] == 1235 and conf["images_per_prompt"] == 1  # eval.seed + 1
    scores = {n: study.user_attrs[f"confirm_trial_{n}"]["clip_score"] for n in top}
    assert conf["winner"] == max(scores, key=scores.get)
    assert conf["clip_score"] == scores[conf["winner"]]
    assert conf["search_clip_score"] == study.trials[conf["winner"]].value
    if len(top) == 2:
        runner = study.user_attrs[f"confirm_trial_{conf['runner_up']}"]
        mine = study.user_attrs[f"confirm_trial_{conf['winner']}"]
        diffs = [a - b for a, b in zip(mine["per_prompt"], runner["per_prompt"], strict=True)]
        assert conf["delta_vs_runner_up"] == pytest.approx(sum(diffs) / len(diffs))
        assert conf["delta_vs_runner_up_stderr"] is not None
        assert "distinguishable" in conf["verdict"] or "beats" in conf["verdict"]
    base = study.user_attrs["confirm_baseline"]
    assert base["seed"] == 1235
    # a mean of prompt means (fp64) against a mean of fp32 image scores
    assert conf["delta_vs_baseline"] == pytest.approx(conf["clip_score"] - base["clip_score"],
                                                      abs=1e-4)


def test_confirmation_resumes_scoring_only_what_is_missing(finished_sweep, ray_cluster) -> None:
    study = load_study(finished_sweep)
    conf = yaml.safe_load((finished_sweep / "e2e" / "best.yaml").read_text())["result"][
        "confirmation"]
    lost, kept = conf["trials"][-1], conf["trials"][0]
    before = study.user_attrs[f"confirm_trial_{kept}"]
    base_before = study.user_attrs["confirm_baseline"]
    # As if the driver had been killed before this trial's confirmation was stored.
    study.set_user_attr(f"confirm_trial_{lost}", None)
    sweep = finished_sweep.parent / "sweep.yaml"
    assert run_main(["--sweep", str(sweep), "--trials", "6", "--out", str(finished_sweep),
                     "--address", ray_cluster]) == 0
    study = load_study(finished_sweep)
    assert len(study.trials) == 6  # no trial ran again
    assert study.user_attrs[f"confirm_trial_{kept}"] == before  # not rescored
    assert study.user_attrs["confirm_baseline"] == base_before
    again = study.user_attrs[f"confirm_trial_{lost}"]
    assert again["seed"] == 1235 and again["clip_score"] is not None


def test_best_yaml_reproduces_its_score_without_ray(finished_sweep, tmp_path) -> None:
    best_file = finished_sweep / "e2e" / "best.yaml"
    best = yaml.safe_load(best_file.read_text())
    done = subprocess.run(
        [sys.executable, "-m", "trials.train", str(best_file), "--out", str(tmp_path / "again"),
         "--cache", str(finished_sweep / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    rungs = json.loads((tmp_path / "again" / "result.json").read_text())["rungs"]
    score = next(r["clip_score"] for r in rungs if r["step"] == best["result"]["best_step"])
    assert score == pytest.approx(best["result"]["clip_score"], abs=1e-3)


def test_rerun_on_a_finished_study_runs_nothing_more(finished_sweep, ray_cluster) -> None:
    sweep = finished_sweep.parent / "sweep.yaml"
    assert run_main(["--sweep", str(sweep), "--trials", "6", "--out", str(finished_sweep),
                     "--address", ray_cluster]) == 0
    assert len(load_study(finished_sweep).trials) == 6


def test_killed_driver_then_rerun_ends_with_exactly_n_trials(ray_cluster, tmp_path) -> None:
    sweep = write_sweep(tmp_path, **{"name": "killed", "early_terminate": None,
                                     "parameters.max_train_steps": {"values": [12, 16]}})
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "hpo.run", "--sweep", str(sweep), "--trials", "5",
               "--out", str(out), "--address", ray_cluster]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    def finished_and_running(trials: list) -> bool:
        return any(t.state.is_finished() for t in trials) and \
            any(t.state == TrialState.RUNNING for t in trials)

    if not wait_for_trials(out, "killed", finished_and_running):
        driver.kill()
        pytest.fail("the sweep never had a finished and a running trial at once")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {t.number: t.value for t in load_study(out, "killed").trials
              if t.state == TrialState.COMPLETE}

    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load_study(out, "killed")
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    counted = [t for t in study.trials
               if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    assert len(counted) == 5
    # The rerun continued the search (issue 11): no configuration was drawn twice.
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 5
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    # Finished trials survived the crash unchanged; interrupted parameters were run again.
    after = {t.number: t.value for t in study.trials if t.state == TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items())
    retried = {t.user_attrs.get("retry_of") for t in study.trials} - {None}
    assert retried == {t.number for t in interrupted}
    assert study.best_value >= max(before.values(), default=float("-inf"))
    assert (out / "killed" / "best.yaml").is_file()
    with sqlite3.connect(out / "killed" / "optuna.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
