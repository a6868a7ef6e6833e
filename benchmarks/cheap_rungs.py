"""Cheap rungs, same ranking: the search's rung evaluation as a fidelity of its own.

Issue 30's measurement on the toy world, in two parts:

1. **Side by side sweeps** (``--seeds``, 20 trials each): for each TPE search seed, the shipped
   ``sweeps/tiny.yaml`` with its rungs drawn at full size (:data:`FULL`: 2 images per prompt,
   the evaluation the demo shipped until now) and with the cheap rungs it ships now
   (:data:`CHEAP`), one after the other; the confirmation is the same full-size one in both
   (4 images per prompt on the fresh seed 1235). Each sweep's compute in UNet sample-passes
   (``hpo.sweep.cost``'s units, from what its trials did: ``benchmarks.racing.sweep_compute``)
   and its wall time; **same winner**: the two arms' confirmed winners paired over the prompts
   of the confirmation (same fresh seeds in both arms), "as good" when the cheap arm's winner is
   not significantly worse (paired t-test, p >= 0.05, or better).
2. **Rank agreement with an independent reference**: every rung LoRA of the full arm's studies
   (its Ray checkpoints; a fixed random sample of :data:`MAX_LORAS` of them) is scored again
   on brand prompts by each evaluation in
   :data:`VARIANTS` and by the reference (:data:`REFERENCE`: seeds no rung uses, 4 images per
   prompt, full sampler steps). Per study: Spearman's rank correlation over its rung LoRAs
   between each evaluation and the reference, and the top-3 overlap. The full evaluation's
   score is the one the study recorded at that rung (deterministic: same seeds, same code).
   Agreement between cheap and full at the *same* seeds would be inflated by the images they
   share; against the reference, the full evaluation's own agreement is the noise ceiling the
   cheap one is held to (``eval_rank_spearman_full`` vs ``eval_rank_spearman_cheap``).

3. **The demo** (``--demo``): ``make demo``'s command (20 trials of the shipped
   ``sweeps/tiny.yaml``) once from cold in a fresh folder, its wall time (the issue's goal: 180 s
   on an idle 2-core machine; the load average is recorded beside it) and its confirmed winner:
   the gain over the base model in paired standard errors, and whether it keeps the base model.

``python -m benchmarks.cheap_rungs --seeds 0 1 2 --record`` writes ``benchmarks/results.json``
(``cheap_rungs``, ``eval_rank_spearman_full``, ``eval_rank_spearman_cheap``) and the Cheap rungs
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from scipy import stats

from benchmarks.common import (
    RESULTS,
    TINY_SWEEP,
    git_commit,
    merge_results,
    run_sweep,
    write_section,
    write_sweep,
)
from benchmarks.racing import sweep_compute, winner
from hpo.sweep.spec import load_sweep
from hpo.verdict.paired import paired_or_none

NAME = "tiny-demo"
# The rungs' evaluation per arm (sweep-file changes to sweeps/tiny.yaml); the confirmation is
# the shipped one (4 images per prompt, full sampler steps) in both.
FULL = {"eval": {"images_per_prompt": 2}}
CHEAP = {}  # the shipped tiny.yaml: its rungs are the cheap fidelity
ARMS = {"full": FULL, "cheap": CHEAP}
# Evaluations of a rung LoRA compared with the reference: (images per prompt, sampler steps).
# (Fewer sampler steps were not measured here: the toy world draws in 4, and hyundai.yaml's 20
# of 30 follow the DPM-Solver++ paper; benchmarks.gpu is where SD v1.5 would measure it.)
VARIANTS = {"cheap": (1, 4)}
REFERENCE = {"images_per_prompt": 4, "inference_steps": 4, "seed": 20_000}
TOP = 3
# Rung LoRAs scored per study (a fixed random sample when a study has more): the reference draws
# 192 images a LoRA, about 7 s on an idle 2-core machine.
MAX_LORAS = 30
BEGIN, END = "<!-- cheap-rungs:begin -->", "<!-- cheap-rungs:end -->"


def run_arm(arm: str, seed: int, trials: int, folder: Path) -> dict[str, Any]:
    """One sweep of ``arm`` with TPE seed ``seed`` in ``folder``, or the row it left there
    (``row.json``: the benchmark resumes); its row."""
    if (folder / "row.json").is_file():
        return json.loads((folder / "row.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    file = write_sweep(folder, TINY_SWEEP, {"method": {"type": "tpe", "seed": seed},
                                            **ARMS[arm]})
    run = run_sweep(file, trials, folder / "runs")
    row = study_row(arm, seed, folder, run.wall_seconds)
    print(f"{arm} seed {seed}: {run.wall_seconds:.0f} s, passes {row['passes']['total']:,.0f}, "
          f"winner {row['winner'].get('trial')} {row['winner'].get('confirmed')}", flush=True)
    return row


def study_row(arm: str, seed: int, folder: Path, wall_seconds: float | None) -> dict[str, Any]:
    """The row of a finished sweep in ``folder`` (written to ``folder/row.json``)."""
    study = optuna.load_study(study_name=NAME,
                              storage=f"sqlite:///{folder / 'runs' / NAME / 'optuna.db'}")
    row = {"arm": arm, "seed": seed, "wall_seconds": wall_seconds, "folder": str(folder),
           **sweep_compute(study, folder / "sweep.yaml"),
           "winner": winner(study, folder / "runs", NAME)}
    (folder / "row.json").write_text(json.dumps(row, indent=1))
    return row


def rung_loras(run_dir: Path) -> list[dict[str, Any]]:
    """Every rung checkpoint of a sweep's Ray trials: its folder, step and recorded score
    (Ray's ``result.json``, one line per report, names the checkpoint it came with)."""
    out = []
    for result in sorted(run_dir.glob("ray/*/*/result.json")):
        for line in result.read_text().splitlines():
            row = json.loads(line)
            ckpt = row.get("checkpoint_dir_name")
            if not ckpt or row.get("clip_score") is None or row.get("raced"):
                continue
            folder = result.parent / ckpt
            if (folder / "pytorch_lora_weights.safetensors").is_file():
                out.append({"lora": str(folder), "step": int(row["step"]),
                            "full": float(row["clip_score"]),
                            "screening": bool(row.get("screening"))})
    return out


def score_loras(sweep_file: Path, loras: list[str], images_per_prompt: int,
                inference_steps: int, seed: int) -> list[float]:
    """Brand CLIP-T of each LoRA (mean of prompt means) drawn with these settings: one base
    pipeline for all, each LoRA loaded and unloaded in turn (no control images)."""
    from trials.config import PreservationSpec
    from trials.train.loop import base_evaluator

    sweep = load_sweep(sweep_file)
    config = sweep.trial_config({p.name: p.value for p in sweep.parameters if p.is_fixed}
                                | {"rank": 2, "learning_rate": 1e-3, "max_train_steps": 60,
                                   "target_modules": "attn", "preservation": "dop",
                                   "preservation_weight": 1.0},
                                output_dir=Path(tempfile.mkdtemp(prefix="cheap-rungs-")),
                                cache_dir=Path(tempfile.gettempdir()) / "cheap-rungs-cache")
    config = replace(config, preservation=PreservationSpec(), eval=replace(
        config.eval, images_per_prompt=images_per_prompt, inference_steps=inference_steps,
        seed=seed, subset_rungs=(), subset_prompts=None, chunk_prompts=None))
    evaluator, _ = base_evaluator(config)
    scores = []
    for lora in loras:
        evaluator.pipe.load_lora_weights(lora)
        scores.append(float(evaluator.score(config.output_dir)["clip_score"]))
        evaluator.pipe.unload_lora_weights()
    return scores


def agreement(scores: list[float], reference: list[float]) -> dict[str, float]:
    """Spearman's rho with the reference over the rung LoRAs, and the top-3 overlap."""
    rho = float(stats.spearmanr(scores, reference).statistic)
    top = {i for i, _ in sorted(enumerate(scores), key=lambda x: -x[1])[:TOP]}
    ref_top = {i for i, _ in sorted(enumerate(reference), key=lambda x: -x[1])[:TOP]}
    return {"spearman": rho, "top3_overlap": len(top & ref_top) / TOP}


def rank_study(row: dict[str, Any]) -> dict[str, Any]:
    """Part 2 for one full-arm sweep: every rung LoRA scored by each variant and the
    reference; their agreement with the reference (kept in ``ranks.json`` beside the sweep)."""
    folder = Path(row["folder"])
    if (folder / "ranks.json").is_file():
        return json.loads((folder / "ranks.json").read_text())
    sweep_file = folder / "sweep.yaml"
    loras = rung_loras(folder / "runs" / NAME)
    if len(loras) > MAX_LORAS:
        loras = [loras[i] for i in sorted(random.Random(row["seed"]).sample(range(len(loras)),
                                                                           MAX_LORAS))]
    paths = [x["lora"] for x in loras]
    started = time.perf_counter()
    reference = score_loras(sweep_file, paths, REFERENCE["images_per_prompt"],
                            REFERENCE["inference_steps"], REFERENCE["seed"])
    out: dict[str, Any] = {"seed": row["seed"], "loras": len(loras),
                           "full": agreement([x["full"] for x in loras], reference)}
    eval_seed = load_sweep(sweep_file).eval.seed
    for name, (images, steps) in VARIANTS.items():
        out[name] = agreement(score_loras(sweep_file, paths, images, steps, eval_seed),
                              reference)
    out["seconds"] = time.perf_counter() - started
    (folder / "ranks.json").write_text(json.dumps(out, indent=1))
    print(f"ranks seed {row['seed']}: {len(loras)} LoRAs, "
          + ", ".join(f"{k} {v['spearman']:.3f}" for k, v in out.items()
                      if isinstance(v, dict)), flush=True)
    return out


def measure_demo(trials: int = 20) -> dict[str, Any]:
    """Part 3: the demo's wall time from cold, and what its confirmed winner claims."""
    from hpo.verdict.winner import confirmation_summary

    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="cheap-rungs-demo-") as tmp:
        file = write_sweep(Path(tmp), TINY_SWEEP)
        run = run_sweep(file, trials, Path(tmp) / "runs")
        study = optuna.load_study(
            study_name=NAME, storage=f"sqlite:///{Path(tmp) / 'runs' / NAME / 'optuna.db'}")
        conf = confirmation_summary(study) or {}
    delta, stderr = conf.get("delta_vs_baseline"), conf.get("delta_vs_baseline_stderr")
    pres = conf.get("preservation") or {}
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
           "wall_seconds": run.wall_seconds, "peak_tree_rss_mb": run.peak_tree_rss_mb,
           "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
           "winner": conf.get("winner"), "delta_vs_baseline": delta,
           "delta_vs_baseline_stderr": stderr,
           "gain_in_stderr": None if not stderr else delta / stderr,
           "preserves": pres.get("preserves"), "preservation_verdict": pres.get("verdict")}
    print(f"demo: {run.wall_seconds:.0f} s, winner {out['winner']}, "
          f"Δ {delta} ± {stderr}, preserves {out['preserves']}", flush=True)
    return out


def pair_winners(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per TPE seed: the cheap arm's confirmed winner against the full arm's, paired over the
    prompts of the confirmation (the same fresh seeds in both arms)."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        by_arm = {r["arm"]: r for r in rows if r["seed"] == seed}
        cheap, full = by_arm["cheap"]["winner"], by_arm["full"]["winner"]
        paired = paired_or_none(cheap.get("per_prompt"), full.get("per_prompt"))
        out.append({
            "seed": seed, "cheap_winner": cheap.get("trial"), "full_winner": full.get("trial"),
            "cheap_confirmed": cheap.get("confirmed"), "full_confirmed": full.get("confirmed"),
            "cheap_vs_base": cheap.get("delta_vs_baseline"),
            "full_vs_base": full.get("delta_vs_baseline"),
            "delta": None if paired is None else paired.delta,
            "stderr": None if paired is None else paired.stderr,
            "p_value": None if paired is None else paired.p_value,
            "as_good": paired is not None and (paired.delta >= 0 or paired.p_value >= 0.05),
        })
    return out


def _f(x: Any, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def section(result: dict[str, Any]) -> str:
    """The Cheap rungs section of BENCHMARKS.md."""
    rows, ranks, pairs = result["sweeps"], result["ranks"], result["winners"]
    lines = [
        BEGIN, "## Cheap rungs, same ranking (issue 30)", "",
        f"Measured {result['date']} at {result['commit']} on {result['machine']} (load "
        f"{result['load_before']} before, {result['load_after']} after); `python -m "
        "benchmarks.cheap_rungs --seeds " + " ".join(str(s) for s in result["seeds"])
        + " --record`. Method: `benchmarks/cheap_rungs.py`'s docstring.", "",
        "| arm | TPE seed | wall s | UNet passes | drawing share | winner | confirmed | vs base |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w = r["winner"]
        lines.append(f"| {r['arm']} | {r['seed']} | {_f(r['wall_seconds'], '.0f')} | "
                     f"{r['passes']['total']:,.0f} | {r['eval_share']:.2f} | {w.get('trial')} | "
                     f"{_f(w.get('confirmed'))} | {_f(w.get('delta_vs_baseline'))} |")
    lines += ["", "Rank agreement with the independent reference (seed "
              f"{REFERENCE['seed']}, {REFERENCE['images_per_prompt']} images per prompt) over "
              "each full-arm study's rung LoRAs:", "",
              "| TPE seed | rung LoRAs | " + " | ".join(
                  f"{k} Spearman | {k} top-3" for k in ("full", *VARIANTS)) + " |",
              "|---|---|" + "---|---|" * (1 + len(VARIANTS))]
    for r in ranks:
        lines.append(f"| {r['seed']} | {r['loras']} | " + " | ".join(
            f"{r[k]['spearman']:.3f} | {r[k]['top3_overlap']:.2f}" for k in ("full", *VARIANTS))
            + " |")
    if result.get("note"):
        lines[5:5] = [result["note"], ""]
    lines.append(f"| **mean** | | {result['eval_rank_spearman_full']:.3f} | | "
                 f"{result['eval_rank_spearman_cheap']:.3f} | |")
    lines += ["", "Confirmed winners, cheap arm against full arm (paired over the "
              "confirmation's prompts, same fresh seeds):", "",
              "| TPE seed | cheap winner | full winner | Δ (cheap - full) | paired stderr | p | "
              "as good |", "|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['seed']} | {p['cheap_winner']} | {p['full_winner']} | "
                     f"{_f(p['delta'])} | {_f(p['stderr'])} | {_f(p['p_value'], '.3f')} | "
                     f"{'yes' if p['as_good'] else 'no'} |")
    demo = result.get("demo")
    if demo:
        lines += ["", f"The demo (`make demo`'s command, from cold, {demo['date']}, git "
                  f"{demo['commit'][:7]}, load {demo['load_before']} before): "
                  f"**{demo['wall_seconds']:.0f} s** wall for 20 trials with the confirmation; "
                  f"confirmed winner trial {demo['winner']}, Δ {_f(demo['delta_vs_baseline'])} "
                  f"± {_f(demo['delta_vs_baseline_stderr'])} over the base model on fresh seeds "
                  f"({_f(demo['gain_in_stderr'], '.1f')} paired stderr); "
                  f"{demo['preservation_verdict']}."]
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cheap_rungs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="keep each sweep's files in this folder")
    parser.add_argument("--record", action="store_true",
                        help="write benchmarks/results.json and BENCHMARKS.md")
    parser.add_argument("--demo", action="store_true",
                        help="also time the demo from cold (run it on an idle machine)")
    parser.add_argument("--demo-only", action="store_true",
                        help="time the demo alone and record it beside the recorded sweeps "
                        "(their figures keep their own date and commit)")
    parser.add_argument("--ranks-of", type=Path, metavar="FOLDER",
                        help="score one finished full-arm sweep's rung LoRAs and stop (to run "
                        "beside the sweeps); its row is made from the study when missing")
    args = parser.parse_args(argv)
    if args.ranks_of:
        folder = args.ranks_of
        seed = int(folder.name.rsplit("seed", 1)[1])
        row = json.loads((folder / "row.json").read_text()) if (folder / "row.json").is_file() \
            else study_row("full", seed, folder, None)
        rank_study(row)
        return 0
    if args.demo_only:
        recorded = json.loads(RESULTS.read_text()).get("cheap_rungs")
        if not recorded:
            parser.error("--demo-only: no cheap_rungs run recorded in benchmarks/results.json")
        demo = measure_demo(args.trials)
        merge_results({"cheap_rungs": {**recorded, "demo": demo}, "demo_cheap_rungs": demo})
        write_section(BEGIN, END, section({**recorded, "demo": demo}))
        return 0
    load_before = [round(x, 2) for x in os.getloadavg()]
    keep = args.keep or Path(tempfile.mkdtemp(prefix="cheap-rungs-"))
    rows = []
    for seed in args.seeds:
        for arm in ARMS:
            rows.append(run_arm(arm, seed, args.trials, keep / f"{arm}-seed{seed}"))
    ranks = [rank_study(r) for r in rows if r["arm"] == "full"]
    means = {k: statistics.mean(r[k]["spearman"] for r in ranks) for k in ("full", *VARIANTS)}
    result = {
        "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
        "seeds": args.seeds, "sweeps": rows, "ranks": ranks, "winners": pair_winners(rows),
        "spearman_mean": means,
        "eval_rank_spearman_full": means["full"], "eval_rank_spearman_cheap": means["cheap"],
    }
    if args.demo:
        result["demo"] = measure_demo(args.trials)
    (keep / "cheap_rungs.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("spearman_mean", "winners")}, indent=1))
    if args.record:
        merge_results({"cheap_rungs": result, **({"demo_cheap_rungs": result["demo"]}
                                                  if "demo" in result else {}),
                       "eval_rank_spearman_full": result["eval_rank_spearman_full"],
                       "eval_rank_spearman_cheap": result["eval_rank_spearman_cheap"]})
        write_section(BEGIN, END, section(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
