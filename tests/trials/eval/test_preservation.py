"""Control score, drift and leak (trials.eval.preservation) against hand computations."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from trials.eval.preservation import control_metrics

CONTROLS = ["a red car", "a blue van"]
BRANDS = ["a red Hyundai car", "a blue Hyundai van"]


def _images(seed: int) -> list[list[Image.Image]]:
    g = torch.Generator().manual_seed(seed)
    return [[Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())
             for _ in range(2)] for _ in CONTROLS]


def test_the_base_models_own_images_have_drift_100_and_no_leak(tiny_clip) -> None:
    images = _images(0)
    base = tiny_clip.embed_images([im for group in images for im in group])
    out = control_metrics(tiny_clip, CONTROLS, BRANDS, images, base)
    assert out["drift"] == pytest.approx(100.0, abs=1e-3)
    assert out["leak"] == pytest.approx(0.0, abs=1e-4)
    assert out["drift_per_prompt"] == pytest.approx([100.0, 100.0], abs=1e-3)


def test_drift_and_leak_match_a_hand_computation(tiny_clip) -> None:
    lora_images, base_images = _images(1), _images(2)
    base = tiny_clip.embed_images([im for group in base_images for im in group])
    out = control_metrics(tiny_clip, CONTROLS, BRANDS, lora_images, base)
    lora = tiny_clip.embed_images([im for group in lora_images for im in group])
    brand_t, control_t = tiny_clip.embed_texts(BRANDS), tiny_clip.embed_texts(CONTROLS)
    drift, leak = [], []
    for p in range(2):
        rows = [2 * p, 2 * p + 1]
        drift.append(float(sum(100 * torch.dot(lora[r], base[r]) for r in rows) / 2))

        def margin(f: torch.Tensor, p: int = p) -> float:
            return float(100 * (torch.dot(f, brand_t[p]) - torch.dot(f, control_t[p])))

        leak.append(sum(margin(lora[r]) - margin(base[r]) for r in rows) / 2)
    assert out["drift_per_prompt"] == pytest.approx(drift, abs=1e-3)
    assert out["leak_per_prompt"] == pytest.approx(leak, abs=1e-3)
    assert out["drift"] == pytest.approx(sum(drift) / 2, abs=1e-3)
    assert out["leak"] == pytest.approx(sum(leak) / 2, abs=1e-3)
    score = tiny_clip.score(CONTROLS, lora_images)
    assert out["control_score"] == pytest.approx(score.clip_score)
    assert out["control_per_prompt"] == pytest.approx(list(score.per_prompt))


def test_without_base_features_only_the_control_score_is_given(tiny_clip) -> None:
    out = control_metrics(tiny_clip, CONTROLS, BRANDS, _images(3), None)
    assert out["control_score"] is not None
    assert out["drift"] is None and out["leak"] is None


def test_mismatched_base_features_are_refused(tiny_clip) -> None:
    images = _images(4)
    base = tiny_clip.embed_images([images[0][0]])
    with pytest.raises(ValueError, match="4 control images but 1 base-model features"):
        control_metrics(tiny_clip, CONTROLS, BRANDS, images, base)
