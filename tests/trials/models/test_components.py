"""Tests for trials.models.components: the offline tiny SD model and component loading."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from safetensors.torch import load_file

from trials.models.components import (
    SUBFOLDERS,
    TINY_MODEL,
    TINY_RESOLUTION,
    ModelError,
    SDComponents,
    build_tiny_model,
    check_model_source,
    load_components,
    make_pipeline,
    resolve_model_path,
    unet_linear_module_names,
)

WEIGHT_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}


@pytest.fixture(scope="module")
def components(tiny_model_dir: Path) -> SDComponents:
    """Components loaded from the shared tiny model; tests must not modify them."""
    return load_components(str(tiny_model_dir), cache_dir=tiny_model_dir.parent)


def test_tiny_model_is_a_diffusers_folder(tiny_model_dir: Path) -> None:
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    for sub in SUBFOLDERS:
        assert (tiny_model_dir / sub).is_dir()
    # Same tokenizer file layout as SD v1.5's tokenizer folder.
    assert (tiny_model_dir / "tokenizer" / "vocab.json").is_file()
    assert (tiny_model_dir / "tokenizer" / "merges.txt").is_file()


def test_reload_gives_saved_weights_exactly(tiny_model_dir: Path, components: SDComponents) -> None:
    for attr, rel in WEIGHT_FILES.items():
        saved = load_file(tiny_model_dir / rel)
        loaded = getattr(components, attr).state_dict()
        assert set(saved) <= set(loaded), attr
        for key, tensor in saved.items():
            assert torch.equal(loaded[key], tensor), f"{attr}.{key}"


def test_loaded_components_are_frozen_and_configured(components: SDComponents) -> None:
    assert components.source.endswith("tiny-sd")
    for net in (components.unet, components.vae, components.text_encoder):
        assert not any(p.requires_grad for p in net.parameters())
        assert not net.training
    config = components.noise_scheduler.config
    assert config.beta_schedule == "scaled_linear"
    assert (config.beta_start, config.beta_end) == (0.00085, 0.012)
    assert config.num_train_timesteps == 1000
    assert config.prediction_type == "epsilon"
    assert components.tokenizer.model_max_length == 77
    assert components.unet.config.cross_attention_dim == components.text_encoder.config.hidden_size


def test_build_is_bit_identical_and_keeps_global_rng(tmp_path: Path) -> None:
    state = torch.get_rng_state()
    start = time.perf_counter()
    a = build_tiny_model(tmp_path / "a")
    assert time.perf_counter() - start < 15  # a couple of seconds normally
    b = build_tiny_model(tmp_path / "b")
    assert torch.equal(torch.get_rng_state(), state)
    for rel in WEIGHT_FILES.values():
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_resolve_model_path_builds_once(tmp_path: Path) -> None:
    assert resolve_model_path("runwayml/stable-diffusion-v1-5", tmp_path) == (
        "runwayml/stable-diffusion-v1-5"
    )
    path = Path(resolve_model_path(TINY_MODEL, tmp_path))
    assert path == tmp_path / "tiny-sd"
    weights = path / WEIGHT_FILES["unet"]
    mtime = weights.stat().st_mtime_ns
    assert Path(resolve_model_path(TINY_MODEL, tmp_path)) == path
    assert weights.stat().st_mtime_ns == mtime
    # No temporary build folders are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-sd"]


def test_resolve_model_path_replaces_partial_build(tmp_path: Path) -> None:
    partial = tmp_path / "tiny-sd"
    (partial / "unet").mkdir(parents=True)
    path = Path(resolve_model_path(TINY_MODEL, tmp_path))
    assert (path / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-sd"]


SENTENCES = [
    "a photo of a red Hyundai Ioniq 5, side view",
    "Sleek LED headlights;  low-slung roofline!!",
    "it's 2024 and the SUV's grille is parametric",
]


def test_tokenizer_ids_match_open_clip(components: SDComponents) -> None:
    import open_clip

    reference = open_clip.get_tokenizer("ViT-B-32")
    for text in SENTENCES:
        ours = components.tokenizer(text).input_ids
        theirs = [t for t in reference([text])[0].tolist() if t != 0]  # open_clip pads with 0
        assert ours == theirs
        assert ours[0] == 49406 and ours[-1] == 49407
    assert len(components.tokenizer) == 49408
    padded = components.tokenizer(
        SENTENCES[0], padding="max_length", max_length=77, truncation=True
    ).input_ids
    assert len(padded) == 77 and padded[-1] == 49407  # SD pads with <|endoftext|>


def test_missing_folder_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match=str(missing)):
        load_components(str(missing), cache_dir=tmp_path)


def test_missing_subfolder_raises_before_loading(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for sub in ("unet", "vae", "tokenizer", "scheduler"):
        (broken / sub).mkdir()  # empty: loading anything would fail differently
    with pytest.raises(ModelError) as info:
        load_components(str(broken), cache_dir=tmp_path)
    message = str(info.value)
    assert "text_encoder" in message and str(broken) in message and "\n" not in message


def test_hub_ids_are_not_checked_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_model_source("runwayml/stable-diffusion-v1-5")  # no error offline
    with pytest.raises(ModelError):
        check_model_source("./models/sd15")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelError, match="model folder not found"):
        check_model_source("models/sd15")


def test_pipeline_generates_right_size_without_safety_checker(
    components: SDComponents,
) -> None:
    pipe = make_pipeline(components, "cpu", torch.float32)
    assert pipe.safety_checker is None
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler is not components.noise_scheduler
    assert pipe.unet is components.unet  # shared, so LoRA updates are visible
    assert pipe.vae_scale_factor * components.unet.config.sample_size == TINY_RESOLUTION
    out = pipe(
        ["a red car"],
        num_inference_steps=2,
        height=TINY_RESOLUTION,
        width=TINY_RESOLUTION,
        generator=torch.Generator().manual_seed(0),
        output_type="pil",
    )
    assert out.images[0].size == (TINY_RESOLUTION, TINY_RESOLUTION)
    assert out.nsfw_content_detected is None


def test_make_pipeline_keeps_trainable_module_dtype(tiny_model_dir: Path) -> None:
    fresh = load_components(str(tiny_model_dir), cache_dir=tiny_model_dir.parent)
    fresh.unet.conv_in.requires_grad_(True)  # stands in for fp32 LoRA parameters
    make_pipeline(fresh, "cpu", torch.bfloat16)
    assert fresh.unet.conv_in.weight.dtype == torch.float32
    assert fresh.vae.dtype == torch.bfloat16
    assert fresh.text_encoder.dtype == torch.bfloat16


def test_unet_linear_module_names(tiny_model_dir: Path) -> None:
    from peft import LoraConfig

    unet = load_components(str(tiny_model_dir), cache_dir=tiny_model_dir.parent).unet
    before = unet_linear_module_names(unet)
    attn = [n for n in before if n.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_out.0"))]
    assert attn and "conv_in" in before
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k"]))
    after = unet_linear_module_names(unet)
    assert after == before
    assert not any("lora_" in n or "base_layer" in n for n in after)
