"""Tests for trials.toyworld: the committed pretrained world loads like real weights and works."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trials.data.synthetic import BRAND_LIGHT, render_car
from trials.eval.score import ClipScorer, generate_images
from trials.models.components import (
    check_model_source,
    load_components,
    make_pipeline,
    resolve_model_path,
)
from trials.toyworld import (
    CLIP_WEIGHTS_FILE,
    MANIFEST_FILE,
    RESOLUTION,
    SD_DIR,
    TOYWORLD,
    WEIGHTS_DIR,
)
from trials.toyworld.build import file_checksums
from trials.toyworld.checks import brand_check, colour_prompts, zero_shot_colour
from trials.toyworld.world import draw_world

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> ClipScorer:
    return ClipScorer(TOYWORLD, None, cache_dir=tmp_path_factory.mktemp("toyworld_clip"))


def _brand_pixels(image: torch.Tensor) -> int:
    """Pixels close to the brand colour in a uint8 ``[3, h, w]`` image."""
    target = torch.tensor(BRAND_LIGHT).view(3, 1, 1)
    return int(((image.int() - target).abs().sum(dim=0) < 60).sum())


def test_base_world_never_shows_or_names_the_brand() -> None:
    base = draw_world(64, RESOLUTION, seed=3, brand_fraction=0.0)
    assert not any("hyundai" in c.casefold() for c in base.captions)
    assert max(_brand_pixels(im) for im in base.images) == 0
    mixed = draw_world(64, RESOLUTION, seed=3, brand_fraction=0.5)
    for image, caption, brand in zip(mixed.images, mixed.captions, mixed.brand, strict=True):
        assert ("Hyundai" in caption) == brand
        assert (_brand_pixels(image) > 5) == brand


def test_committed_weights_are_small_and_recorded() -> None:
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    manifest = json.loads(MANIFEST_FILE.read_text())
    assert manifest["command"].startswith("python -m trials.toyworld build")
    assert manifest["checks"]["brand_scorer"]["passes"]
    assert manifest["checks"]["colour"]["passes"]
    assert manifest["checks"]["colour"]["colour_accuracy"] >= 0.7  # chance: 12.5 %
    for name in ("torch", "diffusers", "transformers", "open-clip-torch"):
        assert manifest["versions"][name]


def test_manifest_records_every_committed_file_by_size_and_sha256() -> None:
    manifest = json.loads(MANIFEST_FILE.read_text())
    files = {str(p.relative_to(WEIGHTS_DIR)): p.stat().st_size
             for p in WEIGHTS_DIR.rglob("*") if p.is_file() and p != MANIFEST_FILE}
    assert manifest["files_bytes"] == files
    assert manifest["total_bytes"] == sum(files.values())
    assert manifest["files_sha256"] == file_checksums(WEIGHTS_DIR)


def test_plain_from_pretrained_runs_on_cpu() -> None:
    """Every component is stored in one dtype (fp32): diffusers' own loader needs no dtype."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    for weights in SD_DIR.rglob("*.safetensors"):  # stored so, not cast while loading
        assert {t.dtype for t in load_file(weights).values()} == {torch.float32}, weights
    pipe = StableDiffusionPipeline.from_pretrained(str(SD_DIR))
    for name in ("unet", "vae", "text_encoder"):
        assert {p.dtype for p in getattr(pipe, name).parameters()} == {torch.float32}, name
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red Hyundai sedan", num_inference_steps=2, height=RESOLUTION, width=RESOLUTION,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, RESOLUTION, RESOLUTION, 3)
    assert np.isfinite(out.images).all()


def test_toyworld_name_resolves_to_the_committed_diffusers_folder(tmp_path: Path) -> None:
    assert resolve_model_path(TOYWORLD, tmp_path) == str(SD_DIR)
    check_model_source(str(SD_DIR))  # raises on a missing subfolder
    components = load_components(TOYWORLD, cache_dir=tmp_path)
    assert {p.dtype for p in components.unet.parameters()} == {torch.float32}
    assert components.vae.config.scaling_factor > 0
    ids = components.tokenizer("a red Hyundai sedan").input_ids
    assert ids[0] == 49406 and ids[-1] == 49407  # the real CLIP BPE special tokens


def test_scorer_loads_through_open_clip_and_rewards_the_brand(scorer: ClipScorer) -> None:
    assert scorer.model_name == TOYWORLD and CLIP_WEIGHTS_FILE.is_file()
    check = brand_check(scorer, n=16)
    assert check["paired_gain"] > 3 * check["paired_stderr"] > 0


def test_scorer_tells_colours_of_drawn_cars(scorer: ClipScorer) -> None:
    prompts = colour_prompts(per_colour=2, seed=5)
    combos = [c for _, c in prompts]
    images = [render_car(c, RESOLUTION, random.Random(i), brand=False)
              for i, c in enumerate(combos)]
    picks = zero_shot_colour(scorer, images, combos)
    assert np.mean([p == c[0] for p, c in zip(picks, combos, strict=True)]) >= 0.9


def test_base_model_draws_the_prompted_colour(scorer: ClipScorer, tmp_path: Path) -> None:
    """The world's cheap prompt-following check: two images per colour, 10 sampling steps."""
    components = load_components(TOYWORLD, cache_dir=tmp_path)
    pipe = make_pipeline(components, "cpu", torch.float32)
    prompts = colour_prompts(per_colour=2, seed=11)
    images = generate_images(pipe, [p for p, _ in prompts], 1, 10, 5.0, 1234, RESOLUTION)
    picks = zero_shot_colour(scorer, [row[0] for row in images], [c for _, c in prompts])
    hits = sum(p == c[0] for p, (_, c) in zip(picks, prompts, strict=True))
    # Chance is 2/16; the committed build gets 32/32 in its manifest's check (10 steps).
    assert hits >= 12, f"{hits}/16 colours recognised"


@pytest.mark.slow
def test_quick_build_writes_a_loadable_world(tmp_path: Path) -> None:
    out = tmp_path / "world"
    subprocess.run([sys.executable, "-m", "trials.toyworld", "build", "--quick", "--out",
                    str(out)], check=True, cwd=REPO, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["unet_steps"] == 3
    assert set(manifest["checks"]) == {"colour", "colour_at_demo_steps", "brand_scorer"}
    assert (out / "samples.png").is_file()
    check_model_source(str(out / "sd"))
    assert manifest["files_sha256"] == file_checksums(out)
    # One dtype throughout (fp32), so diffusers' plain loader needs no torch_dtype on a CPU.
    te_config = json.loads((out / "sd" / "text_encoder" / "config.json").read_text())
    assert te_config["dtype"] == "float32"
    from safetensors.torch import load_file

    for weights in (out / "sd").rglob("*.safetensors"):
        assert {t.dtype for t in load_file(weights).values()} == {torch.float32}, weights
