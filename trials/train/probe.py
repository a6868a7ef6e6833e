"""A trial's unit costs in a few seconds: one optimizer step and one rung image, timed here.

The sweep's cost forecast (``hpo.forecast``) counts work in UNet sample-passes; turning passes into
seconds on a CPU needs this machine's rate, and no published figure fits a CPU. So this module
times, with the trial's own code, at the config's shapes:

- **an optimizer step**: ``gradient_accumulation_steps`` micro-batches of ``train_batch_size``
  random latents and caption embeddings (the shapes the cache would give), each with the twin
  the config's preservation remedy adds (``prior``: a class batch; ``dop``: the base model's
  prediction on other captions), through the :class:`~trials.train.accumulate.Accumulator`
  (fused or not, as the config says), the LoRA of ``config.params`` attached, then clipping
  and the fused AdamW update;
- **a rung image**: one batch of ``eval.batch_size`` images drawn by the trial's
  :class:`~trials.eval.evaluator.Evaluator` (its pipeline, sampler steps, guidance, prompt
  embeddings kept, CLIP scoring and the image grid) on the first prompts.

Each is run once to warm up (lazy initialisation, the prompts' embeddings), then timed until
``budget / 2`` seconds have passed (at least once); the median run counts. Nothing is
written outside a temporary folder, and nothing is kept: the caller drops the model with the
result.

What it leaves out: reading the latent cache (``batch_inputs``, a gather), saving the LoRA at a
rung, a rung's last partial batch, and held-out fidelity scoring (DINOv2), which only add.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from trials.config import TINY_MODEL, PreservationSpec, TrialConfig
from trials.eval import evaluator as evaluation
from trials.eval.score import TINY_CLIP, TINY_CLIP_ARCH, TOYWORLD, ClipScorer
from trials.models.components import SDComponents, load_components
from trials.models.lora import attach_lora
from trials.train import accumulate, preserve
from trials.train.loop import clip_gradients, make_optimizer, weight_dtype_for


@dataclass(frozen=True)
class UnitTimes:
    """Seconds per optimizer step and per rung image, as timed by :func:`measure`."""

    seconds_per_step: float  # one optimizer step: forward + backward of all micro-batches
    seconds_per_image: float  # one rung image: every sampler step, VAE decode, CLIP score
    steps: int  # steps timed (after one warm-up step)
    images: int  # images timed (after one warm-up batch)
    threads: int  # torch threads used
    device: str
    seconds: float  # wall time of the whole measurement, model loading included


def not_local(config: TrialConfig) -> str | None:
    """Why :func:`measure` would have to download or build something first (None: it need
    not): the SD model must be the toy world, a built tiny model or a local folder; the
    CLIP scorer the toy world's, a built tiny one, random weights or a local checkpoint."""
    model, cache = config.model.name, Path(config.cache_dir)
    if model == TINY_MODEL and not (cache / "tiny-sd" / "unet").is_dir():
        return "the tiny model is built by the first trial"
    if model not in (TINY_MODEL, TOYWORLD) and not Path(model).expanduser().is_dir():
        return f"model {model} is not a local folder"
    clip, tag = config.eval.clip_model, config.eval.clip_pretrained
    if clip == TINY_CLIP and not (cache / TINY_CLIP_ARCH).is_dir():
        return "the tiny CLIP scorer is built by the first trial"
    if clip not in (TINY_CLIP, TOYWORLD) and tag is not None and not Path(tag).is_file():
        return f"CLIP {clip}/{tag} is not a local file"
    return None


def timed(run: Callable[[], object], budget: float, device: torch.device
          ) -> tuple[float, int]:
    """Median seconds of ``run`` over as many runs as fit ``budget`` seconds (at least one),
    waiting for the GPU's queued work at the end of each run; and how many runs. The median,
    not the mean: one run slowed by something else on the machine (a page fault, another
    process's burst) must not move a forecast that multiplies it by thousands."""
    spent, times = 0.0, []
    while not times or spent < budget:
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
        spent += times[-1]
    return statistics.median(times), len(times)


class TrainStep:
    """One optimizer step of ``config`` on random inputs at its shapes: ``gradient_accumulation_
    steps`` micro-batches of ``train_batch_size`` latents (``data.resolution`` over the VAE's
    downsampling) and caption embeddings (the tokenizer's length x the text encoder's width)
    through the trial's :class:`~trials.train.accumulate.Accumulator`, clipping and the fused
    AdamW update. Attaches the LoRA of ``config.params`` to ``parts.unet`` (once)."""

    def __init__(self, parts: SDComponents, config: TrialConfig, device: torch.device,
                 dtype: torch.dtype) -> None:
        t = self.train = config.train
        self.parts, self.device, self.dtype = parts, device, dtype
        self.trainable = attach_lora(parts.unet, config.params)
        self.optimizer = make_optimizer(self.trainable, config.params.learning_rate)
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        self.accumulator = accumulate.Accumulator(parts.unet, parts.noise_scheduler, t, device,
                                                  dtype, self.scaler.scale, t.fused_accumulation)
        side = config.data.resolution // 2 ** (len(parts.vae.config.block_out_channels) - 1)
        self.latent = (t.train_batch_size, parts.unet.config.in_channels, side, side)
        # The remedy the forecast's typical configuration trains with (its passes are timed).
        self.method, self.weight = config.preservation_method, config.preservation_weight
        self.text = (t.train_batch_size, parts.tokenizer.model_max_length,
                     parts.text_encoder.config.hidden_size)

    @property
    def samples(self) -> int:
        return self.train.train_batch_size * self.train.gradient_accumulation_steps

    def _noised(self) -> accumulate.NoisedBatch:
        return accumulate.add_noise(torch.randn(self.latent, device=self.device, dtype=self.dtype),
                                    torch.randn(self.text, device=self.device, dtype=self.dtype),
                                    self.parts.noise_scheduler, self.train)

    def batches(self) -> list[accumulate.NoisedBatch]:
        """The step's micro-batches, noised as the trial noises them, each with the twin its
        preservation remedy adds (``trials.train.loop``): ``dop``, the base model's prediction
        on other captions (``preserve.dop_batch``, run here); ``prior``, a class batch of the
        same shapes (random here: its cost does not depend on what the class images show)."""
        out = []
        for _ in range(self.train.gradient_accumulation_steps):
            batch = self._noised()
            out.append(batch)
            if self.method == "dop":
                text = torch.randn(self.text, device=self.device, dtype=self.dtype)
                out.append(preserve.dop_batch(batch, text, self.parts.unet, self.weight))
            elif self.method == "prior":
                out.append(replace(self._noised(), weight=self.weight, preservation=True))
        return out

    def __call__(self) -> None:
        self.parts.unet.train()
        self.accumulator.backward(self.batches(), 1)
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.trainable, self.train.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def forward_only(self) -> None:
        """The same samples through the UNet forward, as one batch, without gradients."""
        parts, batches = self.parts, self.batches()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype,
                                             enabled=self.dtype != torch.float32):
            parts.unet(torch.cat([b.noisy for b in batches]),
                       torch.cat([b.timesteps for b in batches]),
                       torch.cat([b.text for b in batches]), return_dict=False)


def measure(config: TrialConfig, device: torch.device, threads: int,
            budget: float = 2.0) -> UnitTimes:
    """Time one optimizer step and one rung image of ``config`` on ``device`` with ``threads``
    torch threads (restored afterwards), spending about ``budget`` seconds on the timing.

    Raises whatever loading the model raises (``not_local`` says beforehand when it would
    need a download or a build)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    started = time.perf_counter()
    before, bars = torch.get_num_threads(), transformers_logging.is_progress_bar_enabled()
    verbosity = diffusers_logging.get_verbosity()
    torch.set_num_threads(max(1, threads))
    transformers_logging.disable_progress_bar()  # no loading bar in the middle of a plan
    # The plan's own warning names a prompt longer than 77 tokens (hpo.plan.long_prompts);
    # the pipeline would repeat it, without file and line, for each batch the probe draws.
    diffusers_logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            step, n_steps, image, n_images = _measure(config, device, budget)
    finally:
        torch.set_num_threads(before)
        diffusers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
    return UnitTimes(step, image, n_steps, n_images, max(1, threads), device.type,
                     time.perf_counter() - started)


def _measure(config: TrialConfig, device: torch.device, budget: float
             ) -> tuple[float, int, float, int]:
    e = config.eval
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    parts = load_components(config.model.name, revision=config.model.revision,
                            variant=config.model.variant, cache_dir=config.cache_dir,
                            device=device, weight_dtype=dtype)
    step = TrainStep(parts, config, device, dtype)
    step()  # warm-up
    step_seconds, steps = timed(step, budget / 2, device)

    # One batch of rung images: the first prompts, enough of them for eval.batch_size images.
    n_prompts = max(1, math.ceil(e.batch_size / e.images_per_prompt))
    prompts = (e.prompt_list * n_prompts)[:n_prompts]
    # No control prompts either: an image costs the same whichever prompt it is drawn for.
    probe = replace(config, eval=replace(e, prompt_list=prompts, reference_dir=None),
                    data=replace(config.data, holdout=0), preservation=PreservationSpec())
    parts.unet.eval()
    scorer = ClipScorer(e.clip_model, e.clip_pretrained, device=device,
                        cache_dir=config.cache_dir,
                        precision=evaluation.scorer_precision(config, device))
    # CLIP-I needs reference image embeddings of the right width; any one row costs the same.
    ev = evaluation.Evaluator(probe, parts, [], device, dtype, scorer=scorer,
                              train_embeds=scorer.embed_texts(prompts[:1]))
    with tempfile.TemporaryDirectory(prefix="probe-") as folder:
        ev.score(Path(folder))  # warm-up: lazy initialisation, the prompts' embeddings
        rung_seconds, rungs = timed(lambda: ev.score(Path(folder)), budget / 2, device)
    per_rung = len(prompts) * e.images_per_prompt
    return step_seconds, steps, rung_seconds / per_rung, per_rung * rungs
