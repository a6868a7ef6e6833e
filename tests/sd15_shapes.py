"""An SD v1.5-shaped model with random weights, for the smoke test of the real architecture.

The configs are SD v1.5's own (``sd-legacy/stable-diffusion-v1-5``: ``unet/config.json``,
``vae/config.json``, ``text_encoder/config.json``, ``scheduler/scheduler_config.json``, written
out here from their documented values), the tokenizer is the real CLIP BPE vocabulary (written
offline from open_clip's copy, as the tiny model's is), and the weights are random (seeded).
Nothing is downloaded and nothing is committed: the folder is built at test time, in a
subprocess (``python -m tests.sd15_shapes FOLDER``) so the 4 GB of fp32 weights are not kept
in the test process.

Only the shapes are SD v1.5's, so the block and module names, the 768-wide cross attention,
the 8x VAE, the 77-token text encoder and the memory of the real model are exercised; the
images mean nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

SEED = 0

# unet/config.json of SD v1.5 (diffusers' UNet2DConditionModel; defaults left out).
UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}

# vae/config.json of SD v1.5 (AutoencoderKL: 4 blocks, 8x downsampling, 4 latent channels).
VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# text_encoder/config.json of SD v1.5: the text tower of OpenAI's CLIP ViT-L/14 (its odd
# bos/eos/pad ids included, as shipped).
TEXT_ENCODER: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# scheduler/scheduler_config.json of SD v1.5: a PNDM scheduler's config, which the trainer reads
# into a DDPMScheduler as the reference script does.
SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# LoRA-wrapped modules per target_modules preset on the SD v1.5 UNet: 16 transformer blocks
# (6 down, 1 mid, 9 up), each with attn1 and attn2 (to_q, to_k, to_v, to_out.0) and a
# feed-forward (ff.net.0.proj, ff.net.2).
PRESET_MODULES = {"cross_attn": 16 * 4, "attn": 16 * 8, "attn_ff": 16 * 10}


def build(folder: Path) -> Path:
    """Write the SD v1.5-shaped diffusers folder (random weights, seeded) to ``folder``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from trials.models.components import _write_clip_vocab_files

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        _write_clip_vocab_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(**UNET)
        torch.manual_seed(SEED + 1)
        vae = AutoencoderKL(**VAE)
        torch.manual_seed(SEED + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))
    scheduler = PNDMScheduler.from_config(
        {k: v for k, v in SCHEDULER.items() if k != "_class_name"})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    with tempfile.TemporaryDirectory() as tmp:  # SD v1.5's tokenizer files, as shipped
        _write_clip_vocab_files(Path(tmp))
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(Path(tmp) / name, folder / "tokenizer" / name)
    return folder


def configs_match(folder: Path) -> list[str]:
    """Keys of the written configs that differ from SD v1.5's (empty when all match)."""
    wrong = []
    for sub, file, expected in (("unet", "config.json", UNET), ("vae", "config.json", VAE),
                                ("text_encoder", "config.json", TEXT_ENCODER),
                                ("scheduler", "scheduler_config.json", SCHEDULER)):
        written = json.loads((folder / sub / file).read_text())
        wrong += [f"{sub}.{k}" for k, v in expected.items() if written.get(k) != v]
    return wrong


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
