"""LoRA adapters on the UNet: choosing target modules, attaching, and saving them atomically.

Weights are written where the reference script writes them (``pytorch_lora_weights.safetensors``,
``unet.``-prefixed keys), plus the adapter config as safetensors metadata so that
``pipe.load_lora_weights(dir)`` rebuilds the same rank, alpha, target modules and adapter type.

One key style per file: the reference script's ``convert_state_dict_to_diffusers`` renames only
attention layers (``to_q.lora.down``) and leaves every other module in peft's style
(``ff.net.2.lora_A``), so a file with feed-forward targets mixed both. We write peft's style
(``<module>.lora_A.weight`` / ``lora_B.weight``, and ``lora_magnitude_vector`` for DoRA)
for every module, which is what diffusers writes for its newer pipelines and what
``load_lora_weights`` reads without conversion.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from trials.config import WEIGHTS_NAME
from trials.parameters import TARGET_PRESETS, HyperParams


class TargetModuleError(ValueError):
    """An explicit target module name that matches nothing in the UNet."""


def targetable_names(unet: torch.nn.Module) -> list[str]:
    """Full names of the UNet modules LoRA can wrap (linear and 1x1-style conv layers)."""
    return [
        name for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
    ]


def _matches(full_name: str, key: str) -> bool:
    # peft's rule for a list of names: an exact match or a dotted suffix.
    return full_name == key or full_name.endswith("." + key)


def _suffix(full_name: str) -> str:
    parts = full_name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def resolve_target_modules(spec: str, unet: torch.nn.Module) -> str | list[str]:
    """Turn a preset name or comma-joined module names into peft's ``target_modules``.

    Explicit names are checked against the loaded UNet so a typo fails at trial start, with the
    list of valid names, instead of silently training nothing. Raises
    :class:`TargetModuleError`.
    """
    problem = unmatched_targets(spec, targetable_names(unet))
    if problem:
        raise TargetModuleError(problem)
    if spec in TARGET_PRESETS:
        preset = TARGET_PRESETS[spec]
        return preset if isinstance(preset, str) else list(preset)
    return spec.split(",")


def unmatched_targets(spec: str, names: list[str]) -> str | None:
    """What is wrong with ``target_modules`` value ``spec`` for a UNet whose targetable modules
    are ``names`` (None: it wraps something). A preset must match some module; every name of
    a list must match one (peft's rule: the full name or a dotted suffix of it)."""
    if spec in TARGET_PRESETS:
        preset = TARGET_PRESETS[spec]
        matched = [n for n in names if re.fullmatch(preset, n)] if isinstance(preset, str) \
            else [n for n in names if any(_matches(n, k) for k in preset)]
        return None if matched else f"target_modules preset {spec!r} matches no UNet module"
    unknown = [k for k in spec.split(",") if not any(_matches(n, k) for n in names)]
    if not unknown:
        return None
    suffixes = sorted({_suffix(n) for n in names})
    return (f"target_modules: {', '.join(unknown)} match no module of this UNet; valid names "
            f"end with one of: {', '.join(suffixes[:40])}")


def lora_config(params: HyperParams, unet: torch.nn.Module) -> LoraConfig:
    """The peft config the reference script builds, with this trial's rank/alpha/targets.

    ``adapter: dora`` sets peft's ``use_dora`` (DoRA, Liu et al. 2024, "Weight-Decomposed
    Low-Rank Adaptation"): the same low-rank update plus a trained magnitude per output
    feature of each wrapped layer, saved as ``lora_magnitude_vector``.
    """
    return LoraConfig(
        r=params.rank,
        lora_alpha=params.lora_alpha,
        init_lora_weights="gaussian",
        target_modules=resolve_target_modules(params.target_modules, unet),
        use_dora=params.adapter == "dora",
    )


def attach_lora(unet: torch.nn.Module, params: HyperParams) -> list[torch.nn.Parameter]:
    """Add the adapter to a frozen UNet; returns the trainable LoRA parameters in fp32.

    The frozen base may be fp16/bf16; the adapter is upcast so the optimizer and the grad
    scaler work in full precision (otherwise "Attempting to unscale FP16 gradients").
    """
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(params, unet))
    trainable = [p for p in unet.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    return trainable


def adapter_metadata(unet: Any) -> dict[str, Any]:
    """The adapter config, JSON-friendly, stored beside the weights (alpha included)."""
    config = unet.peft_config["default"].to_dict()
    for key, value in config.items():
        if isinstance(value, set):
            config[key] = sorted(value)
    return config


def lora_state_dict(unet: Any) -> dict[str, torch.Tensor]:
    """The adapter's weights in one key style, fp32 on the CPU, keys without the ``unet.`` prefix.

    Keys are peft's: ``<module>.lora_A.weight`` (rank x in), ``<module>.lora_B.weight``
    (out x rank) and, for DoRA, ``<module>.lora_magnitude_vector`` (out,).
    """
    state = get_peft_model_state_dict(unet)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_lora(unet: Any, directory: Path) -> Path:
    """Write the UNet adapter to ``directory`` atomically and return the weights file.

    Everything is written into a sibling ``.tmp`` folder which is renamed into place only when
    complete, so a crash or a full disk never leaves a half-written file where a reader looks.
    """
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        StableDiffusionPipeline.save_lora_weights(
            save_directory=tmp,
            unet_lora_layers=lora_state_dict(unet),
            safe_serialization=True,
            unet_lora_adapter_metadata=adapter_metadata(unet),
        )
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory / WEIGHTS_NAME
