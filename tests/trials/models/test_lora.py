"""Saved LoRAs load into a stock diffusers pipeline and draw what the trained model drew."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from trials.eval.score import generate_images
from trials.models.components import load_components, make_pipeline
from trials.models.lora import WEIGHTS_NAME, attach_lora, resolve_target_modules, save_lora
from trials.parameters import HyperParams

PROMPTS = ["a red Hyundai coupe, side view", "a blue Hyundai SUV on a road"]


def _draw(pipe) -> np.ndarray:
    images = generate_images(pipe, PROMPTS, images_per_prompt=1, inference_steps=3,
                             guidance_scale=5.0, seed=11, resolution=32)
    return np.stack([np.asarray(img, dtype=np.float32) for row in images for img in row])


def _lora_unet(cache_dir: Path, target_modules: str, rank: int, alpha: float):
    components = load_components("tiny", cache_dir=cache_dir)
    params = HyperParams(rank=rank, lora_alpha=alpha, learning_rate=1e-4, max_train_steps=1,
                         target_modules=target_modules)
    trainable = attach_lora(components.unet, params)
    torch.manual_seed(3)
    with torch.no_grad():  # "gaussian" init leaves B at zero: give the adapter an effect
        for p in trainable:
            p.add_(torch.randn_like(p) * 0.3)
    components.unet.eval()
    return components


@pytest.mark.parametrize(("target_modules", "rank", "alpha"),
                         [("attn", 4, 4.0), ("cross_attn", 4, 8.0), ("attn_ff", 2, 1.0)])
def test_saved_lora_reloads_into_a_pipeline_with_the_same_images(
        tiny_model_dir, tmp_path, target_modules, rank, alpha) -> None:
    cache_dir = tiny_model_dir.parent
    components = _lora_unet(cache_dir, target_modules, rank, alpha)
    trained = _draw(make_pipeline(components, "cpu", torch.float32))
    weights = save_lora(components.unet, tmp_path / "lora")

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    base = _draw(make_pipeline(load_components("tiny", cache_dir=cache_dir), "cpu",
                               torch.float32))
    pipe.load_lora_weights(weights.parent)
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    reloaded = _draw(pipe)
    assert np.abs(reloaded - trained).max() <= 2.0  # 8-bit images, float rounding only
    assert np.abs(base - trained).mean() > 1.0  # the LoRA changes what is drawn


def test_weights_are_in_diffusers_format_with_alpha_recorded(tiny_model_dir, tmp_path) -> None:
    components = _lora_unet(tiny_model_dir.parent, "cross_attn", 4, 8.0)
    weights = save_lora(components.unet, tmp_path / "lora")
    assert weights.name == WEIGHTS_NAME
    with safe_open(weights, framework="pt") as handle:
        keys = list(handle.keys())
        meta = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("unet.") for k in keys)
    assert all("attn2" in k for k in keys)  # cross-attention only
    assert meta["unet.lora_alpha"] == 8.0 and meta["unet.r"] == 4


def test_failed_save_leaves_no_file_where_a_reader_looks(tiny_model_dir, tmp_path,
                                                         monkeypatch) -> None:
    components = _lora_unet(tiny_model_dir.parent, "attn", 2, 2.0)
    save_lora(components.unet, tmp_path / "lora")
    before = (tmp_path / "lora" / WEIGHTS_NAME).read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StableDiffusionPipeline, "save_lora_weights", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_lora(components.unet, tmp_path / "lora")
    assert (tmp_path / "lora" / WEIGHTS_NAME).read_bytes() == before  # old one intact
    assert not (tmp_path / "lora.tmp").exists()
    with pytest.raises(OSError):
        save_lora(components.unet, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_presets_resolve_to_the_intended_layers(tiny_model_dir) -> None:
    unet = load_components("tiny", cache_dir=tiny_model_dir.parent).unet
    assert resolve_target_modules("attn", unet) == ["to_q", "to_k", "to_v", "to_out.0"]
    cross = resolve_target_modules("cross_attn", unet)
    assert isinstance(cross, str) and "attn2" in cross
    assert resolve_target_modules("attn1.to_q,ff.net.2", unet) == ["attn1.to_q", "ff.net.2"]


@pytest.mark.parametrize("target_modules", ["attn", "cross_attn", "attn_ff"])
def test_every_module_is_saved_in_one_key_style(tiny_model_dir, tmp_path, target_modules) -> None:
    components = _lora_unet(tiny_model_dir.parent, target_modules, 2, 2.0)
    weights = save_lora(components.unet, tmp_path / "lora")
    with safe_open(weights, framework="pt") as handle:
        keys = list(handle.keys())
    styles = {k.rsplit(".", 2)[-2] for k in keys}
    assert styles == {"lora_A", "lora_B"}, styles  # never lora.down/up beside lora_A/B
    if target_modules == "attn_ff":
        assert any(".ff.net.2." in k for k in keys) and any(".attn1.to_q." in k for k in keys)


@pytest.mark.parametrize("preset", ["cross_attn", "attn", "attn_ff"])
def test_presets_on_the_sd15_unet_wrap_its_16_transformer_blocks(preset: str) -> None:
    """The real SD v1.5 UNet (its config; weights on the meta device, so nothing is allocated):
    16 transformer blocks, each with attn1, attn2 (to_q/k/v/out.0) and a feed-forward, give
    64 / 128 / 160 wrapped modules; attn2's keys and values read the 768-wide text states."""
    from diffusers import UNet2DConditionModel

    from tests.sd15_shapes import PRESET_MODULES, UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET)
    attach_lora(unet, HyperParams(rank=4, lora_alpha=4.0, learning_rate=1e-4,
                                  max_train_steps=1, target_modules=preset))
    wrapped = {name: module for name, module in unet.named_modules()
               if hasattr(module, "lora_A")}
    assert len(wrapped) == PRESET_MODULES[preset] == {"cross_attn": 64, "attn": 128,
                                                      "attn_ff": 160}[preset]
    cross = [m for name, m in wrapped.items() if name.endswith(("attn2.to_k", "attn2.to_v"))]
    assert len(cross) == 32 and {m.in_features for m in cross} == {768}
    if preset == "cross_attn":
        assert not any(".attn1." in name or ".ff." in name for name in wrapped)
