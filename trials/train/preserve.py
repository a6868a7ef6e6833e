"""Keeping the base model: the base model's control images, and the two training remedies.

Measured at every rung (:mod:`trials.eval.preservation`), preservation needs the base model's
own control-image features: :func:`base_control` draws them once per model, prompts and seed
and keeps them in the cache every trial and node shares (``<cache>/control/``), next to the
latent cache, under the same file lock.

Two remedies, chosen by ``preservation.method`` or the searched ``parameters.preservation``,
weighted by ``preservation_weight`` (``w``), each an extra term of a step's loss:

- ``prior``: DreamBooth's prior preservation (Ruiz et al. 2022; diffusers
  ``train_dreambooth_lora.py``, ``--with_prior_preservation --prior_loss_weight``): class images
  drawn once by the base model from the training captions without the trigger
  (:func:`class_data`, cached and shared like the latents), trained beside the instance batch:
  ``loss = mse(instance) + w * mse(class)``;
- ``dop``: kohya sd-scripts' differential output preservation (PR #1710): on the training
  captions without the trigger, the target is the base model's own prediction for the same
  noisy latents and timesteps (adapter disabled, no gradient), so the LoRA learns to change
  nothing there: ``loss = mse(instance) + w * mse(unet_lora(x_t, c-) , unet_base(x_t, c-))``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trials.config import TrialConfig
from trials.data.folder import Example, preprocess
from trials.eval.evaluator import Evaluator
from trials.eval.score import generate_images
from trials.train import accumulate
from trials.train.cache import _locked, encode_texts
from trials.trigger import triggerless_captions

CONTROL_FORMAT = "1"
CLASS_FORMAT = "1"
CLASS_SEED = 7919  # class images' base seed: any fixed number, apart from the eval seeds


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                          ).hexdigest()[:24]


def _model_key(config: TrialConfig) -> list:
    m = config.model
    return [m.name, m.revision, m.variant]


def base_control(config: TrialConfig, evaluator: Evaluator, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor | None:
    """The base model's control-image CLIP features, shape ``[n_control * images_per_prompt,
    dim]``, from the shared cache or drawn now with ``evaluator`` (whose UNet must still be the
    base model: call it before a LoRA is attached or loaded). None without control prompts."""
    pres, e = config.preservation, config.eval
    if not pres.measured:
        return None
    key = _digest({
        "format": CONTROL_FORMAT, "model": _model_key(config),
        "prompts": list(pres.control_prompt_list), "seed": e.seed,
        "images_per_prompt": e.images_per_prompt, "steps": e.inference_steps,
        "guidance": e.guidance_scale, "size": list(evaluator.size),
        "clip": [e.clip_model, e.clip_pretrained], "device": device.type, "dtype": str(dtype)})
    file = Path(config.cache_dir) / "control" / f"{key}.safetensors"
    with _locked(file.with_suffix(".lock")):
        if file.is_file():
            features = load_file(file).get("clip")
            if features is not None and features.shape[0] == \
                    len(pres.control_prompt_list) * e.images_per_prompt:
                return features
        features = evaluator.control_features().contiguous()
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        save_file({"clip": features}, tmp, metadata={"key": key})
        os.replace(tmp, file)
    return features


def control_text(config: TrialConfig, examples: list[Example], components,
                 device: torch.device) -> torch.Tensor:
    """Text-encoder states of every training caption without the trigger, shape
    ``[n_captions, 77, dim]`` in the latent cache's caption order (``EncodedData.text_embeds``
    rows). Raises ``ValueError`` naming the metadata record of a caption without the
    trigger."""
    assert config.preservation.trigger is not None
    captions = triggerless_captions(examples, config.preservation.trigger,
                                    config.data.train_dir)
    with torch.no_grad():
        return encode_texts(captions, components.tokenizer, components.text_encoder, device)


@dataclass
class ClassData:
    """Prior preservation's class images, encoded: latents ``[n, c, h, w]`` (mean and std of
    the VAE's distribution) and their prompts' text states ``[n, 77, dim]``."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    text: torch.Tensor
    cache_file: Path
    cache_hit: bool


def class_prompts(config: TrialConfig, examples: list[Example]) -> list[str]:
    """The class images' prompts: the training captions without the trigger, cycled to
    ``preservation.class_images`` (default: one per caption)."""
    captions = triggerless_captions(examples, config.preservation.trigger or "",
                                    config.data.train_dir)
    n = config.preservation.class_images or len(captions)
    return [captions[i % len(captions)] for i in range(n)]


def class_data(config: TrialConfig, examples: list[Example], evaluator: Evaluator,
               components, device: torch.device, dtype: torch.dtype) -> ClassData:
    """The class images of prior preservation, drawn once by the base model (``evaluator``'s
    pipeline, before any LoRA) at ``data.resolution`` with ``class_inference_steps`` and the
    eval guidance, VAE-encoded; read from the shared cache when another trial drew them."""
    pres, d = config.preservation, config.data
    prompts = class_prompts(config, examples)
    key = _digest({
        "format": CLASS_FORMAT, "model": _model_key(config), "prompts": prompts,
        "steps": pres.class_inference_steps, "guidance": config.eval.guidance_scale,
        "resolution": d.resolution, "device": device.type, "dtype": str(dtype)})
    file = Path(config.cache_dir) / "class" / f"{key}.safetensors"
    with _locked(file.with_suffix(".lock")):
        hit = file.is_file()
        if hit:
            tensors = load_file(file)
        else:
            images = generate_images(
                evaluator.pipe, prompts, 1, pres.class_inference_steps,
                config.eval.guidance_scale, CLASS_SEED, d.resolution,
                batch_size=config.eval.batch_size)
            with torch.no_grad():
                pixels = torch.stack([preprocess(group[0], d.resolution, center_crop=True,
                                                 flip=False) for group in images])
                dist = components.vae.encode(pixels.to(device, dtype)).latent_dist
                text = encode_texts(prompts, components.tokenizer, components.text_encoder,
                                    device)
            tensors = {"latent_mean": dist.mean.float().cpu().contiguous(),
                       "latent_std": dist.std.float().cpu().contiguous(),
                       "text": text.contiguous()}
            tmp = file.with_suffix(f".tmp{os.getpid()}")
            save_file(tensors, tmp, metadata={"key": key, "n": str(len(prompts))})
            os.replace(tmp, file)
    return ClassData(tensors["latent_mean"], tensors["latent_std"], tensors["text"], file, hit)


def prior_batch(data: ClassData, size: int, rng: random.Random, components, config: TrialConfig,
                device: torch.device, dtype: torch.dtype, weight: float
                ) -> accumulate.NoisedBatch:
    """``size`` class images (drawn with ``rng``), noised like an instance micro-batch."""
    rows = [rng.randrange(len(data.text)) for _ in range(size)]
    mean, std = data.latent_mean[rows], data.latent_std[rows]
    latents = (mean + std * torch.randn(mean.shape)).to(device, dtype)
    latents = latents * components.vae.config.scaling_factor
    batch = accumulate.add_noise(latents, data.text[rows].to(device, dtype),
                                 components.noise_scheduler, config.train)
    return replace(batch, weight=weight, preservation=True)


@torch.no_grad()
def dop_batch(batch: accumulate.NoisedBatch, text: torch.Tensor, unet, weight: float
              ) -> accumulate.NoisedBatch:
    """Differential output preservation for an instance micro-batch: the same noisy latents
    and timesteps with the trigger-less captions ``text`` (``[B, 77, dim]``), and as target the
    base model's prediction (every adapter of ``unet`` disabled)."""
    unet.disable_adapters()
    try:
        target = unet(batch.noisy, batch.timesteps, text, return_dict=False)[0]
    finally:
        unet.enable_adapters()
    return accumulate.NoisedBatch(batch.noisy, batch.timesteps, text, target.detach(),
                                  weight=weight, preservation=True)
