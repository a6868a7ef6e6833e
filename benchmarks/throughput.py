"""Trainer throughput: our trial loop against the reference script's loop, same everything else.

Two trainers are built side by side from the same seed, on the same model, data and LoRA:

- *ours* runs the loop body of :func:`trials.train.loop.run_trial`: ``batch_inputs`` reads the VAE
  latent distribution and the text embedding from the shared cache and draws
  ``mean + std * noise`` (what ``latent_dist.sample()`` does);
- *reference* does what ``train_text_to_image_lora.py`` does every micro-step, built from the
  project's own pieces: decode and transform the images (``load_rgb``/``preprocess``), tokenize
  the captions, run the VAE (``latent_dist.sample()``) and the text encoder, no cache.

Everything after the inputs is the same call in both (``diffusion_loss``, backward through the
GradScaler, ``clip_gradients``, the LR schedule) except the AdamW update: ours is fused over all
LoRA tensors (``make_optimizer``), the reference's is PyTorch's default, as in the script. So
the measured difference is the per-step frozen work plus the optimizer update, nothing else.
Model loading is outside every timer.

The machine is shared and noisy, so the two trainers run in alternating chunks of a few steps
(ours, reference, reference, ours, ...), each keeping its own torch and Python RNG state, and
every figure is a median over chunks; the first chunk of each is a warm-up and is left out. The
ratio is the median of the per-chunk-pair ratios. Torch uses as many threads as a trial gets
(``resources.cpu_per_trial``: Ray sets ``OMP_NUM_THREADS`` to it in trial workers).

As a cross-check, ``run_trial`` itself is run once for the same number of steps, and its own
``samples_per_second`` (its timer around the training steps) is reported beside.

The one-off cache build (VAE + text encoder over the training set: once per sweep, shared by
every trial) is timed into a fresh folder, so the total time of ours for N steps
(cache build + training) can be stated beside the steady-state rate.

On a CUDA machine :func:`measure_sd15` runs the same comparison at SD v1.5 shapes (512 px,
fp16 frozen weights, batch 1 x 4 accumulation, like ``sweeps/hyundai.yaml``) on a model with
SD v1.5's architecture and random weights (throughput does not depend on the weights; no hub
access needed), or on a real model folder if one is given.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler

from benchmarks.common import HYUNDAI_SWEEP, TINY_SWEEP, median, write_sweep
from trials.config import TrialConfig
from trials.data.folder import load_examples, load_rgb, preprocess
from trials.data.synthetic import make_car_dataset
from trials.models.components import load_components, resolve_model_path
from trials.models.lora import attach_lora
from trials.train import cache
from trials.train.loop import (
    TrialDiverged,
    batch_inputs,
    clip_gradients,
    diffusion_loss,
    make_batch_sampler,
    make_optimizer,
    pick_device,
    run_trial,
    weight_dtype_for,
)

# The LoRA both loops train: the reference script's modules (attn1 + attn2), alpha = rank.
PARAMS = {"rank": 4, "lora_alpha": "rank", "learning_rate": 1e-4, "target_modules": "attn"}


@dataclass(frozen=True)
class ThroughputResult:
    setting: str
    device: str
    shape: str  # resolution, batch, precision in words
    chunk_steps: int
    samples_per_step: int
    threads: int
    ours: list[float] = field(default_factory=list)  # wall seconds per chunk (no warm-up)
    reference: list[float] = field(default_factory=list)
    ours_cpu: list[float] = field(default_factory=list)  # process CPU seconds per chunk
    reference_cpu: list[float] = field(default_factory=list)
    warmup: tuple[float, float] = (0.0, 0.0)  # first chunk of each: ours, reference
    cache_build: list[float] = field(default_factory=list)
    run_trial_sps: float | None = None  # run_trial's own samples_per_second, one run
    note: str = ""

    @property
    def measured(self) -> bool:
        return bool(self.ours and self.reference)

    @property
    def chunk_samples(self) -> int:
        return self.chunk_steps * self.samples_per_step

    @property
    def ours_sps(self) -> float:
        return median([self.chunk_samples / s for s in self.ours])

    @property
    def reference_sps(self) -> float:
        return median([self.chunk_samples / s for s in self.reference])

    @property
    def pair_ratios(self) -> list[float]:
        """Ours / reference samples/s for each chunk pair (run back to back)."""
        return [r / o for o, r in zip(self.ours, self.reference, strict=True)]

    @property
    def ratio(self) -> float:
        return median(self.pair_ratios) if self.measured else float("nan")

    @property
    def cpu_ratio(self) -> float:
        """Median per-pair ratio on process CPU time: less sensitive to a busy machine."""
        if not (self.ours_cpu and self.reference_cpu):
            return float("nan")
        return median([r / o for o, r in zip(self.ours_cpu, self.reference_cpu, strict=True)])

    @property
    def steps(self) -> int:
        """Steps each trainer ran, warm-up chunk included."""
        return (len(self.ours) + 1) * self.chunk_steps

    @property
    def cache_build_seconds(self) -> float:
        return median(self.cache_build)

    @property
    def ours_total(self) -> float:
        """Cache build + every chunk (warm-up included) of ours."""
        return self.cache_build_seconds + self.warmup[0] + sum(self.ours)

    @property
    def reference_total(self) -> float:
        return self.warmup[1] + sum(self.reference)

    @property
    def break_even_steps(self) -> float:
        """Steps after which the cache build has paid for itself."""
        saved = (1 / self.reference_sps - 1 / self.ours_sps) * self.samples_per_step
        return self.cache_build_seconds / saved if saved > 0 else float("inf")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_inputs(indices, examples, config: TrialConfig, components, rng: random.Random,
                     device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch the reference way: decode, transform, tokenize, VAE- and text-encode."""
    data = config.data
    flips = [data.random_flip and rng.random() < 0.5 for _ in indices]
    captions = [rng.choice(examples[i].captions) for i in indices]
    pixels = torch.stack([
        preprocess(load_rgb(examples[i].path), data.resolution, center_crop=data.center_crop,
                   flip=f, rng=rng)
        for i, f in zip(indices, flips, strict=True)
    ]).to(device, dtype)
    tokenizer = components.tokenizer
    ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length",
                    truncation=True, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():  # the frozen nets get no gradients in the reference either
        latents = components.vae.encode(pixels).latent_dist.sample()
        text = components.text_encoder(ids, return_dict=False)[0]
    return latents * components.vae.config.scaling_factor, text


class Trainer:
    """One LoRA training loop, ours (``cached=True``) or the reference's, run chunk by chunk.

    Set up like ``run_trial`` (seed, model, LoRA, AdamW, schedule, scaler, batch order); it
    keeps its own RNG states, so interleaving two trainers does not mix their random streams.
    """

    def __init__(self, config: TrialConfig, cached: bool, total_steps: int) -> None:
        self.config = config
        self.cached = cached
        self.device = device = pick_device()
        self.dtype = dtype = weight_dtype_for(config.train.mixed_precision, device)
        train_cfg, params = config.train, config.params
        with self._own_rng(seed=train_cfg.seed):
            self.rng = random.Random(train_cfg.seed)
            self.components = load_components(
                config.model.name, revision=config.model.revision,
                variant=config.model.variant, cache_dir=config.cache_dir, device=device,
                weight_dtype=dtype)
            if train_cfg.prediction_type:
                self.components.noise_scheduler.register_to_config(
                    prediction_type=train_cfg.prediction_type)
            self.examples = load_examples(config.data.train_dir, config.data.caption_column)
            self.data = cache.load_or_build(
                self.examples, config.model, config.data, self.components, config.cache_dir,
                device, dtype) if cached else None
            self.unet = self.components.unet
            self.trainable = attach_lora(self.unet, params)
            if train_cfg.gradient_checkpointing:
                self.unet.enable_gradient_checkpointing()
            # Ours updates all LoRA tensors in one fused step; the reference uses the default.
            self.optimizer = make_optimizer(self.trainable, params.learning_rate) if cached \
                else torch.optim.AdamW(self.trainable, lr=params.learning_rate,
                                       betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
            self.lr_scheduler = get_scheduler(
                train_cfg.lr_scheduler, optimizer=self.optimizer,
                num_warmup_steps=train_cfg.lr_warmup_steps, num_training_steps=total_steps)
            self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            self.batches = make_batch_sampler(len(self.examples), train_cfg.train_batch_size,
                                              self.rng)
        self.unet.train()
        self.step = 0

    @contextmanager
    def _own_rng(self, seed: int | None = None) -> Iterator[None]:
        """Run with this trainer's torch RNG state (seeded the first time)."""
        cuda = self.device.type == "cuda"
        outer = torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None
        if seed is not None:
            torch.manual_seed(seed)
        else:
            torch.set_rng_state(self._cpu_state)
            if cuda:
                torch.cuda.set_rng_state(self._cuda_state)
        try:
            yield
        finally:
            self._cpu_state = torch.get_rng_state()
            self._cuda_state = torch.cuda.get_rng_state() if cuda else None
            torch.set_rng_state(outer[0])
            if cuda:
                torch.cuda.set_rng_state(outer[1])

    def _inputs(self, indices):
        if self.data is not None:
            return batch_inputs(indices, self.data, self.config, self.components, self.rng,
                                self.device, self.dtype)
        return reference_inputs(indices, self.examples, self.config, self.components, self.rng,
                                self.device, self.dtype)

    def run(self, steps: int) -> tuple[float, float]:
        """Train ``steps`` optimizer steps; returns their wall and process CPU seconds."""
        train_cfg = self.config.train
        accum = train_cfg.gradient_accumulation_steps
        with self._own_rng():
            _sync(self.device)
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(steps):
                self.step += 1
                for _ in range(accum):
                    latents, text = self._inputs(next(self.batches))
                    with torch.autocast(self.device.type, dtype=self.dtype,
                                        enabled=self.dtype != torch.float32):
                        loss = diffusion_loss(self.unet, self.components.noise_scheduler,
                                              latents, text, self.config)
                    if not math.isfinite(loss.item()):
                        raise TrialDiverged(self.step, loss.item())
                    self.scaler.scale(loss / accum).backward()
                self.scaler.unscale_(self.optimizer)
                clip_gradients(self.trainable, train_cfg.max_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            _sync(self.device)
            return time.perf_counter() - started, time.process_time() - cpu_started


def time_cache_build(config: TrialConfig) -> float:
    """Seconds to build the latent/text cache from scratch (fresh folder; model load excluded)."""
    device = pick_device()
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    components = load_components(
        config.model.name, revision=config.model.revision, variant=config.model.variant,
        cache_dir=config.cache_dir, device=device, weight_dtype=dtype)
    examples = load_examples(config.data.train_dir, config.data.caption_column)
    with tempfile.TemporaryDirectory(prefix="cache-build-") as fresh:
        _sync(device)
        started = time.perf_counter()
        data = cache.load_or_build(examples, config.model, config.data, components, Path(fresh),
                                   device, dtype)
        _sync(device)
        seconds = time.perf_counter() - started
    assert not data.cache_hit
    return seconds


def run_trial_samples_per_second(config: TrialConfig, steps: int) -> float:
    """``run_trial``'s own samples/s over ``steps`` steps (one scoring rung, at the end)."""
    config = replace(config, params=replace(config.params, max_train_steps=steps),
                     eval=replace(config.eval, every_steps=steps))
    return float(run_trial(config, lambda *_: False).rungs[-1].samples_per_second)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compare(config: TrialConfig, chunk_steps: int, chunks: int, setting: str, shape: str,
            threads: int, build_repeats: int = 3, cross_check: bool = True) -> ThroughputResult:
    """Both trainers in ``chunks`` alternating chunks of ``chunk_steps`` steps (+1 warm-up)."""
    total = (chunks + 1) * chunk_steps
    with torch_threads(threads):
        # The shared cache is built here, outside every timer, so ours reads it warm.
        ours = Trainer(config, cached=True, total_steps=total)
        reference = Trainer(config, cached=False, total_steps=total)
        warmup = (ours.run(chunk_steps)[0], reference.run(chunk_steps)[0])
        times: dict[str, list[tuple[float, float]]] = {"ours": [], "reference": []}
        for i in range(chunks):
            pair = (ours, reference) if i % 2 == 0 else (reference, ours)
            for trainer in pair:
                times["ours" if trainer.cached else "reference"].append(trainer.run(chunk_steps))
        del ours, reference
        builds = [time_cache_build(config) for _ in range(build_repeats)]
        sps = run_trial_samples_per_second(config, total) if cross_check else None
    t = config.train
    return ThroughputResult(
        setting, pick_device().type, shape, chunk_steps,
        t.train_batch_size * t.gradient_accumulation_steps, threads,
        [w for w, _ in times["ours"]], [w for w, _ in times["reference"]],
        [c for _, c in times["ours"]], [c for _, c in times["reference"]], warmup, builds, sps)


def _small_eval(config: TrialConfig, inference_steps: int = 2) -> TrialConfig:
    """Score cheaply at run_trial's one rung (outside its timer, but it costs wall time)."""
    return replace(config, eval=replace(config.eval, prompt_list=config.eval.prompt_list[:1],
                                        images_per_prompt=1, inference_steps=inference_steps))


def tiny_config(work: Path) -> tuple[TrialConfig, int]:
    """``sweeps/tiny.yaml``'s model, data and train settings with the LoRA in :data:`PARAMS`;
    also the sweep's ``cpu_per_trial``."""
    from hpo.sweep.spec import load_sweep

    work = Path(work)
    file = write_sweep(work, TINY_SWEEP, name="throughput.yaml")
    sweep = load_sweep(file)
    synthetic = sweep.data.synthetic
    assert synthetic is not None
    make_car_dataset(sweep.data.train_dir, synthetic.n_images, synthetic.size, synthetic.seed)
    config = sweep.trial_config({**PARAMS, "max_train_steps": 1}, output_dir=work / "trial",
                                cache_dir=work / "cache")
    return _small_eval(config), max(1, math.ceil(sweep.resources.cpu_per_trial))


def _shape(config: TrialConfig) -> str:
    t = config.train
    dtype = weight_dtype_for(t.mixed_precision, pick_device())
    return (f"{config.data.resolution} px, batch {t.train_batch_size} x "
            f"{t.gradient_accumulation_steps} accumulation, frozen weights "
            f"{str(dtype).removeprefix('torch.')}")


def measure_tiny(work: Path, chunk_steps: int = 10, chunks: int = 6,
                 cross_check: bool = True) -> ThroughputResult:
    """The tiny model on this machine's device, at ``sweeps/tiny.yaml``'s settings."""
    config, threads = tiny_config(work)
    device = pick_device().type
    return compare(config, chunk_steps, chunks, f"tiny model (sweeps/tiny.yaml), {device}",
                   _shape(config), threads, cross_check=cross_check)


# SD v1.5's architecture (its unet/vae/text_encoder config.json), for random-weight builds.
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
SD15_VAE = {
    "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
}
SD15_TEXT = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
}


def build_sd15_shaped(folder: Path, cache_dir: Path, dtype: torch.dtype = torch.float16) -> Path:
    """A diffusers folder with SD v1.5's architecture and seeded random weights.

    The tokenizer (the real CLIP vocabulary) and the noise scheduler (SD v1.5's) are copied
    from the tiny model, which is built offline.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = Path(resolve_model_path("tiny", cache_dir))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(tiny / sub, folder / sub, dirs_exist_ok=True)
    shutil.copyfile(tiny / "model_index.json", folder / "model_index.json")
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting before saving is intended here
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UNet2DConditionModel(**SD15_UNET).to(dtype).save_pretrained(folder / "unet")
        AutoencoderKL(**SD15_VAE).to(dtype).save_pretrained(folder / "vae")
        CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).to(dtype).save_pretrained(
            folder / "text_encoder")
    diffusers_logging.set_verbosity(level)
    return folder


def sd15_config(work: Path, model: str | None = None, resolution: int = 512,
                n_images: int = 12) -> tuple[TrialConfig, int]:
    """``sweeps/hyundai.yaml``'s train settings on drawn cars at ``resolution`` px."""
    from hpo.sweep.spec import load_sweep

    work = Path(work)
    if model is None:
        model = str(build_sd15_shaped(work / "sd15-random", work / "cache"))
    file = write_sweep(work, HYUNDAI_SWEEP, name="throughput-sd15.yaml", overrides={
        "model": {"name": model},
        "data": {"resolution": resolution},
        "eval": {"clip_model": "tiny", "clip_pretrained": None,
                 "prompts": str(TINY_SWEEP.parent / "prompts" / "tiny_heldout.txt")},
    })
    sweep = load_sweep(file)
    make_car_dataset(sweep.data.train_dir, n_images=n_images, size=resolution, seed=0)
    config = sweep.trial_config({**PARAMS, "max_train_steps": 1}, output_dir=work / "trial",
                                cache_dir=work / "cache")
    return _small_eval(config), max(1, math.ceil(sweep.resources.cpu_per_trial))


def measure_sd15(work: Path, chunk_steps: int = 10, chunks: int = 6, model: str | None = None,
                 resolution: int = 512, force: bool = False) -> ThroughputResult:
    """SD v1.5 shapes (512 px, fp16) on a GPU; "not measured" without one (unless ``force``)."""
    setting = "SD v1.5 shapes (UNet 860M params, random weights), GPU"
    if not torch.cuda.is_available() and not force:
        return ThroughputResult(setting, "none", "512 px, batch 1 x 4 accumulation, fp16 frozen "
                                "weights", chunk_steps, 4, 0, note="not measured: no GPU")
    config, threads = sd15_config(work, model, resolution)
    result = compare(config, chunk_steps, chunks, setting, _shape(config), threads)
    if torch.cuda.is_available():
        result = replace(result, device=torch.cuda.get_device_name(0))
    return result
