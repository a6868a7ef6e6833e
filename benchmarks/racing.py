"""Adaptive evaluation on the toy world: racing + prompts as a fidelity against fixed evaluation.

Issue 22's measurement, in three parts:

1. **Side by side sweeps** (``--seeds``, 20 trials each): for each TPE search seed, the shipped
   ``sweeps/tiny.yaml`` with fixed evaluation (every rung draws every prompt) and with
   :data:`RACING` (racing at every rung, ASHA-only rungs on a prompt subset), one after the
   other. Whole-sweep compute is counted in UNet sample-passes (``hpo.sweep.cost``'s units:
   a training sample 3, an image ``inference_steps`` x 2 with guidance), from what the trials
   actually did: their optimizer steps (``last_step``) and the images they drew
   (``images_drawn``: brand and control images, partial rungs included), plus the baseline and
   the confirmation. Counts do not depend on the machine's load; the trials' own seconds are
   given beside them and do. **Same winner**: the two arms' confirmed winners are paired over
   the prompts of the confirmation (same fresh seeds in both arms); "same within paired
   stderr" when the paired t-test does not tell them apart (p >= 0.05).
2. **Top-3 stop rate** on the 72-configuration table of ``benchmarks.search_pipeline`` (its
   per-prompt scores at each configuration's best rung): simulated sweeps of ``--sim-trials``
   configurations drawn at random, in random arrival order and a random shared prompt order,
   each raced with :data:`RACING`'s test against the best configuration finished before it
   (``hpo.verdict.racing.RungReferences``, the sweep's own code). The rate: the fraction of
   simulated sweeps in which racing stopped one of the table's top 3. The table has no
   control prompts (it predates preservation), so the reference is the best by brand score.
3. **Forecast error**: each sweep's recorded forecast (``cost_forecast``: seconds of training
   and of evaluation, timed on this machine at the sweep's start) against what its trials then
   measured, ``|forecast - measured| / measured`` per part.

``python -m benchmarks.racing --seeds 0 1 2 --record`` writes ``benchmarks/results.json``
(``racing``, and the issue's keys ``sweep_compute_fraction``, ``sweep_eval_share``,
``racing_top3_stop_rate``, ``forecast_error``) and the Racing section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

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

# The racing arm's sweep-file changes (hpo.sweep.racing): a decision after every 8 prompts
# from 16 on (4 looks on the demo's 48 prompts) at level 0.01 each, and ASHA's rung 15 (its
# alone: 30, 45 and 60 are candidate step counts) on 16 prompts.
RACING = {"racing": {"chunk": 8, "min_prompts": 16, "test": "t", "level": 0.01},
          "early_terminate": {"rung_prompts": 16}}
# Every arm the benchmark knows (--arms), by its sweep-file changes to sweeps/tiny.yaml; the
# first two are the issue's comparison, the others take racing apart (which half costs what).
ARM_CHANGES: dict[str, dict[str, Any]] = {
    "fixed": {},
    "racing": RACING,
    "racing-only": {"racing": RACING["racing"]},
    "subset-only": {"early_terminate": RACING["early_terminate"]},
    "racing-cutoff": {"racing": {**RACING["racing"], "against": "cutoff"}},
}
ARMS = ("fixed", "racing")
TABLE = REPO / "benchmarks" / "search_pipeline_table.json"


def overrides(arm: str, seed: int) -> dict[str, Any]:
    return {"method": {"type": "tpe", "seed": seed}, **ARM_CHANGES[arm]}


def sweep_compute(study: optuna.Study, sweep_file: Path) -> dict[str, Any]:
    """A finished sweep's compute in UNet sample-passes and in its trials' seconds."""
    from hpo.sweep import cost
    from hpo.sweep.spec import load_sweep

    sweep = load_sweep(sweep_file)
    per_image = cost.passes_per_image(sweep)
    t = sweep.train
    samples = t.train_batch_size * t.gradient_accumulation_steps
    trials = study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL))
    steps = sum(int(tr.user_attrs.get("last_step") or 0) for tr in trials)
    # each trial's own remedy: preservation's passes (hpo.sweep.cost.PRESERVATION_PASSES)
    train_passes = sum(int(tr.user_attrs.get("last_step") or 0) * samples
                       * cost.train_passes_per_sample(tr.params.get("preservation",
                                                                    sweep.preservation.method))
                       for tr in trials)
    images = sum(int(tr.user_attrs.get("images_drawn") or 0) for tr in trials)
    attrs = study.user_attrs
    confirm_images = 0
    for key, record in attrs.items():
        if key.startswith("confirm_") and isinstance(record, dict) and "n_images" in record:
            control = record.get("control_per_prompt") or []
            confirm_images += int(record["n_images"]) + len(control) * int(
                record.get("images_per_prompt") or sweep.confirm.images_per_prompt)
    baseline_images = cost.rung_images(sweep)
    passes = {"training": train_passes, "rungs": images * per_image,
              "baseline": baseline_images * per_image, "confirmation": confirm_images * per_image}
    passes["evaluation"] = passes["rungs"] + passes["baseline"] + passes["confirmation"]
    passes["total"] = passes["training"] + passes["evaluation"]
    got = cost.measured([tr.user_attrs for tr in trials], attrs)
    seconds = {"training": got.seconds.training, "evaluation": got.seconds.evaluation,
               "total": got.seconds.total}
    states = [tr.state.name for tr in trials]
    return {"passes": passes, "eval_share": passes["evaluation"] / passes["total"],
            "seconds": seconds, "steps": steps, "rung_images": images,
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "raced": sum(1 for tr in trials if tr.user_attrs.get("raced")),
            "forecast_error": forecast_error(attrs.get("cost_forecast"), got, passes)}


def forecast_error(plan: dict[str, Any] | None, got: Any, passes: dict[str, float]
                   ) -> dict[str, float] | None:
    """``|forecast - measured| / measured`` of training and evaluation seconds, and of the
    work counted in passes (what the forecast got wrong in counting, apart from timing); the
    rate's error is the rest: the seconds each measured pass took against the forecast's."""
    if not plan or not plan.get("seconds"):
        return None
    ahead, counted = plan["seconds"], plan["passes"]
    f_eval = ahead["rungs"] + ahead["baseline"] + ahead["confirmation"]
    c_eval = counted["rungs"] + counted["baseline"] + counted["confirmation"]
    m = got.seconds
    return {"training": abs(ahead["training"] - m.training) / m.training,
            "evaluation": abs(f_eval - m.evaluation) / m.evaluation,
            "eval_share": abs(f_eval / (f_eval + ahead["training"]) - m.eval_share),
            "passes_training": abs(counted["training"] - passes["training"])
            / passes["training"],
            "passes_evaluation": abs(c_eval - passes["evaluation"]) / passes["evaluation"],
            # forecast seconds per pass / measured seconds per pass, minus 1
            "rate_training": (ahead["training"] / counted["training"])
            / (m.training / passes["training"]) - 1,
            "rate_evaluation": (f_eval / c_eval) / (m.evaluation / passes["evaluation"]) - 1}


def winner(study: optuna.Study, runs: Path, name: str) -> dict[str, Any]:
    """The sweep's confirmed winner and its confirmed per-prompt scores."""
    import yaml

    best = runs / name / "best.yaml"
    if not best.is_file():
        return {"trial": None}
    result = yaml.safe_load(best.read_text())["result"]
    number = int(result["trial"])
    record = study.user_attrs.get(f"confirm_trial_{number}") or {}
    params = study.trials[number].params
    return {"trial": number, "params": params, "per_prompt": record.get("per_prompt"),
            "confirmed": record.get("clip_score"),
            "delta_vs_baseline": (result.get("confirmation") or {}).get("delta_vs_baseline")}


def run_arm(arm: str, seed: int, trials: int, folder: Path) -> dict[str, Any]:
    """One sweep of ``arm`` with TPE seed ``seed``, run in ``folder``; its row."""
    file = write_sweep(folder, TINY_SWEEP, overrides(arm, seed))
    run = run_sweep(file, trials, folder / "runs")
    name = "tiny-demo"
    study = optuna.load_study(
        study_name=name, storage=f"sqlite:///{folder / 'runs' / name / 'optuna.db'}")
    row = {"arm": arm, "seed": seed, "wall_seconds": run.wall_seconds, "exit_code": run.exit_code,
           **sweep_compute(study, file), "winner": winner(study, folder / "runs", name)}
    if arm == "fixed":  # racing's decisions on this sweep's own path, by each reference
        from hpo.sweep.spec import load_sweep

        seed_eval = load_sweep(file).eval.seed
        row["replay"] = {against: replay(study, folder / "runs" / name, against,
                                         row["winner"].get("trial"), seed_eval)
                         for against in ("best", "cutoff")}
    print(f"{arm} seed {seed}: passes {row['passes']['total']:,.0f}, eval share "
          f"{row['eval_share']:.2f}, raced {row['raced']}, winner "
          f"{row['winner'].get('trial')} {row['winner'].get('confirmed')}", flush=True)
    return row


def run_arms(seeds: list[int], trials: int, arms: tuple[str, ...] = ARMS,
             keep: Path | None = None) -> list[dict[str, Any]]:
    """Every arm for every seed, one after the other; ``keep``: the folder to keep each
    sweep's files in (``<arm>-seed<seed>/``; a temporary folder each, deleted, without it)."""
    rows = []
    for seed in seeds:
        for arm in arms:
            if keep is not None:
                folder = keep / f"{arm}-seed{seed}"
                folder.mkdir(parents=True, exist_ok=False)
                rows.append(run_arm(arm, seed, trials, folder))
                continue
            with tempfile.TemporaryDirectory(prefix=f"racing-{arm}-") as tmp:
                rows.append(run_arm(arm, seed, trials, Path(tmp)))
    return rows


def replay(study: optuna.Study, run_dir: Path, against: str, winner_trial: int | None,
           eval_seed: int) -> dict[str, Any]:
    """Racing replayed on a fixed-evaluation sweep's own rungs (module docstring, part 1b).

    Every rung the trials reported to Ray (``result.json``: per-prompt scores, constraints) is
    taken in the order it was reported; the referee (:class:`~hpo.verdict.racing.
    RungReferences`, :data:`RACING`'s test, ``against`` the rung's best or ASHA's cutoff at
    the demo's factor 2) decides at each look whether it would have stopped that trial there,
    and then records the full rung either way, so the sweep's path stays the fixed one: what
    racing's decisions alone would have done, apart from the different path TPE and ASHA take
    once a trial is stopped. Returns the stops, whether one was the fixed sweep's confirmed
    winner (before its best rung), and the share of the rungs' prompts racing would have
    drawn."""
    from hpo.sweep.racing import Racing
    from hpo.verdict.preservation import is_feasible
    from hpo.verdict.racing import RungReferences
    from trials.eval.evaluator import prompt_order

    by_id = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    events = []
    for file in sorted((run_dir / "ray").glob("**/result.json")):
        for line in file.read_text().splitlines():
            r = json.loads(line)
            trial = by_id.get(r.get("trial_id"))
            if trial is not None and r.get("per_prompt") and "raced" not in r:
                events.append((r["timestamp"], trial.number, int(r["step"]), r["per_prompt"],
                               is_feasible(r.get("constraints")) is not False,
                               int(r["step"]) >= int(r["max_train_steps"])))
    events.sort(key=lambda e: (e[0], e[1]))
    settings = RACING["racing"]
    cutoff = against == "cutoff"  # tiny.yaml's ASHA: factor 2 from step 15
    racing = Racing(**settings, against=against, keep_fraction=0.5 if cutoff else None,
                    grace_steps=15 if cutoff else None)
    refs = RungReferences(racing)
    n = len(events[0][3]) if events else 0
    order = prompt_order(n, eval_seed)  # the order the trials draw in (same eval.seed)
    stops, drawn, total = [], 0, 0
    best_step = (study.trials[winner_trial].user_attrs.get("best_step")
                 if winner_trial is not None else None)
    winner_stopped = False
    for _, number, step, per_prompt, usable, final in events:
        used = len(per_prompt)
        for end in range(racing.chunk, len(per_prompt), racing.chunk):
            places = order[:end]
            decision = refs.decide(step, places, [per_prompt[i] for i in places], final)
            if decision is not None:
                used = end
                stops.append({"trial": number, "step": step, "prompts": end,
                              "delta": decision["delta"],
                              "reference": decision["reference_trial"]})
                if number == winner_trial and best_step is not None and step <= best_step:
                    winner_stopped = True
                break
        drawn += used
        total += len(per_prompt)
        refs.record(step, number, per_prompt, None, usable)
    return {"against": against, "stops": stops, "winner_stopped": winner_stopped,
            "prompts_drawn_fraction": drawn / total if total else None}


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per seed and arm: its compute as a fraction of the fixed arm's, and the paired
    difference of the two arms' confirmed winners."""
    from hpo.verdict.paired import paired_or_none

    out = []
    for seed in sorted({r["seed"] for r in rows}):
        fixed = next((r for r in rows if r["seed"] == seed and r["arm"] == "fixed"), None)
        for raced in (r for r in rows if r["seed"] == seed and r["arm"] != "fixed"):
            if fixed is None:
                continue
            paired = paired_or_none(raced["winner"].get("per_prompt"),
                                    fixed["winner"].get("per_prompt"))
            out.append({
                "seed": seed, "arm": raced["arm"],
                "compute_fraction": raced["passes"]["total"] / fixed["passes"]["total"],
                "eval_fraction": raced["passes"]["evaluation"] / fixed["passes"]["evaluation"],
                "seconds_fraction": raced["seconds"]["total"] / fixed["seconds"]["total"],
                "eval_share_fixed": fixed["eval_share"], "eval_share_racing": raced["eval_share"],
                "winners": [fixed["winner"].get("trial"), raced["winner"].get("trial")],
                "winner_delta": None if paired is None else paired.delta,
                "winner_stderr": None if paired is None else paired.stderr,
                "winner_p": None if paired is None else paired.p_value,
                "same_winner": None if paired is None else not paired.distinguishable(),
            })
    return out


def simulate_table(n_sims: int, sweep_trials: int, seed: int = 0,
                   settings: dict[str, Any] = RACING["racing"]) -> dict[str, Any]:
    """Racing replayed on the 72-configuration table (module docstring, part 2); ``against:
    cutoff`` takes ASHA's reduction factor 2 (the demo's)."""
    from hpo.sweep.racing import Racing
    from hpo.verdict.racing import RungReferences

    rows = json.loads(TABLE.read_text())["rows"]
    configs = [(key, row["per_prompt"]) for key, row in rows.items() if row.get("per_prompt")]
    ranked = sorted(configs, key=lambda kv: -sum(kv[1]) / len(kv[1]))
    top3 = {key for key, _ in ranked[:3]}
    racing = Racing(**settings, keep_fraction=0.5 if settings.get("against") == "cutoff"
                    else None)
    rng = random.Random(seed)
    n_prompts = len(configs[0][1])
    sweeps_with_top3 = sweeps_stopping_top3 = stopped = drawn = total = 0
    top3_seen = top3_stopped = 0
    for _ in range(n_sims):
        order = list(range(n_prompts))
        rng.shuffle(order)
        picked = rng.sample(configs, min(sweep_trials, len(configs)))
        refs = RungReferences(racing)
        hit = False
        for number, (key, per_prompt) in enumerate(picked):
            n_drawn = n_prompts
            for end in range(racing.chunk, n_prompts, racing.chunk):
                places = order[:end]
                if refs.decide(0, places, [per_prompt[p] for p in places]) is not None:
                    n_drawn = end
                    break
            total += n_prompts
            drawn += n_drawn
            if key in top3:
                top3_seen += 1
            if n_drawn < n_prompts:
                stopped += 1
                if key in top3:
                    top3_stopped += 1
                    hit = True
                drew = order[:n_drawn]  # a partial record, as the recorder keeps it
                refs.record(0, number, [per_prompt[p] for p in drew], drew, False, True)
            else:
                refs.record(0, number, per_prompt)
        if top3 & {key for key, _ in picked}:
            sweeps_with_top3 += 1
            sweeps_stopping_top3 += hit
    return {"simulated_sweeps": n_sims, "configurations_per_sweep": sweep_trials,
            "sweeps_with_a_top3": sweeps_with_top3,
            "rate": sweeps_stopping_top3 / sweeps_with_top3 if sweeps_with_top3 else None,
            "top3_stop_rate_per_draw": top3_stopped / top3_seen if top3_seen else None,
            "configurations_stopped": stopped / (n_sims * min(sweep_trials, len(configs))),
            "prompts_drawn_fraction": drawn / total, "top3": sorted(top3),
            "racing": racing.as_dict()}


def _f(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def tables(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], sim: dict[str, Any],
           sim_cutoff: dict[str, Any] | None = None) -> str:
    lines = ["| seed | arm | COMPLETE / PRUNED (raced) | steps | rung images | UNet passes: "
             "training / evaluation / total | eval share | trial seconds | forecast error "
             "train / eval | winner (confirmed) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, fe, w = r["passes"], r["forecast_error"] or {}, r["winner"]
        lines.append(
            f"| {r['seed']} | {r['arm']} | {r['complete']} / {r['pruned']} ({r['raced']}) | "
            f"{r['steps']} | {r['rung_images']:,} | {p['training']:,.0f} / "
            f"{p['evaluation']:,.0f} / {p['total']:,.0f} | {r['eval_share']:.2f} | "
            f"{r['seconds']['total']:.0f} | {_f(fe.get('training'))} / "
            f"{_f(fe.get('evaluation'))} | "
            + ("none keeps the base model (exit 4) |" if w.get("trial") is None
               else f"{w['trial']} ({_f(w.get('confirmed'))}) |"))
    lines += ["", "| seed | arm / fixed: compute (passes) | evaluation | trial seconds | "
              "winners fixed, arm | arm's winner - fixed winner, fresh seeds (p) | same "
              "winner |", "|---|---|---|---|---|---|---|"]
    for c in pairs:
        lines.append(
            f"| {c['seed']} | {c['arm']}: {c['compute_fraction']:.2f} | "
            f"{c['eval_fraction']:.2f} | "
            f"{c['seconds_fraction']:.2f} | {c['winners'][0]}, {c['winners'][1]} | "
            f"{_f(c['winner_delta'], '+.2f')} ± {_f(c['winner_stderr'])} "
            f"(p {_f(c['winner_p'], '.3f')}) | "
            f"{ {True: 'yes', False: 'no', None: '-'}[c['same_winner']] } |")
    replays = [(r["seed"], r["replay"]) for r in rows if r.get("replay")]
    if replays:
        lines += ["", "Racing's decisions replayed on each fixed sweep's own rungs (its path "
                  "kept: no TPE or ASHA divergence):", "",
                  "| seed | against | trials stopped (stops) | prompts drawn | fixed winner "
                  "stopped |", "|---|---|---|---|---|"]
        for seed, replay_ in replays:
            for against, r in replay_.items():
                trials = len({s["trial"] for s in r["stops"]})
                lines.append(f"| {seed} | {against} | {trials} ({len(r['stops'])}) | "
                             f"{_f(r['prompts_drawn_fraction'])} | "
                             f"{'yes' if r['winner_stopped'] else 'no'} |")
    lines += ["", f"Racing replayed on the 72-configuration table: {sim['simulated_sweeps']} "
              f"simulated sweeps of {sim['configurations_per_sweep']} configurations; one of "
              f"the top 3 was stopped in {100 * (sim['rate'] or 0):.1f} % of the "
              f"{sim['sweeps_with_a_top3']} sweeps that drew one (per draw of a top-3 "
              f"configuration: {100 * (sim['top3_stop_rate_per_draw'] or 0):.1f} %); racing "
              f"stopped {100 * sim['configurations_stopped']:.0f} % of all configurations and "
              f"drew {100 * sim['prompts_drawn_fraction']:.0f} % of their prompts."]
    if sim_cutoff is not None:
        lines += ["", f"The same against ASHA's cutoff (factor 2): a top-3 configuration stopped "
                  f"in {100 * (sim_cutoff['rate'] or 0):.1f} % of the sweeps; "
                  f"{100 * sim_cutoff['configurations_stopped']:.0f} % of all configurations "
                  f"stopped, {100 * sim_cutoff['prompts_drawn_fraction']:.0f} % of their prompts "
                  "drawn."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.racing",
                                description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--sims", type=int, default=5000, help="simulated sweeps on the table")
    p.add_argument("--sim-trials", type=int, default=20)
    p.add_argument("--arms", nargs="+", choices=sorted(ARM_CHANGES), default=list(ARMS),
                   help="the arms to run (--record needs fixed and racing)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep each sweep's files in DIR/<arm>-seed<seed>/ (a new folder)")
    p.add_argument("--record", action="store_true",
                   help="write benchmarks/results.json and BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.record and not {"fixed", "racing"} <= set(args.arms):
        p.error("--record compares the fixed and racing arms: keep both in --arms")
    load = os.getloadavg()
    sim = simulate_table(args.sims, args.sim_trials)
    sim_cutoff = simulate_table(args.sims, args.sim_trials,
                                settings=ARM_CHANGES["racing-cutoff"]["racing"])
    rows = run_arms(args.seeds, args.trials, tuple(args.arms), args.keep) if args.seeds else []
    pairs = compare(rows)
    text = tables(rows, pairs, sim, sim_cutoff)
    print(text)
    if not args.record:
        return 0
    commit = git_commit()
    fractions = [c["compute_fraction"] for c in pairs if c["arm"] == "racing"]
    shares = [r["eval_share"] for r in rows if r["arm"] == "racing"]
    errors = [max(r["forecast_error"]["training"], r["forecast_error"]["evaluation"])
              for r in rows if r["arm"] == "fixed" and r["forecast_error"]]
    run = {"machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
           "load_at_start": [round(x, 1) for x in load],
           "load_at_end": [round(x, 1) for x in os.getloadavg()],
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git_commit": commit}
    merge_results({
        "racing": {"seeds": args.seeds, "trials": args.trials, "settings": RACING, "arms": rows,
                   "pairs": pairs, "table": sim, "table_cutoff": sim_cutoff, **run},
        "sweep_compute_fraction": {"value": max(fractions) if fractions else None,
                                   "per_seed": fractions, "target": 0.5, **run},
        "sweep_eval_share": {"value": max(shares) if shares else None, "per_seed": shares,
                             "target": 0.4, **run},
        "racing_top3_stop_rate": {"value": sim["rate"], "target": 0.05, **run},
        "forecast_error": {"value": max(errors) if errors else None, "per_seed": errors,
                           "what": "max of |forecast - measured| / measured over training and "
                           "evaluation seconds, fixed-evaluation arm", "target": 0.25, **run},
    })
    begin, end = "<!-- racing:begin -->", "<!-- racing:end -->"
    write_section(begin, end, "\n".join([
        begin, "## Racing and prompts as a fidelity (issue 22): "
        "`python -m benchmarks.racing --record`", "",
        f"{len(args.seeds)} TPE search seed(s) x {len(args.arms)} arms of `sweeps/tiny.yaml` "
        f"({args.trials} trials each, run one after the other), measured {run['date']} on "
        f"{run['machine']}, commit {short_commit(commit, 10)} (load {run['load_at_start']} at "
        f"the start, {run['load_at_end']} at the end). *fixed*: every rung draws every prompt; "
        + "; ".join(f"*{arm}*: `{json.dumps(ARM_CHANGES[arm])}`" for arm in args.arms
                    if arm != "fixed")
        + ". Compute in UNet sample-passes from what the trials did (load "
        "cannot move it); trial seconds and the forecast error do depend on the load.", "",
        text, end]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
