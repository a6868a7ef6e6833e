"""The sweep's cost before it starts (the dry run, the run's first lines) and as measured (the
closing summary).

The work is counted by :mod:`hpo.sweep.cost` in UNet sample-passes; this module turns passes
into time with a :class:`~hpo.sweep.cost.Throughput` taken, in this order, from:

1. ``--gpu-throughput N``: UNet sample-passes per second at the sweep's resolution, stated by
   the user for their GPU (the same rate for training and drawing);
2. trials on GPUs (this machine's, or a cluster's given by ``--address``): the figures
   ``python -m benchmarks.gpu`` wrote into ``benchmarks/results.json`` when they were measured
   on a GPU of this machine's name, else :data:`REFERENCE_PASSES_PER_SECOND`, published for an
   A100, scaled to the sweep's resolution by area;
3. trials on this CPU: a few seconds of the trial's own code timed here and now
   (:func:`trials.api.probe_times`). No published figure fits a CPU, and the figures in
   ``benchmarks/results.json`` were measured on one sweep file on an idle machine; the probe
   times this sweep's shapes under this machine's load of the moment, with the threads a trial
   gets, and includes the VAE decoding and CLIP scoring of a rung image. A model or CLIP scorer
   it cannot load without a download or a build (a hub id: a sweep meant for GPUs) gets the
   GPU figure of 2, saying why; a probe that fails leaves the forecast in passes only.

The run records its forecast in the study (user attr ``cost_forecast``), so the summary can
set the measured split beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import optuna

from hpo.sweep import cost
from hpo.sweep.fidelity import StepsPlan, plan_steps
from hpo.sweep.spec import Sweep
from trials.api import probe_blocker, probe_times

log = logging.getLogger("hpo")
RECORD_KEY = "cost_forecast"
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results.json"
# diffusers docs, "PyTorch 2.0" (optimization/torch2.0): SD v1.5, fp16, 512 px, A100, SDPA,
# no torch.compile: batch 4 at 11.6 it/s; each iteration runs the UNet on 4 x 2 samples
# (classifier-free guidance). Batched, as a sweep draws (eval.batch_size) and trains (fused
# accumulation); batch 1 gives 21.7 it/s = 43.4 passes/s, batch 16 3.0 it/s = 96 passes/s.
REFERENCE_PASSES_PER_SECOND = 11.6 * 4 * 2
REFERENCE_RESOLUTION = 512
REFERENCE_SOURCE = ("an A100's 92.8 UNet passes/s (SD v1.5 fp16 512 px, batch 4, eager; "
                    "diffusers docs, PyTorch 2.0 page)")


def check_rate(value: float | None) -> str | None:
    """Why ``--gpu-throughput`` is unusable, or None."""
    if value is None or (math.isfinite(value) and value > 0):
        return None
    return (f"--gpu-throughput: UNet sample-passes per second at the sweep's resolution, a "
            f"number > 0 (got {value:g})")


def measured_gpu(name: str, results: Path = RESULTS) -> dict[str, Any] | None:
    """The ``gpu`` section of ``results`` when it was measured at SD v1.5 shapes on a GPU
    called ``name``."""
    try:
        gpu = json.loads(results.read_text()).get("gpu")
    except (OSError, ValueError):
        return None
    if (isinstance(gpu, dict) and gpu.get("device") == name and gpu.get("model") == "sd15"
            and gpu.get("train_passes_per_second") and gpu.get("eval_passes_per_second")):
        return gpu
    return None


def _gpu_rate(sweep: Sweep, note: str = "") -> cost.Throughput:
    import torch

    area = (REFERENCE_RESOLUTION / sweep.data.resolution) ** 2
    scaled = "" if area == 1 else f", x {area:.3g} for {sweep.data.resolution} px by area"
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    gpu = measured_gpu(name) if name else None
    if gpu is not None:
        return cost.Throughput(
            gpu["train_passes_per_second"] * area, gpu["eval_passes_per_second"] * area, "gpu",
            f"measured on this {name} by python -m benchmarks.gpu ({gpu.get('date')}; drawing "
            f"includes VAE decoding{scaled})")
    rate = REFERENCE_PASSES_PER_SECOND * area
    here = f"; this machine's GPU is a {name}" if name else note
    return cost.Throughput(rate, rate, "gpu", f"{REFERENCE_SOURCE}{scaled}{here}; VAE decoding "
                           "and CLIP scoring come on top; state yours with --gpu-throughput")


def _cpu_rate(sweep: Sweep, forecast: cost.Forecast, cache_dir: Path
              ) -> tuple[cost.Throughput | None, str]:
    config = sweep.trial_config(cost.typical_values(sweep), output_dir=cache_dir / "probe",
                                cache_dir=cache_dir)
    why = probe_blocker(config)
    if why:  # a model this machine cannot time is meant for GPUs
        return _gpu_rate(sweep, f"; no GPU here, and {why}"), ""
    threads = max(1, math.ceil(sweep.resources.cpu_per_trial))
    try:
        times = probe_times(config, threads, "cpu")
    except Exception as err:  # a forecast must never stop a sweep; the trials would say more
        return None, f"no seconds: timing a step and an image failed ({type(err).__name__}: {err})"
    # The probe times a step with the typical configuration's preservation remedy: its passes
    # (hpo.sweep.cost) over its seconds are the rate the forecast counts every remedy's at.
    passes = cost.train_passes_per_sample(config.preservation_method)
    train = forecast.samples_per_step * passes / times.seconds_per_step
    p = config.params
    remedy = "" if config.preservation_method == "none" else f" {config.preservation_method}"
    source = (f"measured here just now ({times.seconds:.1f} s, {threads} thread(s), rank "
              f"{p.rank} {p.target_modules}{remedy}): {times.seconds_per_step:.3g} s per optimizer "
              f"step, {times.seconds_per_image:.3g} s per image with CLIP scoring")
    return cost.Throughput(train, forecast.passes_per_image / times.seconds_per_image, "cpu",
                           source), ""


def throughput(sweep: Sweep, forecast: cost.Forecast, args: argparse.Namespace,
               cache_dir: Path) -> tuple[cost.Throughput | None, str]:
    """The rate that turns the forecast's passes into seconds (see the module docstring), or
    None and why not."""
    import torch

    stated = getattr(args, "gpu_throughput", None)
    if stated:
        return cost.Throughput(stated, stated, "gpu", f"{stated:g} UNet passes/s stated with "
                               "--gpu-throughput"), ""
    if args.address or torch.cuda.is_available():  # a cluster's trials run on its GPUs
        return _gpu_rate(sweep), ""
    return _cpu_rate(sweep, forecast, cache_dir)


def forecast_for(sweep: Sweep, steps: StepsPlan, args: argparse.Namespace
                 ) -> tuple[cost.Forecast, cost.Throughput | None, str]:
    """The forecast of ``args.trials`` trials and its throughput (or why there is none)."""
    forecast = cost.forecast(sweep, steps, args.trials)
    rate, why = throughput(sweep, forecast, args, args.out.resolve() / "cache")
    return forecast, rate, why


def dry_run_lines(sweep: Sweep, steps: StepsPlan | None, args: argparse.Namespace) -> list[str]:
    """What ``--dry-run`` prints about the cost (``steps`` None: as the sweep file says)."""
    if steps is None:
        steps = plan_steps(sweep)
    return describe_lines(sweep, *forecast_for(sweep, steps, args))


def at_start(study: optuna.Study, sweep: Sweep, steps: StepsPlan, args: argparse.Namespace
             ) -> None:
    """Before the trials: log the forecast's time line and record the forecast in the study."""
    forecast, rate, why = forecast_for(sweep, steps, args)
    time_line = next(line for line in describe_lines(sweep, forecast, rate, why)
                     if line.startswith("  time"))
    log.info("forecast: %s", time_line.removeprefix("  time").strip())
    record(study, sweep, forecast, rate)


def _count(x: float) -> str:
    for size, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if x >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.0f}"


def _time(seconds: float, device: str) -> str:
    if device == "gpu":
        return f"{seconds / 3600:.3g} GPU-hours"
    if seconds < 600:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _split(split: cost.Split, show) -> str:
    return (f"training {show(split.training)}, evaluation {show(split.evaluation)} (rungs "
            f"{show(split.rungs)}, baseline {show(split.baseline)}, confirmation "
            f"{show(split.confirmation)}): {100 * split.eval_share:.0f} % drawing images")


def _sample(f: cost.Forecast) -> str:
    plain = cost.TRAIN_PASSES_PER_SAMPLE
    if f.train_passes_per_sample == plain:
        return f"{plain:g} (forward + backward)"
    return (f"{f.train_passes_per_sample:g} (forward + backward {plain:g}, + preservation's "
            "remedy: prior 3, dop 4; a searched one averaged)")


def describe_lines(sweep: Sweep, forecast: cost.Forecast, rate: cost.Throughput | None,
                   why: str) -> list[str]:
    """The dry run's cost lines."""
    f, e = forecast, sweep.eval
    guided = f" x 2 (guidance {e.guidance_scale:g})" if e.guidance_scale > 1 else ""
    lines = [f"  cost           {f.trials} trials, in UNet sample-passes at "
             f"{sweep.data.resolution} px: a training sample = {_sample(f)}, an image = "
             f"{e.inference_steps} sampler steps{guided} = "
             f"{f.passes_per_image:g}; {f.images_per_rung} images a rung"]
    arms = [("with ASHA", f.asha, f.rungs[1], "ideal successive halving: an estimate"),
            ("no early stop", f.full, f.rungs[0], "every trial to its last step")]
    for label, work, rungs, note in arms:
        if work is not None:
            lines.append(f"    {label:<14}{_split(f.passes(work), _count)}; "
                         f"{work.steps:,.0f} steps, {rungs or 0:,.0f} rungs ({note})")
    if f.racing is not None:
        lines.append(f"    racing        {_split(f.passes(f.racing), _count)}: its bound, if "
                     "it stopped every trial ASHA stops, at its first look; the sweep lies "
                     "between this and the ASHA line")
    elif sweep.racing is not None:
        lines.append("    racing        stops only trials significantly worse than a rung's "
                     "best: between no saving and stopping all but one")
    if rate is None:
        lines.append(f"  time           {why}")
        return lines
    planned = rate.seconds(f.passes(f.planned))
    other = (f" ({_time(rate.seconds(f.passes(f.full)).total, rate.device)} without early "
             "stopping)" if f.asha is not None else "")
    what = "" if rate.device == "gpu" else " of trial time on this CPU"
    lines.append(f"  time           about {_time(planned.total, rate.device)}{what}{other}, "
                 f"{100 * planned.eval_share:.0f} % of it drawing images")
    lines.append(f"    rate          {rate.source}")
    return lines


def record(study: optuna.Study, sweep: Sweep, forecast: cost.Forecast,
           rate: cost.Throughput | None) -> None:
    """Store the planned arm's forecast in the study, for the closing summary."""
    f = forecast
    passes = f.passes(f.planned)
    seconds = None if rate is None else rate.seconds(passes)
    study.set_user_attr(RECORD_KEY, {
        "trials": f.trials, "steps": f.planned.steps,
        "rungs": f.rungs[1] if f.asha is not None else f.rungs[0],
        "arm": "ideal successive halving" if f.asha is not None else "no early stopping",
        "samples_per_step": f.samples_per_step, "passes_per_image": f.passes_per_image,
        "train_passes_per_sample": f.train_passes_per_sample,
        "passes": vars(passes), "seconds": None if seconds is None else vars(seconds),
        "device": None if rate is None else rate.device,
        "source": None if rate is None else rate.source,
        "gpu_per_trial": sweep.resources.gpu_per_trial})


def summary_lines(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The measured split of the study's finished ``trials`` (their own timers: trial seconds
    on a CPU, GPU-hours on GPUs), beside the forecast the run recorded."""
    got = cost.measured([t.user_attrs for t in trials], study.user_attrs)
    if not got.trials:
        return []
    plan = study.user_attrs.get(RECORD_KEY) or {}
    device = "gpu" if got.device == "cuda" else "cpu"
    scale = float(plan.get("gpu_per_trial") or 1.0) if device == "gpu" else 1.0
    s = got.seconds
    spent = cost.Split(s.training * scale, s.rungs * scale, s.baseline * scale,
                       s.confirmation * scale)

    def show(seconds: float) -> str:
        return f"{seconds / 3600:.2f} h" if device == "gpu" else f"{seconds:.0f} s"

    lines = [f"cost: {got.trials} trial(s) trained {got.steps:,} steps and were scored at "
             f"{got.rungs:,} rungs"
             + (f" (forecast for {plan['trials']}: {plan['steps']:,.0f} steps, "
                f"{plan['rungs']:,.0f} rungs, {plan['arm']})" if plan else ""),
             f"  measured: {_time(spent.total, device)}: {_split(spent, show)}; setup "
             f"{show(got.setup_seconds * scale)}"]
    ahead = plan.get("seconds")
    if ahead and plan.get("device") == device:
        split = cost.Split(**ahead)
        lines.append(f"  forecast: {_time(split.total, device)}: {_split(split, show)}")
    elif plan.get("passes"):
        lines.append(f"  forecast: in UNet passes, {_split(cost.Split(**plan['passes']), _count)}")
    return lines
