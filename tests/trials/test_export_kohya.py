"""The kohya file loads into diffusers and gives the same UNet output as the diffusers file."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from trials.export_kohya import KOHYA_NAME, KohyaExportError, main, write_kohya
from trials.models.components import load_components
from trials.models.lora import attach_lora, save_lora
from trials.parameters import HyperParams


def _saved_lora(cache_dir, tmp_path, target_modules, rank, alpha, adapter="lora"):
    components = load_components("tiny", cache_dir=cache_dir)
    params = HyperParams(rank=rank, lora_alpha=alpha, learning_rate=1e-4, max_train_steps=1,
                         target_modules=target_modules, adapter=adapter)
    trainable = attach_lora(components.unet, params)
    torch.manual_seed(3)
    with torch.no_grad():  # "gaussian" init leaves B at zero: give the adapter an effect
        for p in trainable:
            p.add_(torch.randn_like(p) * 0.3)
    return save_lora(components.unet, tmp_path / "lora").parent


def _unet_out(unet) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    cfg = unet.config
    latents = torch.randn(2, cfg.in_channels, 8, 8, generator=gen)
    text = torch.randn(2, 77, cfg.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return unet(latents, torch.tensor([10, 500]), text, return_dict=False)[0]


@pytest.mark.parametrize(("target_modules", "rank", "alpha"), [
    ("attn_ff", 4, 8.0),  # alpha != rank: the kohya .alpha must carry it
    ("cross_attn", 2, 2.0),
])
def test_kohya_file_gives_the_same_unet_output(tiny_model_dir, tmp_path, target_modules, rank,
                                               alpha) -> None:
    lora_dir = _saved_lora(tiny_model_dir.parent, tmp_path, target_modules, rank, alpha)
    kohya = write_kohya(lora_dir)
    assert kohya.name == KOHYA_NAME
    with safe_open(kohya, framework="pt") as handle:
        keys = list(handle.keys())
        alphas = {float(handle.get_tensor(k)) for k in keys if k.endswith(".alpha")}
        meta = handle.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert alphas == {alpha}
    assert meta["ss_network_dim"] == str(rank)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    base = _unet_out(pipe.unet)
    pipe.load_lora_weights(lora_dir, weight_name="pytorch_lora_weights.safetensors",
                           adapter_name="diffusers")
    pipe.load_lora_weights(lora_dir, weight_name=KOHYA_NAME, adapter_name="kohya")
    pipe.set_adapters("diffusers")
    from_diffusers = _unet_out(pipe.unet)
    pipe.set_adapters("kohya")
    from_kohya = _unet_out(pipe.unet)
    assert (from_diffusers - base).abs().max() > 1e-2  # the LoRA does something
    torch.testing.assert_close(from_kohya, from_diffusers, rtol=1e-4, atol=1e-5)


def test_dora_is_refused_with_a_reason(tiny_model_dir, tmp_path) -> None:
    lora_dir = _saved_lora(tiny_model_dir.parent, tmp_path, "attn", 2, 2.0, adapter="dora")
    with pytest.raises(KohyaExportError, match="DoRA adapters are not exported"):
        write_kohya(lora_dir)
    assert not (lora_dir / KOHYA_NAME).exists()


def test_a_folder_without_a_lora_is_one_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(KohyaExportError, match=r"no pytorch_lora_weights\.safetensors"):
        write_kohya(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_kohya_file_is_as_readable_as_the_weights_beside_it(tiny_model_dir, tmp_path) -> None:
    """safetensors writes 0600 files; a UI running as another user must be able to read it."""
    lora_dir = _saved_lora(tiny_model_dir.parent, tmp_path, "attn", 2, 2.0)
    weights = lora_dir / "pytorch_lora_weights.safetensors"
    weights.chmod(0o644)
    assert write_kohya(lora_dir).stat().st_mode & 0o777 == 0o644
