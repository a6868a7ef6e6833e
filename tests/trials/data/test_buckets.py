"""Aspect-ratio buckets on a folder of mixed wide, tall and square images."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from trials.data import buckets
from trials.data.folder import load_examples
from trials.models.components import load_components, model_side_multiple
from trials.train import cache
from trials.train.loop import run_trial

# (width, height) of the test images: 2:1 side views, 1:2 portraits, squares and one 4:3.
SIZES = [(96, 48)] * 3 + [(48, 96)] * 2 + [(64, 64)] * 2 + [(80, 60)]


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    return write_mixed_folder(tmp_path_factory.mktemp("mixed"))


def write_mixed_folder(folder: Path) -> Path:
    """Striped images of the SIZES with captions naming their shape, in imagefolder layout."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = []
    for i, (w, h) in enumerate(SIZES):
        image = Image.new("RGB", (w, h), (rng.randrange(256), 40, 200))
        for x in range(0, w, 8):  # vertical stripes: a crop changes what is seen
            for y in range(h):
                image.putpixel((x, y), (255, 255, 255))
        image.save(folder / f"car{i}.png")
        shape = "wide" if w > h else "tall" if h > w else "square"
        lines.append(json.dumps({"file_name": f"car{i}.png", "text": f"a {shape} red car"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_sd_buckets_have_sides_multiple_of_64_and_about_512_squared_pixels() -> None:
    sd_vae = {"block_out_channels": [128, 256, 512, 512]}
    sd_unet = {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]}
    multiple = buckets.side_multiple(sd_vae, sd_unet)
    assert multiple == 64
    sizes = buckets.make_buckets(512, multiple, max_aspect=2.5)
    assert (512, 512) in sizes and (768, 320) in sizes and (320, 768) in sizes
    for w, h in sizes:
        assert w % 64 == 0 and h % 64 == 0
        assert 0.85 * 512**2 <= w * h <= 512**2
        assert max(w, h) / min(w, h) <= 2.5


def test_mixed_images_go_to_their_shape_and_lose_little(mixed_folder, tiny_model_dir,
                                                        make_trial_config) -> None:
    data = replace(make_trial_config().data, aspect_buckets=True)
    multiple, _ = model_side_multiple("tiny")
    assert multiple == 4  # tiny VAE 2 blocks (2x) times tiny UNet 2 blocks (2x)
    plan = buckets.plan_buckets(SIZES, data, multiple)
    for (w, h), k in zip(SIZES, plan.bucket_of, strict=True):
        bw, bh = plan.sizes[k]
        assert (bw > bh) == (w > h) and (bw < bh) == (w < h)
        assert bw % 4 == 0 and bh % 4 == 0
    with_buckets = sum(plan.crop) / len(plan.crop)
    square = sum(buckets.crop_fraction(w, h, (32, 32)) for w, h in SIZES) / len(SIZES)
    assert with_buckets < 0.10 and square > 0.30
    assert sum(plan.counts().values()) == len(SIZES)


def test_each_micro_batch_comes_from_one_bucket_and_an_epoch_sees_every_image() -> None:
    plan = buckets.BucketPlan(sizes=((8, 4), (4, 8), (4, 4)),
                              bucket_of=(0, 0, 0, 1, 1, 2, 0, 2), crop=(0.0,) * 8)
    sampler = buckets.batch_sampler(plan, 2, random.Random(1))
    seen = []
    while len(seen) < 8:
        batch = next(sampler)
        assert len({plan.bucket_of[i] for i in batch}) == 1
        seen += batch
    assert sorted(seen) == list(range(8))


def test_latents_are_cached_per_bucket_at_the_buckets_size(mixed_folder, make_trial_config,
                                                           tmp_path) -> None:
    config = make_trial_config(train_dir=mixed_folder, data={"aspect_buckets": True})
    components = load_components("tiny", cache_dir=config.cache_dir)
    examples = load_examples(mixed_folder)
    first = cache.load_or_build(examples, config.model, config.data, components,
                                tmp_path / "cache", torch.device("cpu"), torch.float32)
    assert first.latent_mean is None and first.buckets is not None
    assert first.buckets.means is not None
    for k, (w, h) in enumerate(first.buckets.plan.sizes):
        n = len(first.buckets.plan.members(k))
        assert first.buckets.means[k].shape == (n, 2, 4, h // 2, w // 2)  # 2 flips, VAE 2x
    again = cache.load_or_build(examples, config.model, config.data, components,
                                tmp_path / "cache", torch.device("cpu"), torch.float32)
    assert again.cache_hit and again.buckets.plan == first.buckets.plan
    plain = replace(config.data, aspect_buckets=False)
    other = cache.load_or_build(examples, config.model, plain, components,
                                tmp_path / "cache", torch.device("cpu"), torch.float32)
    assert other.cache_file != first.cache_file and other.buckets is None


def test_a_bucketed_trial_trains_and_scores_at_the_stated_size(mixed_folder, make_trial_config
                                                               ) -> None:
    seen = []
    config = make_trial_config(train_dir=mixed_folder, max_train_steps=3,
                               data={"aspect_buckets": True},
                               eval={"width": 48, "height": 24, "images_per_prompt": 1})
    run_trial(config, lambda step, metrics, ckpt: seen.append((metrics, ckpt)) and False)
    metrics, checkpoint = seen[-1]
    assert metrics.step == 3 and metrics.train_loss > 0
    with Image.open(checkpoint / "samples.png") as grid:
        assert grid.width == 48  # one 48 x 24 image per row


def test_random_crop_buckets_encode_each_step(mixed_folder, make_trial_config) -> None:
    seen = []
    config = make_trial_config(train_dir=mixed_folder, max_train_steps=3,
                               data={"aspect_buckets": True, "center_crop": False},
                               eval={"images_per_prompt": 1})
    run_trial(config, lambda step, metrics, ckpt: seen.append(metrics) and False)
    assert seen[-1].step == 3
