"""The winner's curse: how much a sweep's search score flatters its winner.

A sweep's winner is chosen as the maximum of noisy scores, so its search score is biased
upward. The confirmation (:mod:`hpo.verdict.confirm`) scores the top trials again on fresh seeds;
the gap ``search score - confirmed score`` of the winner measures the bias on this world. Run a
sweep with confirmation on, several times with different search seeds, and read each
``best.yaml``'s ``result.confirmation``.

``python -m benchmarks.winners_curse --sweep sweeps/tiny.yaml --trials 20 --repeats 3``
prints one markdown row per run and the mean. On the tiny random-weight world the figure
measures noise only; the meaningful figure is on a pretrained world (a real SD v1.5 sweep or
the small pretrained world), with the same command.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    REPO,
    TINY_SWEEP,
    git_commit,
    merge_results,
    run_sweep,
    short_commit,
    write_section,
    write_sweep,
)


@dataclass(frozen=True)
class CurseRun:
    search_seed: int
    winner: int
    search_score: float
    confirmed_score: float
    confirmed_stderr: float | None
    curse: float  # search - confirmed
    delta_vs_runner_up: float | None
    delta_vs_runner_up_stderr: float | None
    delta_vs_baseline: float | None
    delta_vs_baseline_stderr: float | None
    distinguishable: bool | None
    wall_seconds: float


def measure_once(sweep: Path, trials: int, seed: int, top_k: int = 3,
                 images_per_prompt: int | None = None) -> CurseRun:
    """One sweep (search seed ``seed``) with confirmation, in a fresh temporary folder."""
    confirm: dict[str, Any] = {"top_k": top_k}
    if images_per_prompt:
        confirm["images_per_prompt"] = images_per_prompt
    with tempfile.TemporaryDirectory(prefix="curse-bench-") as tmp:
        file = write_sweep(Path(tmp), base=sweep,
                           overrides={"method": {"type": "tpe", "seed": seed},
                                      "confirm": confirm})
        run = run_sweep(file, trials, Path(tmp) / "runs")
        name = yaml.safe_load(file.read_text())["name"]
        best = yaml.safe_load((Path(tmp) / "runs" / name / "best.yaml").read_text())
    conf = best["result"].get("confirmation")
    if not conf:
        raise RuntimeError("the sweep left no confirmation in best.yaml")
    return CurseRun(
        search_seed=seed, winner=conf["winner"], search_score=conf["search_clip_score"],
        confirmed_score=conf["clip_score"], confirmed_stderr=conf.get("clip_score_stderr"),
        curse=conf["search_minus_confirmed"],
        delta_vs_runner_up=conf.get("delta_vs_runner_up"),
        delta_vs_runner_up_stderr=conf.get("delta_vs_runner_up_stderr"),
        delta_vs_baseline=conf.get("delta_vs_baseline"),
        delta_vs_baseline_stderr=conf.get("delta_vs_baseline_stderr"),
        distinguishable=conf.get("distinguishable_from_runner_up"),
        wall_seconds=run.wall_seconds)


def _f(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def table(runs: list[CurseRun]) -> str:
    """The runs as a markdown table, with the mean curse last."""
    lines = ["| search seed | winner | search score | confirmed | search - confirmed | "
             "Δ vs runner-up (paired) | Δ vs baseline (paired) | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| {r.search_seed} | {r.winner} | {_f(r.search_score)} | "
            f"{_f(r.confirmed_score)} ± {_f(r.confirmed_stderr)} | {_f(r.curse, '+.4f')} | "
            f"{_f(r.delta_vs_runner_up, '+.4f')} ± {_f(r.delta_vs_runner_up_stderr)} | "
            f"{_f(r.delta_vs_baseline, '+.4f')} ± {_f(r.delta_vs_baseline_stderr)} | "
            f"{r.wall_seconds:.0f} |")
    if runs:
        curses = [r.curse for r in runs]
        spread = f" (sd {statistics.stdev(curses):.4f})" if len(curses) > 1 else ""
        lines.append(f"\nMean winner's curse over {len(runs)} run(s): "
                     f"{statistics.mean(curses):+.4f}{spread}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.winners_curse",
                                description=__doc__.splitlines()[0])
    p.add_argument("--sweep", type=Path, default=TINY_SWEEP)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="sweeps, with search seeds 0..N-1")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--images-per-prompt", type=int, default=None)
    p.add_argument("--record", action="store_true",
                   help="write the runs to benchmarks/results.json and BENCHMARKS.md")
    args = p.parse_args(argv)
    sweep = args.sweep if args.sweep.is_absolute() else REPO / args.sweep
    runs = [measure_once(sweep, args.trials, seed, args.top_k, args.images_per_prompt)
            for seed in range(args.repeats)]
    print(table(runs))
    if args.record:
        record(runs, args)
    return 0


def record(runs: list[CurseRun], args: argparse.Namespace) -> None:
    """Write the runs to ``benchmarks/results.json`` (``winners_curse``) and BENCHMARKS.md."""
    import os
    import platform
    import time
    from dataclasses import asdict

    commit = git_commit()
    curses = [r.curse for r in runs]
    result = {
        "sweep": str(args.sweep), "trials": args.trials, "top_k": args.top_k,
        "runs": [asdict(r) for r in runs], "mean_curse": statistics.mean(curses),
        "sd_curse": statistics.stdev(curses) if len(curses) > 1 else None,
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git_commit": commit}
    merge_results({"winners_curse": result})
    begin, end = "<!-- winners-curse:begin -->", "<!-- winners-curse:end -->"
    write_section(begin, end, "\n".join([
        begin, "## The winner's curse over repeated sweeps (issue 13): "
        "`python -m benchmarks.winners_curse --record`", "",
        f"{len(runs)} sweeps of `{Path(args.sweep).name}` ({args.trials} trials, TPE search "
        f"seeds 0..{len(runs) - 1}, confirmation of the top {args.top_k} on fresh seeds), "
        f"measured {result['date']} on {result['machine']}, commit {short_commit(commit, 10)}. "
        "Scores are "
        "CLIP-T x 100; `search - confirmed` is how much the maximum over noisy search scores "
        "flattered the winner.", "", table(runs), end]) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
