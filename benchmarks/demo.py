"""Wall time and peak memory of the CPU demo sweep (``make demo``'s command), from cold.

Memory is sampled every 0.2 s over the whole process tree (the driver, Ray's GCS and raylet,
and the trial workers), since one process's RSS would miss the trials.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoRun:
    wall_seconds: float
    peak_tree_rss_mb: float
    peak_process_rss_mb: float
    trials: int
    summary: str


def _tree_rss(root: psutil.Process) -> tuple[float, float]:
    total = biggest = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for proc in procs:
        try:
            rss = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
        total += rss
        biggest = max(biggest, rss)
    return total, biggest


def measure_demo(trials: int = 20, sweep: str = "sweeps/tiny.yaml") -> DemoRun:
    """Run the demo sweep in a fresh output folder (cold caches) and measure it."""
    with tempfile.TemporaryDirectory(prefix="demo-bench-") as out:
        command = [sys.executable, "-m", "hpo.run", "--trials", str(trials), "--sweep", sweep,
                   "--out", out]
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        root = psutil.Process(proc.pid)
        peak_tree = peak_one = 0.0
        while proc.poll() is None:
            total, biggest = _tree_rss(root)
            peak_tree, peak_one = max(peak_tree, total), max(peak_one, biggest)
            time.sleep(0.2)
        wall = time.perf_counter() - started
        output = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            raise RuntimeError(f"demo sweep failed ({proc.returncode}):\n{output[-3000:]}")
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sweep "))
    return DemoRun(wall, peak_tree, peak_one, trials, "\n".join(lines[start:start + 2]))
