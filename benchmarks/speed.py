"""``python -m benchmarks.speed``: the figures of issue 15, written to ``benchmarks/results.json``.

Measured side by side in one run, on whatever machine runs it (shared CPUs give noisy walls;
the ratios are what to read):

1. **trainer vs the real reference script.** diffusers' own ``train_text_to_image_lora.py``
   (taken from a diffusers checkout at a recorded commit, run as a child process, never copied
   into this repository) and ``python -m trials.train``, both on the tiny SD model folder, the
   same 12 drawn cars at 64 px, batch 1 x 4 accumulation, rank 4 on attn1 + attn2, constant LR,
   one torch thread. Each is run for ``short`` and ``long`` optimizer steps; samples/s =
   ``(long - short) * 4 / (wall(long) - wall(short))``, so model loading, the cache build, the
   single final rung (ours) and saving cancel out. Ours runs fused and sequential accumulation
   (``fused_vs_sequential``). Runs alternate (reference, fused, sequential, ...).
2. **evaluation share of a demo trial**: ``run_trial`` on ``sweeps/tiny.yaml``'s middle
   configuration, as the sweep runs it (steps as a fidelity: the largest candidate step
   count, scored at the fidelity rungs; on the demo 60 steps, rungs 15/30/45/60):
   ``eval / (setup + train + eval)``, default evaluation and with ``eval.merge_lora``; and
   its floor (:mod:`benchmarks.cost_model`): the share if a rung cost only its UNet forward
   passes (timed alone at the same shapes), and the rung size at which the share would meet 25 %.
3. **sweeps on the demo** (``python -m hpo.run`` on ``sweeps/tiny.yaml``, cold, same seed and
   trial budget): steps as a fidelity with ASHA (the default), the same without early stopping,
   and steps as a dimension with ASHA. ``asha_compute_fraction`` = CPU-seconds of the first /
   the second; ``steps_fidelity_compute_fraction`` = CPU-seconds the first needed to reach the
   dimension arm's best score (within the paired standard error of the two winners' per-prompt
   scores) / CPU-seconds the dimension arm needed. The fidelity arm is also the demo run
   (wall time, peak memory, orchestration overhead). ASHA vs none is also counted in work
   (steps, rung images, setups) at unit costs pooled over both arms, which load drifting
   between the two sweeps cannot move, beside the same ratio for ideal successive halving at
   the sweep's settings (the least any ASHA can spend).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import cost_model, early_stop, eval_cost
from benchmarks.common import (
    DELETE,
    REPO,
    RESULTS,
    TINY_SWEEP,
    fmt,
    git_commit,
    median,
    merge_results,
    run_sweep,
    short_commit,
    write_section,
    write_sweep,
)

BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
SCRIPT = "examples/text_to_image/train_text_to_image_lora.py"
DEFAULT_MIRROR = Path("/work/.mirror/huggingface+diffusers/repo")


def _env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(REPO))
    return env


def reference_script(mirror: Path, work: Path) -> tuple[Path, str]:
    """The reference script from a diffusers git checkout (bare or not), and its commit."""
    git = ["git", f"--git-dir={mirror}"] if (mirror / "HEAD").is_file() else ["git", "-C",
                                                                              str(mirror)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    text = subprocess.run([*git, "show", f"HEAD:{SCRIPT}"], capture_output=True, text=True,
                          check=True).stdout
    path = work / "train_text_to_image_lora.py"
    path.write_text(text)
    return path, commit


def one_caption_each(data: Path) -> None:
    """Keep each image's first caption: the reference's ``datasets`` JSON reader cannot read a
    column that mixes strings and lists (the drawn cars have some of each)."""
    meta = data / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    for row in rows:
        if isinstance(row["text"], list):
            row["text"] = row["text"][0]
    meta.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-3000:]}")
    return wall


def _run_reference(script: Path, model: Path, data: Path, out: Path, steps: int) -> float:
    return _timed([
        sys.executable, str(script), f"--pretrained_model_name_or_path={model}",
        f"--train_data_dir={data}", "--caption_column=text", "--resolution=64", "--center_crop",
        "--train_batch_size=1", "--gradient_accumulation_steps=4", f"--max_train_steps={steps}",
        "--learning_rate=1e-4", "--lr_scheduler=constant", "--lr_warmup_steps=0", "--seed=42",
        "--rank=4", "--mixed_precision=no", "--dataloader_num_workers=0",
        "--checkpointing_steps=100000", f"--output_dir={out}", "--report_to=tensorboard",
    ], cwd=out.parent)


def _ours_file(work: Path, data: Path, steps: int, fused: str) -> Path:
    overrides = {
        "name": "trainer-bench",
        "model": {"name": "tiny"},  # the model folder the reference script trains
        "data": {"train_dir": str(data), "resolution": 64, "center_crop": True,
                 "random_flip": False, "synthetic": DELETE},
        "train": {"train_batch_size": 1, "gradient_accumulation_steps": 4,
                  "fused_accumulation": fused},
        # One cheap rung at the end, the same for the short and the long run.
        "eval": {"every_steps": steps, "images_per_prompt": 1, "inference_steps": 1},
        # Every parameter fixed: the merge keeps the base file's other keys, so they go.
        "parameters": {name: {"value": value, "values": DELETE, "distribution": DELETE,
                              "min": DELETE, "max": DELETE}
                       for name, value in (("rank", 4), ("learning_rate", 1e-4),
                                           ("max_train_steps", steps),
                                           ("target_modules", "attn"))}
        | {"preservation": DELETE, "preservation_weight": DELETE},  # the reference has none
        "preservation": DELETE,
        "early_terminate": DELETE,
    }
    return write_sweep(work, TINY_SWEEP, overrides, name=f"ours-{fused}-{steps}.yaml")


def _run_ours(work: Path, data: Path, cache: Path, steps: int, fused: str) -> tuple[float, float]:
    file = _ours_file(work, data, steps, fused)
    out = work / f"ours-{fused}-{steps}"
    wall = _timed([sys.executable, "-m", "trials.train", str(file), "--out", str(out),
                   "--cache", str(cache)], cwd=REPO)
    result = json.loads((out / "result.json").read_text())
    return wall, float(result["rungs"][-1]["samples_per_second"])


def measure_trainer(work: Path, mirror: Path, short: int = 10, long: int = 60,
                    repeats: int = 3) -> dict[str, Any]:
    from trials.data.synthetic import make_car_dataset
    from trials.models.components import resolve_model_path

    work.mkdir(parents=True, exist_ok=True)
    script, commit = reference_script(mirror, work)
    cache = work / "cache"
    model = Path(resolve_model_path("tiny", cache))
    data = make_car_dataset(work / "data", n_images=12, size=64, seed=0)
    one_caption_each(data)
    walls: dict[str, dict[int, list[float]]] = {k: {short: [], long: []}
                                                for k in ("reference", "on", "off")}
    own: dict[str, list[float]] = {"on": [], "off": []}
    _run_ours(work, data, cache, 1, "on")  # builds the latent cache, as a sweep's baseline does
    for r in range(repeats):
        for steps in (short, long):
            for arm in ("reference", "on", "off"):
                if arm == "reference":
                    out = work / f"ref-{r}-{steps}"
                    walls[arm][steps].append(_run_reference(script, model, data, out, steps))
                else:
                    wall, sps = _run_ours(work, data, cache, steps, arm)
                    walls[arm][steps].append(wall)
                    if steps == long:
                        own[arm].append(sps)
    samples = (long - short) * 4

    def sps(arm: str) -> float:
        return samples / (median(walls[arm][long]) - median(walls[arm][short]))

    return {
        "reference_commit": commit,
        "settings": f"tiny SD model, 12 images at 64 px, batch 1 x 4 accumulation, rank 4 "
                    f"attn1+attn2, constant LR, 1 thread, CPU; samples/s from {short} and "
                    f"{long} steps, {repeats} repeat(s)",
        "walls": {arm: {str(k): v for k, v in w.items()} for arm, w in walls.items()},
        "reference_sps": sps("reference"),
        "fused_sps": sps("on"),
        "sequential_sps": sps("off"),
        "fused_own_timer_sps": median(own["on"]),
        "sequential_own_timer_sps": median(own["off"]),
    }


def measure_eval_share(work: Path) -> dict[str, Any]:
    """A demo trial as the sweep runs it (steps as a fidelity), default vs merged LoRA."""
    from dataclasses import replace

    import torch

    from benchmarks.eval_cost import PARAMS
    from hpo.sweep import fidelity
    from hpo.sweep.spec import load_sweep
    from trials.data.synthetic import ensure_dataset
    from trials.train.loop import run_trial

    sweep = load_sweep(write_sweep(work, TINY_SWEEP, name="eval-share.yaml"))
    sweep = fidelity.apply(sweep, fidelity.plan_steps(sweep))
    ensure_dataset(sweep.data)
    torch.set_num_threads(1)
    out: dict[str, Any] = {"rungs": list(sweep.rungs(sweep.max_steps))}
    params = {**PARAMS, "max_train_steps": sweep.max_steps}
    run_trial(sweep.trial_config(params, output_dir=work / "warm", cache_dir=work / "cache"),
              lambda *_: False)  # warm: model, cache, scorer kept as in a sweep's worker
    for label, merge in (("default", False), ("merge_lora", True), ("default_again", False)):
        config = sweep.trial_config(params, output_dir=work / label, cache_dir=work / "cache")
        config = replace(config, eval=replace(config.eval, merge_lora=merge))
        last = run_trial(config, lambda *_: False).rungs[-1]
        setup, train, ev = float(last.setup_seconds), last.train_seconds, last.eval_seconds
        out[label] = {"share": ev / (setup + train + ev), "setup_seconds": setup,
                      "train_seconds": train, "eval_seconds": ev}
    # The floor: what a rung would cost if it were only its UNet forward passes.
    config = sweep.trial_config(params, output_dir=work / "floor", cache_dir=work / "cache")
    unet_seconds = eval_cost.unet_seconds_per_rung(config)
    n_rungs, d = len(out["rungs"]), out["default"]
    images = len(config.eval.prompt_list) * config.eval.images_per_prompt
    out["images_per_rung"] = images
    out["unet_seconds_per_rung"] = unet_seconds
    out["floor"] = cost_model.eval_share_floor(unet_seconds, d["eval_seconds"] / n_rungs,
                                               d["train_seconds"] / n_rungs, images)
    return out


def _paired_stderr(a: list[float], b: list[float]) -> float:
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def _arm(run) -> dict[str, Any]:
    records = sorted(run.records, key=lambda r: r.end or 0.0)
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    best = max(complete, key=lambda r: r.value or 0.0, default=None)
    return {
        "trials": len(records), "complete": len(complete),
        "pruned": sum(r.state == "PRUNED" for r in records),
        "cpu_seconds": sum(r.attr("cpu_seconds") for r in records),
        "steps_trained": int(sum(r.attr("last_step") for r in records)),
        "wall_seconds": run.wall_seconds, "best_value": None if best is None else best.value,
        "best_params": None if best is None else best.params,
        "best_step": None if best is None else best.attrs.get("best_step"),
        "best_per_prompt": None if best is None else best.attrs.get("per_prompt"),
        # (cumulative CPU-seconds, value) at each finished trial, in finishing order
        "curve": [(sum(x.attr("cpu_seconds") for x in records[:i + 1]), r.value)
                  for i, r in enumerate(records) if r.state == "COMPLETE"],
    }


def _compute_to_reach(arm: dict[str, Any], threshold: float) -> float | None:
    return next((cpu for cpu, value in arm["curve"] if value is not None and value >= threshold),
                None)


def measure_sweeps(work: Path, trials: int) -> dict[str, Any]:
    from benchmarks.overhead import from_run

    arms, runs = {}, {}
    for label, overrides, extra in (
            ("fidelity_asha", {}, ["--steps-as", "fidelity"]),
            ("fidelity_none", {"early_terminate": DELETE}, ["--steps-as", "fidelity"]),
            ("dimension_asha", {}, ["--steps-as", "dimension"])):
        folder = work / label
        file = write_sweep(folder, TINY_SWEEP, overrides)
        runs[label] = run_sweep(file, trials, folder / "runs", extra)
        arms[label] = _arm(runs[label])
    fa, fn, da = arms["fidelity_asha"], arms["fidelity_none"], arms["dimension_asha"]
    out: dict[str, Any] = {"arms": arms, "trials": trials}
    out["asha_compute_fraction"] = fa["cpu_seconds"] / fn["cpu_seconds"]
    out["asha_work"] = early_stop.asha_work(runs["fidelity_asha"], runs["fidelity_none"],
                                            trials)
    if fa["best_per_prompt"] and fn["best_per_prompt"]:
        se = _paired_stderr(fa["best_per_prompt"], fn["best_per_prompt"])
        out["asha_vs_none_best_difference"] = fa["best_value"] - fn["best_value"]
        out["asha_vs_none_paired_stderr"] = se
        out["asha_same_winner_within_stderr"] = abs(fa["best_value"] - fn["best_value"]) <= se
    if fa["best_per_prompt"] and da["best_per_prompt"]:
        se = _paired_stderr(fa["best_per_prompt"], da["best_per_prompt"])
        threshold = da["best_value"] - se
        f_cpu, d_cpu = _compute_to_reach(fa, threshold), _compute_to_reach(da, threshold)
        out["steps_fidelity"] = {"target": da["best_value"], "paired_stderr": se,
                                 "fidelity_cpu_seconds": f_cpu, "dimension_cpu_seconds": d_cpu}
        out["steps_fidelity_compute_fraction"] = None if f_cpu is None or not d_cpu \
            else f_cpu / d_cpu
        out["steps_fidelity_total_compute_fraction"] = fa["cpu_seconds"] / da["cpu_seconds"]
    demo = runs["fidelity_asha"]
    out["demo_wall_seconds"] = demo.wall_seconds
    out["demo_peak_rss_mb"] = demo.peak_tree_rss_mb
    out["overhead_median_seconds"] = from_run(demo).per_trial_median
    return out


def hyundai_eval_share_estimate() -> dict[str, Any]:
    """Evaluation share at ``sweeps/hyundai.yaml``'s shapes, counted in UNet sample-passes by
    the sweep's own forecast arithmetic (:mod:`hpo.sweep.cost`; an estimate, not a
    measurement: no GPU here, and SD v1.5 on these CPUs takes hours).

    A rung draws prompts x images x inference steps x 2 (classifier-free guidance) passes; an
    optimizer step trains accumulation x 3 passes (forward + backward). VAE decoding and CLIP
    scoring, left out, only add to the evaluation's share."""
    from hpo.sweep import cost, fidelity
    from hpo.sweep.spec import load_sweep

    sweep = load_sweep(REPO / "sweeps" / "hyundai.yaml")
    t = sweep.train
    per_rung = cost.rung_images(sweep) * cost.passes_per_image(sweep)
    train = (sweep.max_steps * t.train_batch_size * t.gradient_accumulation_steps
             * cost.TRAIN_PASSES_PER_SAMPLE)
    before = len(sweep.rungs(sweep.max_steps))
    after = len(fidelity.plan_steps(sweep).rungs)
    return {"passes_per_rung": per_rung, "train_passes_full_trial": train,
            "rungs_every_steps": before, "rungs_fidelity": after,
            "share_every_steps": before * per_rung / (before * per_rung + train),
            "share_fidelity": after * per_rung / (after * per_rung + train)}


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _x(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _load_words(r: dict[str, Any]) -> str:
    """How busy the machine was, from the load averages recorded at the start and the end."""
    loads = [*r.get("load_average_at_start", [])[:1], *r.get("load_average_at_end", [])[:1]]
    cpus = os.cpu_count() or 1
    if loads and max(loads) > 1.5 * cpus:
        return (f" (and {loads[-1]:.1f} at the end) on {cpus} cores: the machine was shared "
                "with other work, so every wall time is slow and noisy")
    return f" (and {loads[-1]:.1f} at the end): a quiet machine" if loads else ""


def _params(params: dict[str, Any] | None) -> str:
    """A trial's parameters, floats to 3 significant digits."""
    return ", ".join(f"{k} {format(v, '.3g') if isinstance(v, float) else v}"
                     for k, v in (params or {}).items())


def render(r: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of these figures."""
    t, ev, sw = r.get("trainer", {}), r.get("eval", {}), r.get("sweeps", {})
    hy = r.get("hyundai_eval_estimate", {})
    lines = [BEGIN, "## Speed (issue 15): `python -m benchmarks.speed`", "",
             f"Last run on {r.get('date')} at git {short_commit(r.get('git_commit', ''))}; "
             f"machine: {r.get('machine')}. Load average at the start "
             f"{', '.join(f'{x:.1f}' for x in r.get('load_average_at_start', []))}"
             f"{_load_words(r)}. The trainer arms ran side by side (runs alternating); the "
             "sweep arms run one after the other, so their CPU-second ratio moves with the "
             "machine's load, and the ratio counted in work is the one to read. Raw figures: "
             "`benchmarks/results.json`.",
             "", "| figure | result | target |", "|---|---|---|"]
    if t:
        lines.append(
            f"| trainer vs the real `train_text_to_image_lora.py` (diffusers "
            f"{t['reference_commit'][:10]}) | ours (fused) {t['fused_sps']:.2f} vs reference "
            f"{t['reference_sps']:.2f} samples/s = **{_x(r.get('trainer_vs_reference'))}**; "
            f"{t['settings']} | >= 2x |")
        lines.append(
            f"| fused vs sequential accumulation | {t['fused_sps']:.2f} vs "
            f"{t['sequential_sps']:.2f} samples/s = **{_x(r.get('fused_vs_sequential'))}** "
            f"(the trial's own timers: {t['fused_own_timer_sps']:.2f} vs "
            f"{t['sequential_own_timer_sps']:.2f}) | |")
    if ev:
        d, m = ev["default"], ev["merge_lora"]
        lines.append(
            f"| evaluation share of a demo trial ({ev['measured_on']}; {ev['rungs'][-1]} "
            f"steps, rungs "
            f"{', '.join(map(str, ev['rungs']))}) | default (same images): "
            f"**{_pct(d['share'])}** (again: {_pct(ev['default_again']['share'])}); with the "
            f"opt-in `merge_lora`: {_pct(m['share'])} | <= 25 % |")
    if ev.get("floor"):
        f = ev["floor"]
        lines.append(
            f"| evaluation share floor at the demo's eval settings ({ev['images_per_rung']} "
            f"images per rung) | if a rung cost only its UNet forward passes "
            f"({ev['unet_seconds_per_rung']:.2f} s, {_pct(f['unet_fraction_of_rung'])} of a "
            f"measured rung): **{_pct(f['unet_only'])}**; the share meets "
            f"{_pct(f['target'])} at {f['images_for_target']:.0f} rung images or fewer | |")
    if hy:
        lines.append(
            f"| evaluation share at `sweeps/hyundai.yaml`'s shapes (estimate in UNet "
            f"sample-passes, not measured) | {_pct(hy['share_fidelity'])} with the fidelity "
            f"rungs ({hy['rungs_fidelity']} per 1000-step trial), {_pct(hy['share_every_steps'])}"
            f" with a rung every 100 steps ({hy['rungs_every_steps']}) | |")
    if sw:
        a = sw["arms"]
        lines.append(
            f"| ASHA compute vs none ({sw['measured_on']}, {sw['trials']} trials each, steps "
            f"as a fidelity) | **{_pct(sw.get('asha_compute_fraction'))}** "
            f"({a['fidelity_asha']['cpu_seconds']:.0f} vs {a['fidelity_none']['cpu_seconds']:.0f}"
            f" CPU-s); best {fmt(a['fidelity_asha']['best_value'], 2)} vs "
            f"{fmt(a['fidelity_none']['best_value'], 2)}, same winner within paired stderr: "
            f"{sw.get('asha_same_winner_within_stderr')} | <= 50 % |")
        w = sw.get("asha_work")
        if w:
            lines.append(
                f"| ASHA vs none counted in work (steps, rung images, setups) priced at unit "
                f"costs pooled over both arms | **{_pct(w['fraction'])}**; ideal successive "
                f"halving at these settings (milestones {w['milestones']}, rungs "
                f"{w['rungs_asha']} vs none's {w['rungs_none']}): {_pct(w['ideal_fraction'])}"
                f" ({_pct(w['ideal_fraction_if_rungs_were_free'])} if rungs cost nothing) | |")
        sf = sw.get("steps_fidelity", {})
        frac = _pct(sw.get("steps_fidelity_compute_fraction"))
        lines.append(
            f"| steps as a fidelity vs a dimension, compute to reach the dimension arm's best "
            f"within paired stderr (both with ASHA) | **{frac}**"
            f" ({fmt(sf.get('fidelity_cpu_seconds'), 0)} vs "
            f"{fmt(sf.get('dimension_cpu_seconds'), 0)} CPU-s); "
            f"whole sweeps: {_pct(sw.get('steps_fidelity_total_compute_fraction'))} | <= 60 % |")
        lines.append(
            f"| demo ({sw['trials']} trials, the fidelity + ASHA arm) | wall "
            f"{sw['demo_wall_seconds']:.0f} s, peak RSS {sw['demo_peak_rss_mb']:.0f} MB (process "
            f"tree), overhead per trial {sw['overhead_median_seconds']:.2f} s (median) | |")
        lines += ["", "| arm | trials | COMPLETE / PRUNED | steps trained | CPU-s | wall | best "
                  "| best step | best params |", "|---|---|---|---|---|---|---|---|---|"]
        for label, arm in a.items():
            lines.append(
                f"| {label} | {arm['trials']} | {arm['complete']} / {arm['pruned']} | "
                f"{arm['steps_trained']} | {arm['cpu_seconds']:.0f} | {arm['wall_seconds']:.0f} s"
                f" | {fmt(arm['best_value'], 2)} | {arm['best_step']} | "
                f"{_params(arm['best_params'])} |")
    if not sw:
        lines.append("| ASHA compute vs none; steps as a fidelity vs a dimension; demo wall, "
                     "memory, overhead | not measured in this run (see the notes) | <= 50 %; "
                     "<= 60 % |")
    runs = [(name, r[key]["run"]) for name, key in
            (("trainer", "trainer"), ("evaluation share", "eval"), ("sweeps", "sweeps"))
            if isinstance(r.get(key), dict) and r[key].get("run")]
    if runs:
        lines += ["", "Measured: " + "; ".join(
            f"{name} {run['date']} at git {short_commit(run['git_commit'])} (load "
            f"{run['load_average_at_start'][0]:.1f} -> {run['load_average_at_end'][0]:.1f})"
            for name, run in runs) + "."]
    lines += [""] + [f"- {note}" for note in r.get("notes", [])]
    gpu = r.get("gpu") if isinstance(r.get("gpu"), dict) else {}
    where = (f"measured on a {gpu['device']} ({gpu.get('date')}): `gpu` in "
             "`benchmarks/results.json`" if gpu.get("model") == "sd15"
             else "not measured yet (no GPU lent); `python -m benchmarks.gpu` measures them "
             "on one")
    lines += ["", f"SD v1.5 shapes on a GPU (fused vs sequential, evaluation images/s, CLIP "
              f"scoring, two trials per GPU): {where}.", END]
    return "\n".join(lines) + "\n"


def write_markdown(results: dict[str, Any]) -> None:
    write_section(BEGIN, END, render(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR,
                        help="a diffusers git checkout (the reference script's source)")
    parser.add_argument("--trials", type=int, default=20, help="trials per sweep arm")
    parser.add_argument("--repeats", type=int, default=3,
                        help="trainer: runs per arm and step count (medians are used)")
    parser.add_argument("--sections", default="trainer,eval,sweeps",
                        help="comma-separated; none: only re-render BENCHMARKS.md")
    parser.add_argument("--label", default="the pretrained toy world",
                        help="what model the demo-level figures were measured on")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if sections == ["none"]:  # only re-render: the figures keep their run's date and commit
        write_markdown(results)
        return 0
    results["notes"] = []  # notes written by hand describe an earlier run
    results.update({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git_commit": git_commit(),
        "load_average_at_start": list(os.getloadavg()),
    })
    def provenance() -> dict[str, Any]:  # each section keeps when and where it was measured
        return {"date": results["date"], "git_commit": results["git_commit"],
                "load_average_at_start": results["load_average_at_start"],
                "load_average_at_end": list(os.getloadavg())}

    with tempfile.TemporaryDirectory(prefix="speed-bench-") as tmp:
        work = Path(tmp)
        if "trainer" in sections:
            t = measure_trainer(work / "trainer", args.mirror, repeats=args.repeats)
            results["trainer"] = {**t, "run": provenance()}
            results["trainer_vs_reference"] = t["fused_sps"] / t["reference_sps"]
            results["fused_vs_sequential"] = t["fused_sps"] / t["sequential_sps"]
            merge_results(results)
        if "eval" in sections:
            e = measure_eval_share(work / "eval")
            results["eval"] = {**e, "measured_on": args.label, "run": provenance()}
            results["eval_share"] = e["default"]["share"]
            results["eval_share_floor_unet_only"] = e["floor"]["unet_only"]
            merge_results(results)
        if "sweeps" in sections:
            s = measure_sweeps(work / "sweeps", args.trials)
            results["sweeps"] = {**s, "measured_on": args.label, "run": provenance()}
            for key in ("asha_compute_fraction", "steps_fidelity_compute_fraction",
                        "demo_wall_seconds", "demo_peak_rss_mb", "overhead_median_seconds"):
                results[key] = s.get(key)
            results["asha_work_fraction"] = s["asha_work"]["fraction"]
            results["asha_ideal_fraction"] = s["asha_work"]["ideal_fraction"]
            merge_results(results)
    results["hyundai_eval_estimate"] = hyundai_eval_share_estimate()
    results["load_average_at_end"] = list(os.getloadavg())
    merge_results(results)
    write_markdown(json.loads(RESULTS.read_text()))
    print(yaml.safe_dump({k: v for k, v in results.items() if not isinstance(v, dict)},
                         sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
