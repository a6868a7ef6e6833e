"""Trainer throughput: our trial loop against the reference script's loop, same everything else.

*Ours* is :func:`trials.train.run_trial` itself, unchanged: it reads the VAE latent
distributions and text embeddings from the shared cache and draws ``mean + std * noise`` each
micro-step. Its steady-state samples/s is ``steps * batch * accumulation / train_seconds``,
where ``train_seconds`` is the trial's own timer around the training steps (model loading, the
cache read and the scoring rung at the end are outside it).

*Reference* is :func:`reference_loop`: what ``train_text_to_image_lora.py`` does each
micro-step, built from the project's own pieces (``load_components``, ``attach_lora``,
``make_batch_sampler``, ``load_rgb``/``preprocess``, the tokenizer and text encoder,
``diffusion_loss``): decode and transform the images, tokenize the captions, run the VAE
(``latent_dist.sample()``) and the text encoder, then the same UNet step. The optimizer step is
the same as ours (AdamW, GradScaler, the same clipping call), so the difference measured is
the per-step frozen work and nothing else. Model loading is outside the timer.

Both loops start from the same seed and train the same number of steps on the same model and
data; repeats alternate which loop goes first. The one-off cache build (VAE + text encoder over
the training set, done once per sweep and shared by every trial) is timed separately into a
fresh folder, so the total time of ours (cache build + training) can be stated beside the
steady-state rate.

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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler

from benchmarks.common import HYUNDAI_SWEEP, TINY_SWEEP, median, write_sweep
from trials import cache
from trials.config import TrialConfig
from trials.data import load_examples, load_rgb, preprocess
from trials.lora import attach_lora
from trials.models import load_components, resolve_model_path
from trials.synthetic import make_car_dataset
from trials.train import (
    TrialDiverged,
    clip_gradients,
    diffusion_loss,
    make_batch_sampler,
    pick_device,
    run_trial,
    weight_dtype_for,
)

# The LoRA both loops train: the reference script's modules (attn1 + attn2), alpha = rank.
PARAMS = {"rank": 4, "lora_alpha": "rank", "learning_rate": 1e-4, "target_modules": "attn"}


@dataclass(frozen=True)
class LoopTiming:
    loop: str  # "ours" or "reference"
    steps: int
    samples: int
    train_seconds: float
    cache_build_seconds: float = 0.0  # ours: the one-off build, timed into a fresh folder

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds

    @property
    def total_seconds(self) -> float:
        return self.train_seconds + self.cache_build_seconds


@dataclass(frozen=True)
class ThroughputResult:
    setting: str
    device: str
    shape: str  # resolution, batch, precision in words
    steps: int
    ours: list[LoopTiming]
    reference: list[LoopTiming]
    note: str = ""

    @property
    def measured(self) -> bool:
        return bool(self.ours and self.reference)

    @property
    def ours_sps(self) -> float:
        return median([t.samples_per_second for t in self.ours])

    @property
    def reference_sps(self) -> float:
        return median([t.samples_per_second for t in self.reference])

    @property
    def ratio(self) -> float:
        """Ratio of the medians (ours / reference)."""
        return self.ours_sps / self.reference_sps if self.measured else float("nan")

    @property
    def pair_ratios(self) -> list[float]:
        """Ours / reference for each repeat (the two loops of a repeat run back to back)."""
        return [o.samples_per_second / r.samples_per_second
                for o, r in zip(self.ours, self.reference, strict=True)]

    @property
    def cache_build_seconds(self) -> float:
        return median([t.cache_build_seconds for t in self.ours])

    @property
    def ours_total(self) -> float:
        return median([t.total_seconds for t in self.ours])

    @property
    def reference_total(self) -> float:
        return median([t.total_seconds for t in self.reference])


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


def reference_loop(config: TrialConfig, steps: int) -> LoopTiming:
    """Train ``steps`` optimizer steps re-encoding everything every micro-step (no cache)."""
    device = pick_device()
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    train_cfg, params = config.train, config.params
    torch.manual_seed(train_cfg.seed)
    rng = random.Random(train_cfg.seed)
    components = load_components(
        config.model.name, revision=config.model.revision, variant=config.model.variant,
        cache_dir=config.cache_dir, device=device, weight_dtype=dtype)
    if train_cfg.prediction_type:
        components.noise_scheduler.register_to_config(prediction_type=train_cfg.prediction_type)
    examples = load_examples(config.data.train_dir, config.data.caption_column)
    unet = components.unet
    trainable = attach_lora(unet, params)
    if train_cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler(train_cfg.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=train_cfg.lr_warmup_steps,
                                 num_training_steps=steps)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    batches = make_batch_sampler(len(examples), train_cfg.train_batch_size, rng)
    unet.train()
    _sync(device)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        for _ in range(train_cfg.gradient_accumulation_steps):
            latents, text = reference_inputs(next(batches), examples, config, components, rng,
                                             device, dtype)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = diffusion_loss(unet, components.noise_scheduler, latents, text, config)
            if not math.isfinite(loss.item()):
                raise TrialDiverged(step, loss.item())
            scaler.scale(loss / train_cfg.gradient_accumulation_steps).backward()
        scaler.unscale_(optimizer)
        clip_gradients(trainable, train_cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    seconds = time.perf_counter() - started
    samples = steps * train_cfg.train_batch_size * train_cfg.gradient_accumulation_steps
    return LoopTiming("reference", steps, samples, seconds)


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


def ours_loop(config: TrialConfig, steps: int) -> LoopTiming:
    """Our trial loop (``run_trial``), one scoring rung at the very end; cache already built."""
    config = replace(config, params=replace(config.params, max_train_steps=steps),
                     eval=replace(config.eval, every_steps=steps))
    result = run_trial(config, lambda *_: False)
    last = result.rungs[-1]
    if not last["cache_hit"]:
        raise RuntimeError("our loop built the cache itself; the benchmark expected it warm")
    samples = steps * config.train.train_batch_size * config.train.gradient_accumulation_steps
    return LoopTiming("ours", steps, samples, float(last["train_seconds"]),
                      time_cache_build(config))


def compare(config: TrialConfig, steps: int, repeats: int, setting: str,
            shape: str) -> ThroughputResult:
    """Both loops ``repeats`` times, alternating which goes first; medians reported."""
    device = pick_device()
    # Build the shared cache once (outside every timer) so our loop reads it warm.
    components = load_components(config.model.name, revision=config.model.revision,
                                 variant=config.model.variant, cache_dir=config.cache_dir,
                                 device=device,
                                 weight_dtype=weight_dtype_for(config.train.mixed_precision,
                                                               device))
    cache.load_or_build(load_examples(config.data.train_dir, config.data.caption_column),
                        config.model, config.data, components, config.cache_dir, device,
                        weight_dtype_for(config.train.mixed_precision, device))
    del components
    ours, reference = [], []
    for r in range(repeats):
        order = ("ours", "reference") if r % 2 == 0 else ("reference", "ours")
        for loop in order:
            if loop == "ours":
                ours.append(ours_loop(config, steps))
            else:
                reference.append(reference_loop(config, steps))
    return ThroughputResult(setting, device.type, shape, steps, ours, reference)


def _small_eval(config: TrialConfig, inference_steps: int = 2) -> TrialConfig:
    """Score cheaply at the one rung (it is outside the timers, but still costs wall time)."""
    return replace(config, eval=replace(config.eval, prompt_list=config.eval.prompt_list[:1],
                                        images_per_prompt=1, inference_steps=inference_steps))


def tiny_config(work: Path) -> TrialConfig:
    """``sweeps/tiny.yaml``'s model, data and train settings, with the LoRA in :data:`PARAMS`."""
    from hpo.spec import load_sweep

    work = Path(work)
    file = write_sweep(work, TINY_SWEEP, name="throughput.yaml")
    sweep = load_sweep(file)
    synthetic = sweep.data.synthetic
    assert synthetic is not None
    make_car_dataset(sweep.data.train_dir, synthetic.n_images, synthetic.size, synthetic.seed)
    config = sweep.trial_config({**PARAMS, "max_train_steps": 1}, output_dir=work / "trial",
                                cache_dir=work / "cache")
    return _small_eval(config)


def measure_tiny(work: Path, steps: int, repeats: int) -> ThroughputResult:
    """The tiny model on this machine's device, at ``sweeps/tiny.yaml``'s settings."""
    config = tiny_config(work)
    device = pick_device()
    t = config.train
    shape = (f"{config.data.resolution} px, batch {t.train_batch_size} x "
             f"{t.gradient_accumulation_steps} accumulation, "
             f"{str(weight_dtype_for(t.mixed_precision, device)).removeprefix('torch.')}")
    return compare(config, steps, repeats, f"tiny model (sweeps/tiny.yaml) on {device.type}",
                   shape)


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UNet2DConditionModel(**SD15_UNET).to(dtype).save_pretrained(folder / "unet")
        AutoencoderKL(**SD15_VAE).to(dtype).save_pretrained(folder / "vae")
        CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).to(dtype).save_pretrained(
            folder / "text_encoder")
    return folder


def sd15_config(work: Path, model: str | None = None, resolution: int = 512,
                n_images: int = 12) -> TrialConfig:
    """``sweeps/hyundai.yaml``'s train settings on drawn cars at ``resolution`` px."""
    from hpo.spec import load_sweep

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
    return _small_eval(config)


def measure_sd15(work: Path, steps: int, repeats: int, model: str | None = None,
                 force: bool = False) -> ThroughputResult:
    """SD v1.5 shapes (512 px, fp16) on a GPU; "not measured" without one (unless ``force``)."""
    setting = "SD v1.5 shapes (UNet 860M, 512 px), GPU"
    shape = "512 px, batch 1 x 4 accumulation, fp16 frozen weights"
    if not torch.cuda.is_available() and not force:
        return ThroughputResult(setting, "none", shape, steps, [], [],
                                note="not measured: no GPU")
    config = sd15_config(work, model)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return replace(compare(config, steps, repeats, setting, shape), device=name)
