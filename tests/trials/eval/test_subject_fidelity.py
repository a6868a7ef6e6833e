"""Fidelity to held-out real images (trials.eval.subject_fidelity, trials.eval.dino) on the tiny
models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trials.data.folder import load_examples, load_rgb
from trials.data.holdout import reference_examples
from trials.eval import evaluator as evaluation
from trials.eval import subject_fidelity
from trials.eval.dino import TINY_DINO, DinoEmbedder
from trials.models.components import load_components
from trials.train import warm


def test_tiny_dinov2_loads_through_from_pretrained_and_embeds(tmp_path: Path) -> None:
    from PIL import Image

    dino = DinoEmbedder(TINY_DINO, cache_dir=tmp_path)
    assert (tmp_path / "trials-tiny-dinov2-v1" / "preprocessor_config.json").is_file()
    emb = dino.embed([Image.new("RGB", (40, 48), c) for c in ("red", "blue", "red")])
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb[0], emb[2], atol=1e-6) and not torch.allclose(emb[0], emb[1])
    # A second embedder (a fresh load from the same folder) gives the same features.
    assert torch.allclose(DinoEmbedder(TINY_DINO, cache_dir=tmp_path).embed(
        [Image.new("RGB", (40, 48), "red")])[0], emb[0], atol=1e-6)


def test_every_rung_reports_fidelity_to_the_held_out_images(make_trial_config, tiny_clip,
                                                            tmp_path: Path) -> None:
    config = make_trial_config(data={"holdout": 2}, eval={"dino_model": TINY_DINO})
    components = load_components("tiny", cache_dir=config.cache_dir)
    examples = load_examples(config.data.train_dir)
    evaluator = evaluation.Evaluator(config, components, examples, torch.device("cpu"),
                                     torch.float32, scorer=tiny_clip)
    scores = evaluator.score(tmp_path / "rung")
    assert {"clip_i_holdout", "dino_holdout", "clip_i", "clip_score"} <= set(scores)
    assert scores["n_holdout_images"] == 2
    # By hand: 100 x the mean cosine over every (generated, held-out) pair.
    from PIL import Image

    grid = Image.open(tmp_path / "rung" / "samples.png")
    assert grid.width > 0
    held = [load_rgb(e.path) for e in reference_examples(config)]
    scorer = subject_fidelity.for_config(config, tiny_clip, torch.device("cpu"))
    assert scorer is evaluator.fidelity  # kept for the next evaluator in this process
    images = [[Image.new("RGB", (32, 32), "white"), Image.new("RGB", (32, 32), "black")]]
    got = scorer.score(images)
    flat = images[0]
    clip = tiny_clip.embed_images(flat) @ tiny_clip.embed_images(held).T
    dino = scorer.dino.embed(flat) @ scorer.dino.embed(held).T
    assert got["clip_i_holdout"] == pytest.approx(float(100 * clip.mean()), abs=1e-4)
    assert got["dino_holdout"] == pytest.approx(float(100 * dino.mean()), abs=1e-4)


def test_no_held_out_images_means_no_fidelity_metrics(make_trial_config, tiny_clip) -> None:
    assert subject_fidelity.for_config(make_trial_config(), tiny_clip, torch.device("cpu")) is None
    warm.forget()
