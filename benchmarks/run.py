"""``python -m benchmarks.run``: measure on the machine at hand and write BENCHMARKS.md.

For now this records the demo sweep's wall time and peak memory (issue 4); the trainer,
orchestration, early-stopping and search-efficiency measurements arrive with issue 8.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time
from pathlib import Path

from benchmarks.demo import measure_demo

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    versions = ", ".join(f"{lib} {importlib.metadata.version(lib)}"
                         for lib in ("torch", "diffusers", "peft", "ray", "optuna"))
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; {versions}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--repeats", type=int, default=1, help="demo runs (median reported)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    runs = [measure_demo() for _ in range(args.repeats)]
    runs.sort(key=lambda r: r.wall_seconds)
    mid = runs[len(runs) // 2]
    text = "\n".join([
        "# Benchmarks",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
        "",
        "## Demo sweep (`make demo`: 20 trials of sweeps/tiny.yaml on CPU, cold caches)",
        "",
        "| runs | wall time (median) | peak RSS, whole process tree | peak RSS, one process |",
        "|---|---|---|---|",
        f"| {len(runs)} | {mid.wall_seconds:.0f} s (all: "
        f"{', '.join(f'{r.wall_seconds:.0f}' for r in runs)}) | {mid.peak_tree_rss_mb:.0f} MB "
        f"| {mid.peak_process_rss_mb:.0f} MB |",
        "",
        "Target: under 5 minutes on 2 cores. The sweep's own summary:",
        "",
        "```",
        mid.summary,
        "```",
        "",
    ])
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
