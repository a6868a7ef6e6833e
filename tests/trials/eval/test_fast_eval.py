"""The cheaper rung evaluation draws and scores exactly what the plain pipeline path did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trials.eval.fast_eval import PromptEmbeddings, merged_lora
from trials.eval.score import generate_images
from trials.models.components import load_components, make_pipeline
from trials.models.lora import attach_lora
from trials.parameters import HyperParams

PROMPTS = ["a red Hyundai coupe, side view", "a blue Hyundai SUV on a road",
           "a white Hyundai sedan at night"]


@pytest.fixture(scope="module")
def lora_pipe(tiny_model_dir: Path):
    components = load_components("tiny", cache_dir=tiny_model_dir.parent)
    params = HyperParams(rank=4, lora_alpha=4.0, learning_rate=1e-4, max_train_steps=1,
                         target_modules="attn_ff")
    trainable = attach_lora(components.unet, params)
    torch.manual_seed(3)
    with torch.no_grad():  # gaussian init leaves B at zero: give the adapter an effect
        for p in trainable:
            p.add_(torch.randn_like(p) * 0.3)
    components.unet.eval()
    return make_pipeline(components, "cpu", torch.float32)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for row in images for im in row])


def _draw(pipe, **kw):
    return _pixels(generate_images(pipe, PROMPTS, images_per_prompt=2, inference_steps=3,
                                   guidance_scale=5.0, seed=11, resolution=32, batch_size=4,
                                   **kw))


def test_kept_prompt_embeddings_draw_the_same_images(lora_pipe) -> None:
    plain = _draw(lora_pipe)  # the old path: prompt strings, LoRA through the adapter layers
    kept = PromptEmbeddings()
    first = _draw(lora_pipe, prompt_embeddings=kept)
    again = _draw(lora_pipe, prompt_embeddings=kept)  # from the kept embeddings
    assert len(kept) == 2  # batches of 4 of the 6 images: two batches
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(again, plain)
    # Merged (opt-in): the same draws, pixels within rounding of the adapter path's.
    with merged_lora(lora_pipe.unet) as n_layers:
        merged = _draw(lora_pipe, prompt_embeddings=kept)
    assert n_layers > 0
    assert np.abs(merged.astype(int) - plain.astype(int)).max() <= 2
    # The LoRA matters, so the comparisons above could have failed.
    lora_pipe.unet.disable_adapters()
    try:
        assert np.abs(_draw(lora_pipe).astype(int) - plain.astype(int)).max() > 2
    finally:
        lora_pipe.unet.enable_adapters()


def test_merged_lora_puts_back_the_very_same_weights(lora_pipe) -> None:
    unet = lora_pipe.unet
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    with merged_lora(unet):
        changed = [n for n, p in unet.named_parameters()
                   if "base_layer" in n and not torch.equal(p, before[n])]
        assert changed  # the deltas really are folded in while drawing
    for name, p in unet.named_parameters():
        assert torch.equal(p, before[name]), name
    assert not any(getattr(m, "merged", False) for m in unet.modules())


def test_merged_lora_restores_the_weights_when_drawing_fails(lora_pipe) -> None:
    unet = lora_pipe.unet
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), merged_lora(unet):
        raise RuntimeError("boom")
    for name, p in unet.named_parameters():
        assert torch.equal(p, before[name]), name


def test_default_evaluator_scores_equal_the_plain_path(make_trial_config, tmp_path) -> None:
    from trials.data.folder import load_examples
    from trials.eval.evaluator import Evaluator
    from trials.models.lora import attach_lora as attach

    config = make_trial_config()
    scores = {}
    for kept in (False, True):  # False: the old path; True: the default (kept embeddings)
        components = load_components("tiny", cache_dir=config.cache_dir)
        torch.manual_seed(4)  # before attaching: the adapter's A is drawn at random
        trainable = attach(components.unet, config.params)
        with torch.no_grad():
            for p in trainable:
                p.add_(torch.randn_like(p) * 0.3)
        components.unet.eval()
        cfg = config
        examples = load_examples(cfg.data.train_dir, cfg.data.caption_column)
        evaluator = Evaluator(cfg, components, examples, torch.device("cpu"), torch.float32)
        if not kept:  # the old path: no kept prompt embeddings at all
            evaluator.prompt_embeddings = None
        scores[kept] = [evaluator.score(tmp_path / f"{kept}-{i}") for i in range(2)]
    for old, new in zip(scores[False], scores[True], strict=True):
        for key in ("clip_score", "clip_score_stderr", "clip_i", "per_prompt"):
            assert new[key] == old[key], key
