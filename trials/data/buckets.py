"""Aspect-ratio buckets: train wide and tall images at a car-shaped size instead of a square crop.

The reference script resizes the shorter side to ``resolution`` and crops a square, which cuts
half of a 2:1 side view away. Bucketing (NovelAI's aspect-ratio bucketing, as in kohya
sd-scripts and SimpleTuner) instead offers a set of sizes of about ``resolution``² pixels whose
sides are multiples of what the model can downsample (:func:`side_multiple`), puts each image in
the bucket of nearest aspect ratio, resizes it to cover the bucket and crops the small rest. A
micro-batch is drawn from one bucket, since its latents must share a shape.

What is cached: with ``center_crop`` each image's latent distribution at its bucket's size, one
tensor per bucket (``bucket_mean.K``, ``bucket_std.K``: ``(n_K, n_flips, c, h_K, w_K)``); with
random crops only the bucket plan, and the crop is encoded each step as without buckets.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from trials.config import DEFAULT_BUCKET_MAX_ASPECT, DataSpec
from trials.data.folder import Example, interpolation_mode, load_rgb

SD_SIDE_MULTIPLE = 64  # SD v1.5: VAE 8x, then the UNet's three 2x downsamplings


def side_multiple(vae_config: Any, unet_config: Any) -> int:
    """Pixels a bucket side must be a multiple of: the VAE's factor times the UNet's.

    The VAE halves the image in every encoder block but the last
    (``2 ** (len(block_out_channels) - 1)``, 8 for SD), and the UNet halves the latent in every
    down block but the last (``2 ** (len(down_block_types) - 1)``, 8 for SD): 64 pixels for SD.
    """
    vae = 2 ** (len(vae_config["block_out_channels"]) - 1)
    unet = 2 ** (len(unet_config["down_block_types"]) - 1)
    return vae * unet


def make_buckets(resolution: int, multiple: int, max_aspect: float = DEFAULT_BUCKET_MAX_ASPECT
                 ) -> list[tuple[int, int]]:
    """Bucket sizes ``(width, height)`` in pixels, sorted by aspect ratio (wide last).

    For each side length ``s`` (a multiple of ``multiple``) the other side is the largest
    multiple with ``s * other <= resolution**2``; sizes more elongated than ``max_aspect`` are
    left out. The square ``resolution`` bucket is included when ``resolution`` is a multiple.
    """
    if resolution < multiple:
        raise ValueError(f"resolution {resolution} is below the side multiple {multiple}")
    area = resolution * resolution
    sizes: set[tuple[int, int]] = set()
    side = multiple
    while side * multiple <= area:
        other = area // side // multiple * multiple
        if max(side, other) / min(side, other) <= max_aspect + 1e-9:
            sizes.update({(side, other), (other, side)})
        side += multiple
    if not sizes:
        raise ValueError(f"no bucket of about {resolution}^2 pixels with sides multiple of "
                         f"{multiple} and aspect <= {max_aspect:g}")
    return sorted(sizes, key=lambda wh: (wh[0] / wh[1], wh[0] * wh[1]))


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest (in log ratio), larger area on ties."""
    ratio = math.log(width / height)
    return min(range(len(buckets)),
               key=lambda k: (round(abs(math.log(buckets[k][0] / buckets[k][1]) - ratio), 9),
                              -buckets[k][0] * buckets[k][1]))


def crop_fraction(width: int, height: int, target: tuple[int, int]) -> float:
    """Fraction of the image's area cut off when it is resized to cover ``target`` and cropped.

    A square target is the reference script's crop: ``1 - short/long``, 0.5 for a 2:1 photo.
    """
    scale = max(target[0] / width, target[1] / height)
    return 1.0 - (target[0] * target[1]) / (width * scale * height * scale)


def upright_size(path: Path) -> tuple[int, int]:
    """An image's ``(width, height)`` as :func:`trials.data.folder.load_rgb` returns it (EXIF
    orientation applied), read from the header without decoding the pixels."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


@dataclass(frozen=True)
class BucketPlan:
    """Which bucket each training image goes to."""

    sizes: tuple[tuple[int, int], ...]  # (width, height) of bucket k, in pixels
    bucket_of: tuple[int, ...]  # example index -> bucket index
    crop: tuple[float, ...]  # example index -> fraction of its area cropped away

    def members(self, k: int) -> list[int]:
        return [i for i, b in enumerate(self.bucket_of) if b == k]

    def counts(self) -> dict[tuple[int, int], int]:
        """Images per bucket, for the buckets that hold any."""
        return {self.sizes[k]: len(self.members(k)) for k in sorted(set(self.bucket_of))}


def plan_buckets(image_sizes: Sequence[tuple[int, int]], data: DataSpec, multiple: int
                 ) -> BucketPlan:
    """Assign images of these ``(width, height)`` sizes to the buckets of ``data``."""
    sizes = make_buckets(data.resolution, multiple, data.bucket_max_aspect)
    chosen = [nearest_bucket(w, h, sizes) for w, h in image_sizes]
    used = sorted(set(chosen))  # keep only the buckets that hold images
    index = {k: i for i, k in enumerate(used)}
    return BucketPlan(
        sizes=tuple(sizes[k] for k in used),
        bucket_of=tuple(index[k] for k in chosen),
        crop=tuple(crop_fraction(w, h, sizes[k]) for (w, h), k in zip(image_sizes, chosen,
                                                                      strict=True)))


def dry_run_lines(data: DataSpec, multiple: int, source: str) -> list[str]:
    """What ``--dry-run`` prints about the buckets of the training folder, for a model whose
    side multiple is ``multiple`` pixels (``source``: where that figure came from, as
    :func:`trials.models.components.model_side_multiple` returns them)."""
    from trials.data.folder import DataError, load_examples

    try:
        examples = load_examples(data.train_dir, data.caption_column)
    except DataError as err:
        if data.synthetic is not None and not Path(data.train_dir).exists():
            return [f"planned when the generated folder exists (side multiple {multiple}, "
                    f"{source})"]
        return [f"cannot plan: {str(err).splitlines()[0]}"]
    lines = describe(examples, data, multiple)
    lines[0] += f"; side multiple from {source} VAE and UNet configs"
    return lines


def describe(examples: Sequence[Example], data: DataSpec, multiple: int) -> list[str]:
    """Dry-run lines: each bucket with its image count, and the mean crop with and without."""
    sizes = [upright_size(e.path) for e in examples]
    plan = plan_buckets(sizes, data, multiple)
    square = (data.resolution, data.resolution)
    without = sum(crop_fraction(w, h, square) for w, h in sizes) / len(sizes)
    with_b = sum(plan.crop) / len(plan.crop)
    lines = [f"buckets of ~{data.resolution}^2 px, sides multiple of {multiple}, aspect <= "
             f"{data.bucket_max_aspect:g}; mean area cropped {with_b:.1%} "
             f"(square {data.resolution}px crop: {without:.1%})"]
    for (w, h), n in plan.counts().items():
        lines.append(f"{w}x{h} ({w / h:.2f}:1): {n} image(s)")
    return lines


def preprocess_to_bucket(image: Image.Image, size: tuple[int, int], interpolation: str,
                         center_crop: bool, flip: bool, rng: random.Random | None = None
                         ) -> torch.Tensor:
    """Resize ``image`` to cover ``size`` (width, height), crop to it, flip, normalise.

    Returns float32 ``(3, height, width)`` in [-1, 1]; the same steps as
    :func:`trials.data.folder.preprocess` with a rectangle instead of a square.
    """
    width, height = size
    scale = max(width / image.width, height / image.height)
    new_w = max(width, math.ceil(image.width * scale - 1e-6))
    new_h = max(height, math.ceil(image.height * scale - 1e-6))
    resized = TF.resize(image, [new_h, new_w], interpolation=interpolation_mode(interpolation))
    if center_crop:
        cropped = TF.center_crop(resized, [height, width])
    else:
        draw = rng if rng is not None else random
        top = draw.randint(0, new_h - height)
        left = draw.randint(0, new_w - width)
        cropped = TF.crop(resized, top, left, height, width)
    if flip:
        cropped = TF.hflip(cropped)
    return TF.normalize(TF.to_tensor(cropped), [0.5], [0.5]).to(torch.float32).contiguous()


@dataclass
class BucketedLatents:
    """The bucket plan with, under ``center_crop``, each bucket's cached latent distribution."""

    plan: BucketPlan
    row: list[int]  # example index -> its row in its bucket's tensors
    means: list[torch.Tensor] | None  # bucket k: (n_k, n_flips, c, h_k, w_k); None: random crop
    stds: list[torch.Tensor] | None


def plan_for(examples: Sequence[Example], data: DataSpec, vae, unet) -> BucketPlan:
    """The plan for these examples with the loaded model's side multiple."""
    multiple = side_multiple(vae.config, unet.config)
    return plan_buckets([upright_size(e.path) for e in examples], data, multiple)


@torch.no_grad()
def encode(examples: Sequence[Example], data: DataSpec, components, device, dtype
           ) -> dict[str, torch.Tensor]:
    """The tensors the cache stores for a bucketed training set (see the module docstring)."""
    plan = plan_for(examples, data, components.vae, components.unet)
    tensors = {"bucket_sizes": torch.tensor(plan.sizes, dtype=torch.int64),
               "bucket_of": torch.tensor(plan.bucket_of, dtype=torch.int64),
               "bucket_crop": torch.tensor(plan.crop, dtype=torch.float64)}
    if not data.center_crop:
        return tensors
    flips = (False, True) if data.random_flip else (False,)
    for k, size in enumerate(plan.sizes):
        means, stds = [], []
        for i in plan.members(k):
            image = load_rgb(examples[i].path)
            pixels = torch.stack([
                preprocess_to_bucket(image, size, data.image_interpolation_mode, True, flip)
                for flip in flips]).to(device, dtype)
            dist = components.vae.encode(pixels).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
        tensors[f"bucket_mean.{k}"] = torch.stack(means).contiguous()
        tensors[f"bucket_std.{k}"] = torch.stack(stds).contiguous()
    return tensors


def check_cached(tensors: dict[str, torch.Tensor], n_examples: int, data: DataSpec
                 ) -> str | None:
    """Why cached bucket tensors cannot be used for ``n_examples`` images, or None."""
    sizes, bucket_of = tensors.get("bucket_sizes"), tensors.get("bucket_of")
    if sizes is None or bucket_of is None or tuple(bucket_of.shape) != (n_examples,) \
            or "bucket_crop" not in tensors:
        return f"the bucket plan should cover {n_examples} images"
    if data.center_crop:
        flips = 2 if data.random_flip else 1
        for k in range(len(sizes)):
            mean, std = tensors.get(f"bucket_mean.{k}"), tensors.get(f"bucket_std.{k}")
            n = int((bucket_of == k).sum())
            if mean is None or std is None or mean.shape != std.shape \
                    or tuple(mean.shape[:2]) != (n, flips):
                return f"bucket {k} latents should hold {n} images x {flips} flip(s)"
    return None


def from_tensors(tensors: dict[str, torch.Tensor]) -> BucketedLatents | None:
    """Rebuild :class:`BucketedLatents` from cached tensors; None for an unbucketed cache."""
    if "bucket_sizes" not in tensors:
        return None
    sizes = tuple((int(w), int(h)) for w, h in tensors["bucket_sizes"].tolist())
    plan = BucketPlan(sizes=sizes, bucket_of=tuple(int(b) for b in tensors["bucket_of"]),
                      crop=tuple(float(c) for c in tensors["bucket_crop"]))
    row = [0] * len(plan.bucket_of)
    for k in range(len(sizes)):
        for r, i in enumerate(plan.members(k)):
            row[i] = r
    cached = "bucket_mean.0" in tensors
    return BucketedLatents(
        plan=plan, row=row,
        means=[tensors[f"bucket_mean.{k}"] for k in range(len(sizes))] if cached else None,
        stds=[tensors[f"bucket_std.{k}"] for k in range(len(sizes))] if cached else None)


def batch_sampler(plan: BucketPlan, batch_size: int, rng: random.Random
                  ) -> Iterator[list[int]]:
    """Endless shuffled epochs of micro-batches, each from one bucket (kohya's order); see
    :func:`epoch_batches`."""
    while True:
        yield from epoch_batches(plan, batch_size, rng)


def epoch_batches(plan: BucketPlan, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of micro-batches, each from one bucket (kohya's order).

    Every epoch shuffles each bucket's images, cuts them into batches of ``batch_size`` (the
    last of a bucket may be smaller), and shuffles the batches of all buckets together.
    """
    batches = []
    for k in range(len(plan.sizes)):
        members = plan.members(k)
        rng.shuffle(members)
        batches += [members[s:s + batch_size] for s in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_latents(buckets: BucketedLatents, indices: Sequence[int], flips: Sequence[bool],
                  examples: Sequence[Example], data: DataSpec, vae, rng: random.Random,
                  device, dtype) -> torch.Tensor:
    """Unscaled latents of one micro-batch, all from one bucket: ``(b, c, h_k, w_k)``."""
    k = buckets.plan.bucket_of[indices[0]]
    if any(buckets.plan.bucket_of[i] != k for i in indices):
        raise ValueError("a micro-batch mixes buckets; draw it with buckets.batch_sampler")
    if buckets.means is not None and buckets.stds is not None:
        rows = torch.tensor([buckets.row[i] for i in indices])
        flip_index = torch.tensor([int(f) for f in flips])
        mean, std = buckets.means[k][rows, flip_index], buckets.stds[k][rows, flip_index]
        # A fresh draw from the cached distribution each step, as latent_dist.sample().
        return (mean + std * torch.randn(mean.shape)).to(device, dtype)
    size = buckets.plan.sizes[k]
    pixels = torch.stack([
        preprocess_to_bucket(load_rgb(examples[i].path), size, data.image_interpolation_mode,
                             False, f, rng) for i, f in zip(indices, flips, strict=True)
    ]).to(device, dtype)
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.sample()
