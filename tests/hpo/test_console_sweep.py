"""End to end: what ``python -m hpo.run`` prints into a pipe, what goes to driver.log, and
``--verbose``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.sweep_files import REPO, write_sweep

pytestmark = pytest.mark.slow

# Ray's and Optuna's own output, which the console leaves to driver.log.
RAY_ONLY = ("== Status ==", "Trial name", "_train_one_", "Checkpoint successfully created",
            "Current best trial", "Resume experiment", "Using an existing study",
            "Loading weights")
ENDS = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "stopped early",
        TrialState.FAIL: "failed"}


def drive(sweep: Path, out: Path, address: str, *extra: str) -> str:
    """Run the driver with its stdout and stderr into a pipe; returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "hpo.run", "--sweep", str(sweep), "--out", str(out),
         "--address", address, *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout + done.stderr


def test_a_piped_console_has_our_lines_and_driver_log_has_rays(ray_cluster, tmp_path) -> None:
    sweep = write_sweep(tmp_path, name="console", **{"confirm.top_k": 0})
    out = tmp_path / "runs"
    printed = drive(sweep, out, ray_cluster, "--trials", "2")

    assert "\x1b" not in printed and "\r" not in printed
    assert [m for m in RAY_ONLY if m in printed] == []
    study = optuna.load_study(study_name="console",
                              storage=f"sqlite:///{out / 'console' / 'optuna.db'}")
    assert len(study.trials) == 2
    for t in study.trials:  # each trial by its study number: started, rungs, how it ended
        assert re.search(rf"^trial {t.number} +started: rank {t.params['rank']}, ", printed, re.M)
        for step in t.intermediate_values:
            assert re.search(rf"^trial {t.number} +step {step}/\d+: clip_score [\d.]+ ± [\d.]+, "
                             rf"Δ [+-][\d.]+ ± [\d.]+ vs base$", printed, re.M)
        assert re.search(rf"^trial {t.number} +{ENDS[t.state]}\b.*\[\d/2 trials, ", printed,
                         re.M)
    assert len(printed.splitlines()) < 40

    log = (out / "console" / "driver.log").read_text(encoding="utf-8")
    for ray_line in ("== Status ==", "Checkpoint successfully created", "(_train_one pid=",
                     "Using an existing study"):
        assert ray_line in log
    assert "\x1b" not in log
    assert re.search(r"^\S+ \S+ trial 0 +started", log, re.M)  # our lines beside Ray's

    # --verbose: Ray's output on the console too (still no colour codes into a pipe).
    printed = drive(sweep, out, ray_cluster, "--trials", "3", "--verbose")
    assert "== Status ==" in printed and "Checkpoint successfully created" in printed
    assert re.search(r"^trial 2 +started", printed, re.M)
    assert "\x1b" not in printed
    assert (out / "console" / "driver.log").read_text(encoding="utf-8").startswith(log)
