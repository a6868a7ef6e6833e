"""Evaluation cost: how much of a trial goes to drawing and CLIP-scoring the rung images.

At the sweep's own eval settings (``sweeps/tiny.yaml``: its prompts, images per prompt,
inference steps, guidance, batch size and CLIP scorer), one trial of a middle configuration
(rank 4, lr 3e-4, 30 steps, attn: rungs at 15 and 30) is run with ``run_trial``, in this
process, with as many torch threads as a trial gets (``resources.cpu_per_trial``). Its own
timers give the share: ``eval / (setup + train + eval)``, where eval is the rungs' LoRA
save, image generation, CLIP scoring and sample grid. Images/s = images drawn and scored /
eval seconds.

The split between generating (the diffusers pipeline, DPM-Solver++) and scoring (open_clip) is
timed separately on the base model with the trial's ``Evaluator``, once before each trial
(interleaved, so both see the same load). Building that evaluator first also builds the tiny
model and the latent cache, so the timed trials find both, as trials in a sweep do after the
baseline. The same share is also read from the demo sweep's trials when that ran
(:func:`sweep_share`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.common import TINY_SWEEP, TrialRecord, median, write_sweep
from benchmarks.throughput import torch_threads

PARAMS = {"rank": 4, "lora_alpha": "rank", "learning_rate": 3e-4, "max_train_steps": 30,
          "target_modules": "attn"}


@dataclass(frozen=True)
class EvalCost:
    prompts: int
    images_per_prompt: int
    inference_steps: int
    rungs: int
    threads: int
    shares: list[float]  # eval / (setup + train + eval), one per repeat
    images_per_second: list[float]  # whole rung evaluation (save + generate + score + grid)
    setup_seconds: list[float]
    train_seconds: list[float]
    eval_seconds: list[float]
    generate_ips: list[float]  # generation only
    score_ips: list[float]  # CLIP scoring only
    sweep_share: float | None = None  # median over the demo sweep's trials, when it ran

    @property
    def images_per_rung(self) -> int:
        return self.prompts * self.images_per_prompt

    @property
    def share(self) -> float:
        return median(self.shares)

    @property
    def ips(self) -> float:
        return median(self.images_per_second)


def sweep_share(records: list[TrialRecord]) -> float | None:
    """Median over a sweep's trials of eval / (setup + train + eval), from their user attrs."""
    shares = []
    for r in records:
        total = r.attr("setup_seconds") + r.attr("train_seconds") + r.attr("eval_seconds")
        if total > 0:
            shares.append(r.attr("eval_seconds") / total)
    return median(shares) if shares else None


def eval_config(work: Path, prompts: int | None = None):
    """The trial config of :data:`PARAMS` under ``sweeps/tiny.yaml`` (``prompts``: keep the
    first N prompts only, for tests); also the sweep's ``cpu_per_trial``."""
    from hpo.sweep.spec import load_sweep
    from trials.data.synthetic import ensure_dataset

    sweep = load_sweep(write_sweep(Path(work), TINY_SWEEP, name="eval-cost.yaml"))
    ensure_dataset(sweep.data)
    config = sweep.trial_config(PARAMS, output_dir=Path(work) / "trial",
                                cache_dir=Path(work) / "cache")
    if prompts is not None:
        config = replace(config, eval=replace(config.eval,
                                              prompt_list=config.eval.prompt_list[:prompts]))
    return config, max(1, math.ceil(sweep.resources.cpu_per_trial))


class SplitTimer:
    """Times generation alone and CLIP scoring alone, on the base model, with a trial's
    ``Evaluator``. Building it also builds the tiny model and the shared latent cache (as the
    sweep's baseline does), so the trials timed after it find both."""

    def __init__(self, config) -> None:
        from trials.data.folder import load_examples
        from trials.eval import evaluator as evaluation
        from trials.models.components import load_components
        from trials.train import cache
        from trials.train.loop import pick_device, weight_dtype_for

        device = pick_device()
        dtype = weight_dtype_for(config.train.mixed_precision, device)
        components = load_components(config.model.name, cache_dir=config.cache_dir,
                                     device=device, weight_dtype=dtype)
        examples = load_examples(config.data.train_dir, config.data.caption_column)
        cache.load_or_build(examples, config.model, config.data, components, config.cache_dir,
                            device, dtype)
        self.evaluator = evaluation.Evaluator(config, components, examples, device, dtype)
        self.config = config.eval

    def once(self) -> tuple[float, float]:
        """Images/s of drawing every rung image, then of scoring them."""
        from trials.eval.score import generate_images

        ev, cfg = self.evaluator, self.config
        started = time.perf_counter()
        images = generate_images(ev.pipe, ev.prompts, cfg.images_per_prompt,
                                 cfg.inference_steps, cfg.guidance_scale, cfg.seed,
                                 ev.resolution, batch_size=cfg.batch_size)
        middle = time.perf_counter()
        ev.scorer.score(ev.prompts, images, ev.train_embeds)
        ended = time.perf_counter()
        n = len(ev.prompts) * cfg.images_per_prompt
        return n / (middle - started), n / (ended - middle)


def measure_eval_cost(work: Path, repeats: int = 3, prompts: int | None = None,
                      records: list[TrialRecord] | None = None) -> EvalCost:
    from trials.train.loop import run_trial

    config, threads = eval_config(work, prompts)
    rows: dict[str, list[float]] = {k: [] for k in ("share", "ips", "setup", "train", "eval")}
    n_images = len(config.eval.prompt_list) * config.eval.images_per_prompt
    gen, score = [], []
    with torch_threads(threads):
        split = SplitTimer(config)  # first: the model and the cache exist before any trial
        for i in range(repeats):
            # Interleaved with the trials, so both see the same load on a shared machine.
            g, sc = split.once()
            gen.append(g)
            score.append(sc)
            run = replace(config, output_dir=Path(work) / f"trial-{i}")
            rungs = run_trial(run, lambda *_: False).rungs
            last = rungs[-1]
            setup, train, ev = float(last.setup_seconds), last.train_seconds, last.eval_seconds
            rows["share"].append(ev / (setup + train + ev))
            rows["ips"].append(n_images * len(rungs) / ev)
            rows["setup"].append(setup)
            rows["train"].append(train)
            rows["eval"].append(ev)
    return EvalCost(
        prompts=len(config.eval.prompt_list), images_per_prompt=config.eval.images_per_prompt,
        inference_steps=config.eval.inference_steps, rungs=len(rungs), threads=threads,
        shares=rows["share"], images_per_second=rows["ips"], setup_seconds=rows["setup"],
        train_seconds=rows["train"], eval_seconds=rows["eval"], generate_ips=gen,
        score_ips=score, sweep_share=None if records is None else sweep_share(records))


def unet_seconds_per_rung(config, repeats: int = 3) -> float:
    """Seconds of the UNet forward passes alone of one rung at ``config``'s eval settings
    (median of ``repeats``): the same batches (``eval.batch_size`` images, doubled for
    classifier-free guidance), inference steps, latent and text shapes, with the trial's LoRA
    attached, on random inputs (the cost does not depend on the values)."""
    import torch

    from trials.models.lora import attach_lora
    from trials.train import warm
    from trials.train.loop import pick_device, weight_dtype_for

    device = pick_device()
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    e = config.eval
    images = len(e.prompt_list) * e.images_per_prompt
    guided = 2 if e.guidance_scale > 1 else 1
    with warm.kept_components(config, device, dtype) as parts:
        unet = parts.unet
        attach_lora(unet, config.params)
        unet.eval()
        factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        height = (e.height or config.data.resolution) // factor
        width = (e.width or config.data.resolution) // factor
        text_shape = (parts.tokenizer.model_max_length, parts.text_encoder.config.hidden_size)
        sizes = [min(e.batch_size, images - s) for s in range(0, images, e.batch_size)]

        def one_rung() -> float:
            started = time.perf_counter()
            with torch.no_grad():
                for n in sizes:
                    latents = torch.randn(guided * n, unet.config.in_channels, height, width,
                                          dtype=dtype, device=device)
                    text = torch.randn(guided * n, *text_shape, dtype=dtype, device=device)
                    for t in range(e.inference_steps):
                        unet(latents, 999 - t, encoder_hidden_states=text)
            return time.perf_counter() - started

        one_rung()  # warm-up
        return median([one_rung() for _ in range(repeats)])
