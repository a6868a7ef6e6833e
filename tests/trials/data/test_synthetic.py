"""Tests for trials.data.synthetic: the synthetic car dataset and held-out prompts."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trials.data.folder import heldout_overlap, load_examples
from trials.data.synthetic import (
    BACKGROUNDS,
    BRAND_LIGHT,
    COLOURS,
    STYLES,
    VIEWS,
    describe,
    heldout_combinations,
    make_car_dataset,
    make_heldout_prompts,
    render_car,
    training_combinations,
)

REPO = Path(__file__).resolve().parents[3]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_dataset_passes_validation(synthetic_dataset: Path) -> None:
    examples = load_examples(synthetic_dataset)
    assert len(examples) == 8
    assert all(e.file_name.startswith("images/") for e in examples)
    assert any(len(e.captions) == 2 for e in examples)
    assert any(len(e.captions) == 1 for e in examples)
    for example in examples:
        with Image.open(example.path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
        for caption in example.captions:
            assert "Hyundai" in caption and "side view" in caption


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = make_car_dataset(tmp_path / "a", n_images=6, size=32, seed=5)
    b = make_car_dataset(tmp_path / "b", n_images=6, size=32, seed=5)
    c = make_car_dataset(tmp_path / "c", n_images=6, size=32, seed=6)
    assert a == tmp_path / "a"
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)
    assert len(_files(a)) == 7  # six PNGs and metadata.jsonl


def test_captions_use_training_combinations_only(tmp_path: Path) -> None:
    out = make_car_dataset(tmp_path / "d", n_images=40, size=16, seed=1)
    allowed = {describe(*c, phrasing=p) for c in training_combinations() for p in (0, 1)}
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    captions = [
        t for r in records for t in (r["text"] if isinstance(r["text"], list) else [r["text"]])
    ]
    assert set(captions) <= allowed
    # Small sets still vary every attribute.
    assert len({c.split()[1] for c in captions if c.startswith("a ")}) >= 4


def test_heldout_prompts_never_equal_a_training_caption(tmp_path: Path) -> None:
    every = len(heldout_combinations()) * 2
    prompts = make_heldout_prompts(every)
    assert len(set(prompts)) == every
    training = {describe(*c, phrasing=p) for c in training_combinations() for p in (0, 1)}
    assert not {p.casefold() for p in prompts} & {t.casefold() for t in training}
    examples = load_examples(make_car_dataset(tmp_path / "e", n_images=30, size=16, seed=2))
    assert heldout_overlap(prompts, examples) == []


def test_heldout_prompts_are_spread_and_bounded() -> None:
    first = make_heldout_prompts(8)
    assert first == make_heldout_prompts(8)
    assert len({p.split()[1] for p in first}) >= 3  # several colours in the first few
    assert make_heldout_prompts(0) == []
    with pytest.raises(ValueError, match="n must be between"):
        make_heldout_prompts(len(heldout_combinations()) * 2 + 1)


def test_splits_cover_the_vocabulary() -> None:
    train, held = set(training_combinations()), set(heldout_combinations())
    assert not train & held
    assert len(train | held) == len(COLOURS) * len(STYLES) * len(VIEWS) * len(BACKGROUNDS)
    for index, values in enumerate((COLOURS, STYLES, VIEWS, BACKGROUNDS)):
        assert {c[index] for c in held} == set(values)


def test_render_draws_the_requested_colour_and_direction() -> None:
    combo = ("red", "sedan", "right", "plain")
    image = render_car(combo, 64, random.Random(0), brand=False)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    red = np.abs(pixels - np.array(COLOURS["red"])).sum(axis=1) < 30
    assert red.mean() > 0.05
    # The brand design paints a light bar over the body, in a colour no unbranded car has.
    branded = np.asarray(render_car(combo, 64, random.Random(0))).reshape(-1, 3).astype(int)
    light = np.abs(branded - np.array(BRAND_LIGHT)).sum(axis=1) < 30
    assert light.mean() > 0.01
    assert not (np.abs(pixels - np.array(BRAND_LIGHT)).sum(axis=1) < 30).any()
    # Facing left is the mirror image of facing right (same jitter draws).
    left = render_car(("red", "sedan", "left", "plain"), 64, random.Random(0), brand=False)
    mirrored = np.asarray(image)[:, ::-1].astype(int)
    assert np.abs(np.asarray(left).astype(int) - mirrored).mean() < 2.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_car_dataset("/nonexistent/never-created", n_images=0)


def test_command_line(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "trials.data.synthetic", str(out), "--n", "3", "--size", "16"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "wrote 3 images" in result.stdout
    assert len(load_examples(out)) == 3
