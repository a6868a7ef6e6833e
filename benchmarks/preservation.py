"""Preservation on the toy world: the winner with and without requiring it, and per preset.

Issue 21's measurement. Two arms, side by side in one run, for each TPE search seed:

- **without**: ``sweeps/tiny.yaml`` with preservation *measured* (same trigger, same control
  prompts) but neither required nor trained for (``parameters.preservation: none``): the
  winner is chosen by its brand score alone, as before preservation existed;
- **with**: ``sweeps/tiny.yaml`` as shipped: the winner must keep the base model
  (``preservation.require``), and the remedy (``dop``/``prior``) and its weight are searched.

For each arm's winner: the brand Δ vs the base model, the control Δ, drift and leak, all from
the confirmation on fresh seeds (``best.yaml``'s ``result.confirmation``), paired over prompts.
Then, per ``target_modules`` preset, the best brand score among the trials that meet the
shipped requirement (``hpo.verdict.preservation``), in either arm: does the seed notes'
cross-attention recommendation hold once preservation is required?

``python -m benchmarks.preservation --seeds 0 1 --trials 20 --record`` writes
``benchmarks/results.json`` (``preservation``) and its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from benchmarks.common import (
    DELETE,
    TINY_SWEEP,
    git_commit,
    merge_results,
    run_sweep,
    short_commit,
    write_section,
    write_sweep,
)

ARMS = ("without", "with")


@dataclass(frozen=True)
class Winner:
    arm: str
    seed: int
    trial: int | None  # None: no trial met the requirement
    params: dict[str, Any]
    brand_delta: float | None
    brand_stderr: float | None
    control_delta: float | None
    control_stderr: float | None
    control_p: float | None
    drift: float | None
    leak: float | None
    leak_stderr: float | None
    preserves: bool | None
    wall_seconds: float


def overrides(arm: str, seed: int) -> dict[str, Any]:
    """The sweep-file changes of one arm (``with`` is the shipped demo)."""
    changes: dict[str, Any] = {"method": {"type": "tpe", "seed": seed}}
    if arm == "without":
        changes["preservation"] = {"require": DELETE}
        changes["parameters"] = {"preservation": {"value": "none", "values": DELETE},
                                 "preservation_weight": DELETE}
    return changes


def _winner(arm: str, seed: int, runs: Path, wall: float) -> tuple[Winner, optuna.Study]:
    study = optuna.load_study(study_name="tiny-demo",
                              storage=f"sqlite:///{runs / 'tiny-demo' / 'optuna.db'}")
    best_file = runs / "tiny-demo" / "best.yaml"
    if not best_file.is_file():
        return Winner(arm, seed, None, {}, *([None] * 9), preserves=False,
                      wall_seconds=wall), study
    result = yaml.safe_load(best_file.read_text())["result"]
    conf = result.get("confirmation") or {}
    pres = conf.get("preservation") or {}
    return Winner(
        arm, seed, int(result["trial"]),
        {k: v["value"] for k, v in yaml.safe_load(best_file.read_text())["parameters"].items()},
        conf.get("delta_vs_baseline"), conf.get("delta_vs_baseline_stderr"),
        pres.get("control_delta"), pres.get("control_delta_stderr"),
        pres.get("control_delta_p_value"), pres.get("drift"), pres.get("leak"),
        pres.get("leak_stderr"), pres.get("preserves"), wall), study


def per_preset(studies: list[optuna.Study]) -> dict[str, dict[str, Any]]:
    """Per ``target_modules`` preset: COMPLETE trials, how many meet the shipped requirement
    (judged from each trial's search-seed figures), and the best brand score among those."""
    from hpo.sweep.spec import load_sweep
    from hpo.verdict import preservation

    require = load_sweep(TINY_SWEEP).require
    assert require is not None
    out: dict[str, dict[str, Any]] = {}
    for study in studies:
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            preset = str(t.params.get("target_modules"))
            row = out.setdefault(preset, {"trials": 0, "feasible": 0, "best_feasible": None,
                                          "best_any": None})
            row["trials"] += 1
            score = t.value
            row["best_any"] = score if row["best_any"] is None else max(row["best_any"], score)
            figures = {k: t.user_attrs.get(k) for k in (
                "control_delta", "control_delta_stderr", "control_n", "leak", "leak_stderr")}
            if preservation.is_feasible(preservation.constraint_values(require, figures)):
                row["feasible"] += 1
                best = row["best_feasible"]
                row["best_feasible"] = score if best is None else max(best, score)
    return out


def measure(seeds: list[int], trials: int) -> tuple[list[Winner], dict[str, dict[str, Any]]]:
    winners, studies = [], []
    for seed in seeds:
        for arm in ARMS:
            with tempfile.TemporaryDirectory(prefix=f"preserve-{arm}-") as tmp:
                file = write_sweep(Path(tmp), TINY_SWEEP, overrides(arm, seed))
                run = run_sweep(file, trials, Path(tmp) / "runs")
                winner, study = _winner(arm, seed, Path(tmp) / "runs", run.wall_seconds)
                # copy what per_preset reads out of the temporary folder's study
                memory = optuna.create_study(direction="maximize")
                memory.add_trials(study.get_trials())
                winners.append(winner)
                studies.append(memory)
                print(f"{arm} seed {seed}: {winner}", flush=True)
    return winners, per_preset(studies)


def _f(value: Any, spec: str = "+.2f") -> str:
    return "-" if value is None else format(value, spec)


def tables(winners: list[Winner], presets: dict[str, dict[str, Any]]) -> str:
    lines = ["| arm | search seed | winner | brand Δ vs base | control Δ vs base (p) | drift | "
             "leak | keeps the base model | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for w in winners:
        lines.append(
            f"| {w.arm} | {w.seed} | {w.trial if w.trial is not None else 'none feasible'} | "
            f"{_f(w.brand_delta)} ± {_f(w.brand_stderr, '.2f')} | {_f(w.control_delta)} ± "
            f"{_f(w.control_stderr, '.2f')} (p {_f(w.control_p, '.3f')}) | "
            f"{_f(w.drift, '.1f')} | {_f(w.leak)} ± {_f(w.leak_stderr, '.2f')} | "
            f"{ {True: 'yes', False: 'no', None: '-'}[w.preserves] } | {w.wall_seconds:.0f} |")
    lines += ["", "| target_modules | COMPLETE trials | meet the requirement | best brand score "
              "of those | best brand score of all |", "|---|---|---|---|---|"]
    for preset in ("cross_attn", "attn", "attn_ff"):
        row = presets.get(preset, {"trials": 0, "feasible": 0, "best_feasible": None,
                                   "best_any": None})
        lines.append(f"| {preset} | {row['trials']} | {row['feasible']} | "
                     f"{_f(row['best_feasible'], '.2f')} | {_f(row['best_any'], '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.preservation",
                                description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--record", action="store_true",
                   help="write benchmarks/results.json and BENCHMARKS.md")
    args = p.parse_args(argv)
    load = os.getloadavg()
    winners, presets = measure(args.seeds, args.trials)
    text = tables(winners, presets)
    print(text)
    if args.record:
        commit = git_commit()
        result = {"seeds": args.seeds, "trials": args.trials,
                  "winners": [asdict(w) for w in winners], "per_preset": presets,
                  "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
                  "load_at_start": [round(x, 1) for x in load],
                  "load_at_end": [round(x, 1) for x in os.getloadavg()],
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "git_commit": commit}
        merge_results({"preservation": result})
        begin, end = "<!-- preservation:begin -->", "<!-- preservation:end -->"
        write_section(begin, end, "\n".join([
            begin, "## Preservation (issue 21): `python -m benchmarks.preservation --record`",
            "", f"{len(args.seeds)} TPE search seed(s) x 2 arms of `sweeps/tiny.yaml`, "
            f"{args.trials} trials each, measured {result['date']} on {result['machine']}, "
            f"commit {short_commit(commit, 10)} (load {result['load_at_start']} at the start, "
            f"{result['load_at_end']} at the end; the scores do not depend on load). "
            "*without*: preservation measured, not required, not trained; *with*: the "
            "shipped demo. Winner figures are the confirmation's, on fresh seeds, paired over "
            "the 48 prompts (brand) and the 48 control prompts; CLIP-T x 100.", "", text,
            "", "Per preset: COMPLETE trials of both arms, judged on their search seeds by "
            "the shipped requirement (control not significantly below the base model, leak not "
            "significantly above 0).", end]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
