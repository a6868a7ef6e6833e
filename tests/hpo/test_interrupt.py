"""Ctrl-C at every moment of ``python -m hpo.run``: during the baseline, during a trial, between
trials (inside the recorder's hook that writes the finished trial), during the confirmation.
Each time the driver exits with 130 within seconds, leaves no trial RUNNING, prints one line
saying to rerun, and the rerun finishes the study with the number of trials asked for.

The drivers join the session's Ray (``--address``) and get the signal alone; the 5 s goal, with
a local Ray and a terminal's process-group signal, is measured by ``python -m
benchmarks.interrupt``. The bound here is generous for a loaded 2-core machine.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from benchmarks.interrupt import MOMENTS, driver_command, interrupt_at
from tests.sweep_files import REPO, write_sweep

pytestmark = pytest.mark.slow

TRIALS = 3
BOUND_S = 20  # 17.6 s before issue 23; the goal (benchmarks.interrupt) is 5 s


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'optuna.db'}")


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials
            if t.state.is_finished() and not t.user_attrs.get("interrupted")]


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_stops_within_seconds_and_the_rerun_finishes(ray_cluster, tmp_path,
                                                            moment) -> None:
    name = f"ctrl-c-{moment}"
    sweep = write_sweep(tmp_path, name=name, early_terminate=None,
                        **{"parameters.max_train_steps": {"values": [8, 12]}})
    out = tmp_path / "runs"
    command = driver_command(sweep, out, TRIALS, "--address", ray_cluster)
    got = interrupt_at(command, moment)
    assert got.seconds is not None, f"no exit within the bound after {moment}:\n" \
        f"{got.output[-3000:]}"
    assert got.returncode == 130, got.output[-3000:]
    assert got.seconds < BOUND_S, (got.seconds, got.output[-3000:])
    assert "rerun the same command to continue" in got.output
    # Only our lines: no traceback, not Tune's stop notice nor its restore hint.
    assert "Traceback" not in got.output
    assert "Tuner.restore" not in got.output and "Stop signal received" not in got.output

    study = load(out, name)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    if moment == "confirmation":  # the trials were all done; the confirmation was cut short
        assert len(counted(study)) == TRIALS
    else:
        assert len(counted(study)) < TRIALS

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                           check=False)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    study = load(out, name)
    done = counted(study)
    assert len(done) == TRIALS
    # The rerun continued the search (issue 11): no configuration was drawn twice.
    assert len({tuple(sorted(t.params.items())) for t in done}) == TRIALS
    assert study.user_attrs.get("baseline_clip_score") is not None
    assert (out / name / "best.yaml").is_file() and (out / name / "report.html").is_file()
    with sqlite3.connect(out / name / "optuna.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
