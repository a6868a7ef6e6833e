"""Cache of the frozen work: VAE latent distributions and text embeddings of the training set.

The reference script runs the frozen VAE and text encoder on every micro-step. Both are frozen,
so their outputs depend only on the model, the data folder and the transforms: we compute them
once per (model, folder contents, resolution, crop, flip, caption column) and every trial of a
sweep reads the same safetensors file.

What is cached, and what is not:
- text embeddings of every caption (each caption of a list-valued entry), and of the empty
  caption for caption dropout;
- with ``center_crop: true``, the latent *distribution* (mean, std) of each image, once per flip
  variant. Training still draws ``mean + std * noise`` each step, exactly like
  ``latent_dist.sample()``, so the per-step randomness of the reference is kept;
- with ``center_crop: false`` (random crop), latents are NOT cached: a random crop must stay
  random, so the trainer encodes the cropped image every step, as the reference does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trials.config import DataSpec, ModelSpec
from trials.data import buckets
from trials.data.folder import Example, folder_fingerprint, load_rgb, preprocess

CACHE_FORMAT = 1
log = logging.getLogger(__name__)


@dataclass
class EncodedData:
    """Frozen-model outputs for a training set, ready for the training loop."""

    examples: list[Example]
    text_embeds: torch.Tensor  # (n_captions, 77, dim)
    caption_rows: list[list[int]]  # example index -> rows of text_embeds
    latent_mean: torch.Tensor | None  # (n_examples, n_flips, c, h, w), None for random crop
    latent_std: torch.Tensor | None
    cache_file: Path
    cache_hit: bool
    # (77, dim): the empty caption "", which caption dropout trains on instead of a caption.
    empty_text: torch.Tensor | None = None
    # With data.aspect_buckets: the bucket plan and per-bucket latents (latent_mean is None).
    buckets: buckets.BucketedLatents | None = None


def cache_key(model: ModelSpec, data: DataSpec, fingerprint: str) -> str:
    """A hash of everything the cached tensors depend on."""
    parts = {
        "format": CACHE_FORMAT,
        "model": [model.name, model.revision, model.variant],
        "data": fingerprint,
        "resolution": data.resolution,
        "center_crop": data.center_crop,
        "random_flip": data.random_flip,
        "caption_column": data.caption_column,
        "interpolation": data.image_interpolation_mode,
    }
    if data.aspect_buckets:  # only then, so unbucketed caches keep their keys
        parts["buckets"] = data.bucket_max_aspect
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@contextmanager
def _locked(path: Path):
    # Trials that start together wait for the first one to build the cache, then read it.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_valid(file: Path, n_examples: int, n_captions: int, data: DataSpec
                ) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The cached tensors, or None and why the file cannot be used (truncated, wrong shapes)."""
    try:
        tensors = load_file(file)
    except Exception as err:  # safetensors raises its own error types for damaged files
        return None, f"{type(err).__name__}: {err}"
    embeds = tensors.get("text_embeds")
    if embeds is None or embeds.ndim != 3 or embeds.shape[0] != n_captions:
        return None, f"text_embeds should hold {n_captions} captions"
    if data.aspect_buckets:
        problem = buckets.check_cached(tensors, n_examples, data)
        if problem:
            return None, problem
    elif data.center_crop:
        mean, std = tensors.get("latent_mean"), tensors.get("latent_std")
        flips = 2 if data.random_flip else 1
        if mean is None or std is None or mean.shape != std.shape \
                or tuple(mean.shape[:2]) != (n_examples, flips):
            return None, f"latents should hold {n_examples} images x {flips} flip(s)"
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        return None, "it holds NaN or infinite values"
    return tensors, None


@torch.no_grad()
def encode_texts(texts: list[str], tokenizer, text_encoder, device, batch_size: int = 32):
    """Text-encoder hidden states for captions, padded to the tokenizer's 77 tokens."""
    outs = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(
            texts[start:start + batch_size], max_length=tokenizer.model_max_length,
            padding="max_length", truncation=True, return_tensors="pt",
        ).input_ids.to(device)
        outs.append(text_encoder(ids, return_dict=False)[0].float().cpu())
    return torch.cat(outs)


@torch.no_grad()
def _encode_latents(examples: list[Example], data: DataSpec, vae, device, dtype):
    flips = (False, True) if data.random_flip else (False,)
    means, stds = [], []
    for example in examples:
        image = load_rgb(example.path)
        pixels = torch.stack([
            preprocess(image, data.resolution, center_crop=True, flip=flip,
                       interpolation=data.image_interpolation_mode) for flip in flips
        ]).to(device, dtype)
        dist = vae.encode(pixels).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.stack(means).contiguous(), torch.stack(stds).contiguous()


def load_or_build(
    examples: list[Example], model: ModelSpec, data: DataSpec, components, cache_dir: Path,
    device: torch.device, dtype: torch.dtype,
) -> EncodedData:
    """Read the cache for this model and data, building it first when it is missing."""
    fingerprint = folder_fingerprint(examples, data.caption_column)
    key = cache_key(model, data, fingerprint)
    file = Path(cache_dir) / "encoded" / f"{key}.safetensors"
    captions = [c for ex in examples for c in ex.captions]
    rows, start = [], 0
    for ex in examples:
        rows.append(list(range(start, start + len(ex.captions))))
        start += len(ex.captions)

    with _locked(file.with_suffix(".lock")):
        tensors = None
        if file.is_file():
            tensors, problem = _read_valid(file, len(examples), len(captions), data)
            if problem:
                # A damaged shared file would fail every trial after it: build it again.
                log.warning("warning: rebuilding the damaged cache file %s (%s)", file, problem)
        hit = tensors is not None
        if tensors is None:
            tensors = {"text_embeds": encode_texts(
                captions, components.tokenizer, components.text_encoder, device),
                "empty_text": encode_texts([""], components.tokenizer, components.text_encoder,
                                           device)[0]}
            if data.aspect_buckets:
                tensors.update(buckets.encode(examples, data, components, device, dtype))
            elif data.center_crop:
                mean, std = _encode_latents(examples, data, components.vae, device, dtype)
                tensors.update(latent_mean=mean, latent_std=std)
            tmp = file.with_suffix(f".tmp{os.getpid()}")
            save_file(tensors, tmp, metadata={"key": key, "n_examples": str(len(examples))})
            os.replace(tmp, file)
    if "empty_text" not in tensors:  # a cache file written before caption dropout existed
        tensors["empty_text"] = encode_texts(
            [""], components.tokenizer, components.text_encoder, device)[0]
    return EncodedData(
        examples=examples,
        text_embeds=tensors["text_embeds"],
        caption_rows=rows,
        latent_mean=tensors.get("latent_mean"),
        latent_std=tensors.get("latent_std"),
        cache_file=file,
        cache_hit=hit,
        empty_text=tensors["empty_text"],
        buckets=buckets.from_tensors(tensors),
    )
