"""Wall time and peak memory of the CPU demo sweep (``make demo``'s command), from cold.

Memory is sampled every 0.2 s over the whole process tree (the driver, Ray's GCS and raylet,
and the trial workers), since one process's RSS would miss the trials.

The run's study is kept as records (:attr:`DemoRun.sweep`), so the orchestration overhead
(:mod:`benchmarks.overhead`) and the evaluation share (:mod:`benchmarks.eval_cost`) of the same
20-trial sweep are read from it rather than from a second run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO, TINY_SWEEP, SweepRun, run_sweep, write_sweep

__all__ = ["REPO", "DemoRun", "measure_demo"]


@dataclass(frozen=True)
class DemoRun:
    wall_seconds: float
    peak_tree_rss_mb: float
    peak_process_rss_mb: float
    trials: int
    summary: str
    sweep: SweepRun | None = None


def measure_demo(trials: int = 20, sweep: str | Path = TINY_SWEEP) -> DemoRun:
    """Run the demo sweep in a fresh output folder (cold caches) and measure it.

    The sweep file is copied with its training folder moved into the temporary folder, so
    the drawn-car dataset is generated again too, as on a fresh checkout.
    """
    with tempfile.TemporaryDirectory(prefix="demo-bench-") as tmp:
        file = write_sweep(Path(tmp), base=REPO / sweep)
        run = run_sweep(file, trials, Path(tmp) / "runs")
    return DemoRun(run.wall_seconds, run.peak_tree_rss_mb, run.peak_process_rss_mb, trials,
                   run.summary, run)
