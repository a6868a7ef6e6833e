"""Study integrity (issue 11) on whole sweeps: real local Ray, SQLite study, the tiny model.

Examples are combined into few sweeps of one-rung trials, since each sweep costs minutes on
two shared cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.run import main as run_main
from hpo.study.storage import counted_trials
from tests.sweep_files import REPO, wait_for_trials, write_sweep

pytestmark = pytest.mark.slow

ONE_RUNG = {"early_terminate": None, "parameters.max_train_steps": {"values": [4]}}


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'optuna.db'}")


def distinct(trials: list[optuna.trial.FrozenTrial]) -> int:
    return len({json.dumps(t.params, sort_keys=True) for t in trials})


def test_a_resumed_sweep_continues_and_a_data_error_stops_it(ray_cluster, tmp_path) -> None:
    sweep = write_sweep(tmp_path, name="resume", **ONE_RUNG)
    out = tmp_path / "runs"
    args = ["--sweep", str(sweep), "--out", str(out), "--address", ray_cluster]
    # Item 1: --trials 2, then --trials 4: four different configurations, not 0-1 twice.
    assert run_main([*args, "--trials", "2"]) == 0
    assert run_main([*args, "--trials", "4"]) == 0
    study = load(out, "resume")
    assert len(counted_trials(study)) == 4 and distinct(study.trials) == 4
    assert [r["trials_before"] for r in study.user_attrs["sampler_runs"]] == [0, 2]

    # Item 6: a training image deleted mid-sweep stops it (exit 2), not 4 failed trials.
    command = [sys.executable, "-m", "hpo.run", *args, "--trials", "8", "--concurrency", "1"]
    log = tmp_path / "driver.err"
    with open(log, "w") as err_file:  # a file, not a pipe: a full pipe would block the driver
        driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err_file)
    if not wait_for_trials(out, "resume", lambda ts: sum(
            t.state.is_finished() and not t.user_attrs.get("interrupted") for t in ts) >= 5):
        driver.kill()
        pytest.fail("the sweep never finished a fifth trial")
    image = next((tmp_path / "data").rglob("*.png"))
    kept = shutil.copy(image, tmp_path / "kept.png")
    image.unlink()
    driver.wait(timeout=600)
    err = log.read_text()
    assert driver.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: every trial would fail: DataError:") and image.name in last
    study = load(out, "resume")
    counted = counted_trials(study)
    assert 5 <= len(counted) <= 6  # the trial running at the deletion may still finish
    assert all(t.state != TrialState.FAIL for t in counted)  # none burned on the error
    stopped = [t for t in study.trials if "DataError" in t.user_attrs.get("fail_reason", "")]
    assert stopped and all(t.user_attrs.get("interrupted") for t in stopped)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]

    # Fixed, the same command continues to exactly N trials, all different.
    shutil.copy(kept, image)
    assert run_main([*args, "--trials", "7"]) == 0
    study = load(out, "resume")
    counted = counted_trials(study)
    assert len(counted) == 7 and distinct(counted) == 7

    # Item 2: the finished study refuses a sweep changed where it defines the score.
    text = sweep.read_text().replace("goal: maximize", "goal: minimize")
    sweep.write_text(text.replace("resolution: 32", "resolution: 48"))
    assert run_main([*args, "--trials", "8"]) == 2


def test_a_grid_sweep_ends_and_resumes_cleanly(ray_cluster, tmp_path) -> None:
    # Item 3: the last tell of a 2-point grid raised, Tune retried the trial, exit 1.
    sweep = write_sweep(tmp_path, name="grid", method="grid", **{
        **ONE_RUNG, "parameters.max_train_steps": {"value": 4},
        "parameters.rank": {"values": [2, 4]}, "parameters.learning_rate": {"value": 1e-3},
        "parameters.target_modules": {"value": "attn"}})
    out = tmp_path / "runs"
    args = ["--sweep", str(sweep), "--out", str(out), "--address", ray_cluster]
    assert run_main([*args, "--trials", "2"]) == 0
    study = load(out, "grid")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["rank"] for t in study.trials) == [2, 4]
    assert (out / "grid" / "best.yaml").is_file()
    assert run_main([*args, "--trials", "3"]) == 0  # the grid is done: nothing more to run
    assert len(load(out, "grid").trials) == 2


def test_a_model_gone_before_the_confirmation_leaves_the_winner_unconfirmed(
        ray_cluster, tmp_path, monkeypatch, capsys) -> None:
    """Issue 23: the model folder's unet/ removed mid-sweep. The trials are done; the
    confirmation's fresh workers cannot load the model. The run must not look confirmed."""
    import yaml

    import hpo.dispatch.tune
    from trials.toyworld import SD_DIR

    model = tmp_path / "model"
    shutil.copytree(SD_DIR, model)
    sweep = write_sweep(tmp_path, name="unconfirmed", **ONE_RUNG, **{"model.name": str(model)})
    out = tmp_path / "runs"
    args = ["--sweep", str(sweep), "--out", str(out), "--address", ray_cluster, "--trials", "2"]
    real = hpo.dispatch.tune.confirmation_scorer

    def after_the_trials(spec, address, output=None):  # the search is over; confirmation next
        shutil.move(model / "unet", tmp_path / "unet-aside")
        return real(spec, address, output)

    monkeypatch.setattr(hpo.dispatch.tune, "confirmation_scorer", after_the_trials)
    assert run_main(args) == 3
    captured = capsys.readouterr()
    assert "NOT confirmed on fresh seeds: trial " in captured.out
    assert "has no 'unet' subfolder" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(
        "error: the confirmation on fresh seeds is incomplete: 3 of its task(s)")
    best = yaml.safe_load((out / "unconfirmed" / "best.yaml").read_text())
    assert best["result"]["confirmation"]["confirmed"] is False
    assert len(counted_trials(load(out, "unconfirmed"))) == 2

    # Put back, the same command runs the confirmation only.
    shutil.move(tmp_path / "unet-aside", model / "unet")
    monkeypatch.setattr(hpo.dispatch.tune, "confirmation_scorer", real)
    assert run_main(args) == 0
    captured = capsys.readouterr().out
    assert "no trial finished in " in captured and "2 in the study (2 COMPLETE)" in captured
    assert "confirmed on fresh seeds (seed 1235" in captured and "NOT confirmed" not in captured
    assert len(load(out, "unconfirmed").trials) == 2
