"""``python -m benchmarks.gpu``: is a GPU ready for the sweep? SD v1.5-shaped figures, measured.

On a CUDA machine, with models built from SD v1.5's configs with seeded random weights
(:func:`benchmarks.throughput.build_sd15_shaped`: UNet block_out_channels (320, 640, 1280,
1280), cross_attention_dim 768, layers_per_block 2, attention_head_dim 8; VAE (128, 256, 512,
512); CLIP text encoder 768 wide, 12 layers; throughput does not depend on the weights, and
nothing is downloaded) at ``sweeps/hyundai.yaml``'s settings (512 px, fp16 frozen weights,
batch 1 x 4 accumulation, 30 DPM-Solver steps with guidance 7.5, a batch of 8 images), it
measures with the trial's own code:

1. **training** samples/s, fused vs sequential accumulation
   (:class:`trials.train.probe.TrainStep`: the trial's Accumulator, clipping and AdamW on random
   latents), in alternating chunks; and the UNet forward alone on the same samples, so the cost
   of a training sample in forward passes (the forecast's 3, :mod:`hpo.sweep.cost`) is measured;
2. **evaluation** images/s: the trial's pipeline (LoRA attached) drawing one batch, eager, with
   ``channels_last`` and with ``torch.compile`` (:func:`trials.eval.fast_eval.cuda_speedups`,
   the sweep's opt-in settings), each first call (compilation) timed apart;
3. **CLIP scoring** images/s: open_clip ViT-H-14 built from its config with random weights,
   fp32 (the default) and fp16 (``eval.clip_fp16``), preprocessing of 512 px images included;
4. **two trials per GPU vs one**: fused training in one process, then in two processes that
   start together (``resources.gpu_per_trial: 0.5``); the total samples/s of both.

Each measurement is capped at ``--seconds`` (default 15) after its warm-up, and the command at
``--budget`` seconds (default 420) by skipping what no longer fits (``torch.compile``, the
slowest, comes last); on one H200 it should take about 5 minutes. The figures go to
``benchmarks/results.json`` under ``gpu``, with the GPU's name (``torch.cuda.get_device_name``),
the date and the commit, after each section, so an interrupted run keeps what it measured.
``python -m hpo.run --dry-run`` forecasts with them on a GPU of the same name.

Without CUDA the command refuses, unless ``--tiny`` or ``--cpu`` asks for the same code on the
tiny model at 32 px (what the tests run): it prints the figures and writes them only to
``--results FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import HYUNDAI_SWEEP, REPO, RESULTS, git_commit, median, write_sweep

SD15_MODEL = "sd15"


@dataclass(frozen=True)
class Shapes:
    label: str
    model: str  # SD15_MODEL (built here from SD v1.5's configs) or "tiny"
    resolution: int
    inference_steps: int
    eval_batch: int
    clip_model: str
    seconds: float  # default cap of each measurement


SD15 = Shapes("SD v1.5 shapes (random weights), 512 px", SD15_MODEL, 512, 30, 8, "ViT-H-14", 15.0)
TINY = Shapes("tiny model (random weights), 32 px", "tiny", 32, 2, 4, "tiny", 0.3)


def write_config(work: Path, shapes: Shapes) -> Path:
    """``sweeps/hyundai.yaml`` at ``shapes`` in ``work``, its model built there (SD v1.5 from
    its configs), scored by ``shapes.clip_model`` with random weights."""
    from benchmarks.throughput import build_sd15_shaped

    model = shapes.model
    if model == SD15_MODEL:
        model = str(build_sd15_shaped(work / "sd15", work / "cache"))
    return write_sweep(work, HYUNDAI_SWEEP, name="gpu.yaml", overrides={
        "model": {"name": model}, "data": {"resolution": shapes.resolution},
        "eval": {"inference_steps": shapes.inference_steps, "batch_size": shapes.eval_batch,
                 "clip_model": shapes.clip_model, "clip_pretrained": None}})


def load_config(sweep_file: Path):
    """The sweep and the trial config (``benchmarks.throughput.PARAMS``) of a written file."""
    from benchmarks.throughput import PARAMS
    from hpo.sweep.spec import load_sweep

    sweep = load_sweep(sweep_file)
    config = sweep.trial_config({**PARAMS, "max_train_steps": sweep.max_steps},
                                output_dir=sweep_file.parent / "trial",
                                cache_dir=sweep_file.parent / "cache")
    return sweep, config


def _peak_mb(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def measure_train(step, seconds: float, device) -> dict[str, Any]:
    """Fused vs sequential samples/s in alternating chunks, and the forward pass alone."""
    from trials.train.probe import timed

    rates: dict[bool, list[float]] = {True: [], False: []}
    for fused in (True, False):  # warm-up of each shape of batch
        step.accumulator.fused = fused
        step()
    for _ in range(3):
        for fused in (True, False):
            step.accumulator.fused = fused
            rates[fused].append(step.samples / timed(step, seconds / 7, device)[0])
    step.accumulator.fused = True
    step.forward_only()
    forward = step.samples / timed(step.forward_only, seconds / 7, device)[0]
    fused, sequential = median(rates[True]), median(rates[False])
    return {"fused_samples_per_second": fused, "sequential_samples_per_second": sequential,
            "fused_vs_sequential": fused / sequential, "forward_samples_per_second": forward,
            "train_sample_in_forward_passes": forward / fused, "peak_memory_mb": _peak_mb(device)}


def measure_eval(pipe, config, modes: list[str], seconds: float, device) -> dict[str, Any]:
    """Images/s of drawing one batch of ``eval.batch_size`` prompts in each mode."""
    from trials.eval.fast_eval import PromptEmbeddings, cuda_speedups
    from trials.eval.score import generate_images
    from trials.train.probe import timed

    e = config.eval
    prompts = list((e.prompt_list * e.batch_size)[:e.batch_size])
    embeddings = PromptEmbeddings()
    pipe.unet.eval()  # as a rung draws

    def draw() -> None:
        generate_images(pipe, prompts, 1, e.inference_steps, e.guidance_scale, e.seed,
                        config.data.resolution, batch_size=len(prompts),
                        prompt_embeddings=embeddings)

    out: dict[str, Any] = {"batch": len(prompts), "inference_steps": e.inference_steps,
                           "guidance_scale": e.guidance_scale,
                           "cuda_settings_applied": device.type == "cuda"}
    settings = {"eager": (False, False), "channels_last": (True, False), "compile": (False, True)}
    for mode in modes:
        with cuda_speedups(pipe, *settings[mode]):
            started = time.perf_counter()
            draw()  # warm-up; torch.compile compiles here
            out[f"{mode}_first_call_seconds"] = time.perf_counter() - started
            out[f"{mode}_images_per_second"] = len(prompts) / timed(draw, seconds, device)[0]
    return out


def measure_clip(shapes: Shapes, cache: Path, seconds: float, device) -> dict[str, Any]:
    """Images/s of CLIP image embedding (preprocessing included), per precision."""
    import numpy as np
    import torch
    from PIL import Image

    from trials.eval.score import ClipScorer
    from trials.train.probe import timed

    rng = np.random.default_rng(0)
    side = shapes.resolution
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
              for _ in range(32)]
    out: dict[str, Any] = {"model": f"{shapes.clip_model} (random weights)",
                           "images_per_call": len(images)}
    for precision in ("fp32", "fp16") if device.type == "cuda" else ("fp32",):
        try:  # fp16 is the opt-in eval.clip_fp16: its failure must not lose the fp32 figure
            scorer = ClipScorer(shapes.clip_model, None, device=device, cache_dir=cache,
                                precision=precision)
            scorer.embed_images(images[:2])  # warm-up
            out[f"{precision}_images_per_second"] = len(images) / timed(
                lambda s=scorer: s.embed_images(images), seconds / 2, device)[0]
        except Exception as err:
            if precision == "fp32":
                raise
            out[f"{precision}_error"] = f"{type(err).__name__}: {err}"[:500]
        scorer = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _read_line(proc: subprocess.Popen, timeout: float, errors: Path) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"a training worker gave no answer: {errors.read_text()[-2000:]}")
    return line


def run_workers(n: int, sweep_file: Path, seconds: float, cpu: bool,
                timeout: float = 300.0) -> list[dict[str, Any]]:
    """``n`` worker processes, each training (fused) for ``seconds`` once all are ready."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "benchmarks.gpu", "--worker", str(sweep_file),
               "--seconds", str(seconds), *(["--cpu"] if cpu else [])]
    logs = [sweep_file.parent / f"worker-{n}-{i}.log" for i in range(n)]
    procs = [subprocess.Popen(command, cwd=REPO, env=env, text=True, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=log.open("w")) for log in logs]
    try:
        for proc, log in zip(procs, logs, strict=True):
            assert _read_line(proc, timeout, log).strip() == "ready"
        for proc in procs:  # all loaded and warm: start together
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return [json.loads(_read_line(proc, timeout, log)) for proc, log in
                zip(procs, logs, strict=True)]
    finally:
        for proc in procs:
            proc.wait(timeout=60)


def measure_sharing(sweep_file: Path, seconds: float, cpu: bool) -> dict[str, Any]:
    one = run_workers(1, sweep_file, seconds, cpu)[0]
    two = run_workers(2, sweep_file, seconds, cpu)
    total = sum(w["samples_per_second"] for w in two)
    return {"one_process_samples_per_second": one["samples_per_second"],
            "two_processes_samples_per_second": [w["samples_per_second"] for w in two],
            "two_processes_total": total, "two_vs_one": total / one["samples_per_second"],
            "peak_memory_mb": [one["peak_memory_mb"], *(w["peak_memory_mb"] for w in two)]}


def worker(sweep_file: Path, seconds: float, device) -> int:
    """One training process of :func:`run_workers`: loads, warms up, says ``ready``, waits for
    ``go``, trains for ``seconds`` and prints its samples/s as JSON."""
    import torch

    from trials.models.components import load_components
    from trials.train.loop import weight_dtype_for
    from trials.train.probe import TrainStep, timed

    if device.type == "cpu":
        torch.set_num_threads(1)
    _, config = load_config(sweep_file)
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    parts = load_components(config.model.name, cache_dir=config.cache_dir, device=device,
                            weight_dtype=dtype)
    step = TrainStep(parts, config, device, dtype)
    step.accumulator.fused = True
    step()
    print("ready", flush=True)
    sys.stdin.readline()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    mean, steps = timed(step, seconds, device)
    print(json.dumps({"samples_per_second": step.samples / mean, "steps": steps,
                      "peak_memory_mb": _peak_mb(device)}), flush=True)
    return 0


def write(section: dict[str, Any], path: Path | None) -> None:
    """Put ``section`` under ``gpu`` in the results file at ``path`` (None: nowhere)."""
    if path is None:
        return
    current = json.loads(path.read_text()) if path.is_file() else {}
    current["gpu"] = section
    path.write_text(json.dumps(current, indent=2, default=str) + "\n")


def measure(shapes: Shapes, device, seconds: float, budget: float, results: Path | None,
            work: Path) -> dict[str, Any]:
    """Every section in turn, within ``budget`` seconds; ``results`` rewritten after each."""
    import torch

    from hpo.sweep import cost
    from trials.models.components import load_components, make_pipeline
    from trials.train.loop import weight_dtype_for
    from trials.train.probe import TrainStep

    started = time.perf_counter()
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)  # as a CPU trial of 1 CPU; and as the workers run
    section: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "model": shapes.model, "shapes": shapes.label, "date": time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime()), "git_commit": git_commit(),
        "torch": torch.__version__, "seconds_per_measurement": seconds, "budget_seconds": budget,
        "skipped": {}, "errors": {}}
    sweep_file = write_config(work, shapes)
    sweep, config = load_config(sweep_file)
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    section["precision"] = str(dtype).removeprefix("torch.")
    parts = load_components(config.model.name, cache_dir=config.cache_dir, device=device,
                            weight_dtype=dtype)
    step = TrainStep(parts, config, device, dtype)
    pipe = make_pipeline(parts, device, dtype)
    t = config.train
    section["train_batch"] = f"{t.train_batch_size} x {t.gradient_accumulation_steps}"
    # name -> (what it runs, the least time it needs to fit, seconds)
    plan: list[tuple[str, Callable[[], dict[str, Any]], float]] = [
        ("train", lambda: measure_train(step, seconds, device), 2 * seconds),
        ("eval", lambda: measure_eval(pipe, config, ["eager", "channels_last"], seconds,
                                      device), 3 * seconds),
        ("clip", lambda: measure_clip(shapes, work / "cache", seconds, device), 2 * seconds),
        ("two_per_gpu", lambda: measure_sharing(sweep_file, seconds, not cuda), 4 * seconds),
        ("compile", lambda: measure_eval(pipe, config, ["compile"], seconds, device),
         (12 if cuda else 1) * seconds)]
    for name, run, needs in plan:
        left = budget - (time.perf_counter() - started)
        if left < needs:
            section["skipped"][name] = f"{left:.0f} s of the budget left, {needs:.0f} s needed"
            continue
        try:
            section[name] = run()
        except Exception as err:  # one failed measurement must not lose the others
            section["errors"][name] = f"{type(err).__name__}: {err}"[:2000]
        if name in ("train", "eval", "clip"):
            section.update(forecast_rates(section, cost.passes_per_image(sweep)))
        section["elapsed_seconds"] = time.perf_counter() - started
        write(section, results)
    section["elapsed_seconds"] = time.perf_counter() - started
    write(section, results)
    return section


def forecast_rates(section: dict[str, Any], passes_per_image: float) -> dict[str, float]:
    """What ``hpo.run --dry-run`` reads: UNet sample-passes/s while training (fused samples/s x
    the forecast's passes per sample) and while evaluating (eager drawing then fp32 CLIP
    scoring of each image, at the forecast's passes per image)."""
    from hpo.sweep.cost import TRAIN_PASSES_PER_SAMPLE

    train, draw, clip = section.get("train"), section.get("eval"), section.get("clip")
    if not (train and draw and clip):
        return {}
    seconds_per_image = (1 / draw["eager_images_per_second"]
                         + 1 / clip["fp32_images_per_second"])
    return {"train_passes_per_second": train["fused_samples_per_second"]
            * TRAIN_PASSES_PER_SAMPLE,
            "eval_passes_per_second": passes_per_image / seconds_per_image}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny model at 32 px (on CUDA if there is one): a check of the "
                             "command, not a measurement")
    parser.add_argument("--cpu", action="store_true", help="on the CPU, at --tiny shapes")
    parser.add_argument("--seconds", type=float, default=None,
                        help="cap of each measurement after its warm-up (default: 15; tiny 0.3)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="the whole command's seconds; what no longer fits is skipped")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"results file (default: {RESULTS.relative_to(REPO)} at SD v1.5 "
                             "shapes on CUDA; not written at --tiny shapes)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    if args.worker is not None:
        return worker(args.worker, args.seconds or 1.0, device)
    if not cuda and not (args.tiny or args.cpu):
        print("error: benchmarks.gpu measures SD v1.5 shapes on a CUDA GPU, and this machine "
              "has none (torch.cuda.is_available() is False); run it on the GPU machine, or "
              "pass --tiny to check the command here on the tiny model", file=sys.stderr)
        return 2
    shapes = TINY if args.tiny or args.cpu else SD15
    results = args.results or (RESULTS if shapes is SD15 else None)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        section = measure(shapes, device, args.seconds or shapes.seconds, args.budget, results,
                          Path(tmp))
    print(json.dumps(section, indent=2, default=str))
    return 1 if section["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
