"""The kohya format: the LoRA file AUTOMATIC1111 and ComfyUI load for SD 1.5.

Our trials save ``pytorch_lora_weights.safetensors`` in diffusers' layout (``unet.``-prefixed
peft keys, alpha in the adapter metadata), which ``pipe.load_lora_weights`` reads but the two
most used SD 1.5 front ends do not. They expect kohya sd-scripts' layout: one flat name per
wrapped module, ``lora_unet_<module path with '_'>`` with ``.lora_down.weight`` (rank x in),
``.lora_up.weight`` (out x rank) and ``.alpha`` (a scalar: the update is scaled by
alpha / rank). DoRA adapters are refused (see ``_DORA_REFUSED``).

The renaming is diffusers' own ``convert_state_dict_to_kohya``. Two things it does not do are
done here: it writes ``alpha = rank`` whatever the adapter's alpha was (a LoRA trained with
alpha != rank would load mis-scaled), and it would pass DoRA's magnitudes through under a name
no kohya reader knows.

``python -m trials.export_kohya LORA_DIR`` converts any saved checkpoint folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trials.errors import KohyaExportError
from trials.models.lora import WEIGHTS_NAME

KOHYA_NAME = "lora_kohya.safetensors"
_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


# Why DoRA is not exported (checked against diffusers 0.42 and ComfyUI's weight_decompose): the
# SD 1.5 loader of diffusers drops kohya "dora_scale" keys with a warning, so no loader here can
# check such a file, and ComfyUI divides an output-axis dora_scale by the norm of the BASE weight
# where peft divides by the norm of the adapted weight, so the same numbers would draw otherwise.
_DORA_REFUSED = (
    "DoRA adapters are not exported in kohya format (diffusers' SD 1.5 loader drops dora_scale "
    "and ComfyUI normalises DoRA differently from peft, so the file would not reproduce the "
    "trained adapter); use pytorch_lora_weights.safetensors with diffusers' load_lora_weights")


def read_diffusers_lora(weights: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The UNet's tensors (keys without ``unet.``) and the adapter config of a saved LoRA."""
    from safetensors.torch import load_file

    with safe_open(weights, framework="pt") as handle:
        raw_meta = (handle.metadata() or {}).get(_METADATA_KEY)
    if raw_meta is None:
        raise KohyaExportError(f"{weights}: no {_METADATA_KEY} in the file's metadata, so the "
                               "LoRA's alpha is unknown (save it with "
                               "trials.models.lora.save_lora)")
    meta = json.loads(raw_meta)
    config = {k.removeprefix("unet."): v for k, v in meta.items() if k.startswith("unet.")}
    state = load_file(weights)
    unet = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    if not unet or len(unet) != len(state):
        raise KohyaExportError(f"{weights}: expected only unet.* LoRA keys (got {len(state)} "
                               f"keys, {len(unet)} of the UNet)")
    if any(".lora.down." in k or ".lora.up." in k for k in unet):
        raise KohyaExportError(f"{weights}: keys in the old lora.down/up style; expected "
                               "lora_A/lora_B (resave with trials.models.lora.save_lora)")
    return unet, config


def to_kohya(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a UNet LoRA (peft keys, no prefix) into kohya keys with the adapter's alpha.

    ``config`` is the peft ``LoraConfig`` as a dict (``r``, ``lora_alpha``, and optionally
    ``rank_pattern``/``alpha_pattern``, which this project never sets and so rejects).
    """
    from diffusers.utils import convert_state_dict_to_kohya

    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise KohyaExportError("per-module rank_pattern/alpha_pattern are not supported")
    if any(k.endswith(".lora_magnitude_vector") for k in state) or config.get("use_dora"):
        raise KohyaExportError(_DORA_REFUSED)
    alpha = float(config["lora_alpha"])
    out: dict[str, torch.Tensor] = {}
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    for key, value in kohya.items():
        module, _, suffix = key.partition(".")
        if suffix == "alpha":
            value = torch.tensor(alpha)  # diffusers writes the rank here
        out[f"{module}.{suffix}"] = value.to(torch.float32).contiguous()
    return out


def kohya_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The ``ss_*`` header keys kohya sd-scripts writes, which front ends show (all strings)."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(config["r"])),
        "ss_network_alpha": f"{float(config['lora_alpha']):g}",
        "ss_base_model_version": "sd_v1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
    }


def write_kohya(lora_dir: Path, name: str = KOHYA_NAME) -> Path:
    """Write ``lora_dir/name`` in kohya format beside ``pytorch_lora_weights.safetensors``.

    Written to a temporary name and renamed, so a reader never sees half a file. Raises
    :class:`KohyaExportError` when the folder holds no convertible LoRA.
    """
    lora_dir = Path(lora_dir)
    weights = lora_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise KohyaExportError(f"{lora_dir}: no {WEIGHTS_NAME} to convert")
    state, config = read_diffusers_lora(weights)
    target = lora_dir / name
    tmp = target.with_name(target.name + ".tmp")
    save_file(to_kohya(state, config), tmp, metadata=kohya_metadata(config))
    # safetensors writes 0600 files; give it the permissions of the weights beside it, so a
    # UI running as another user (ComfyUI, AUTOMATIC1111) can read it as it reads those.
    tmp.chmod(weights.stat().st_mode & 0o777)
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trials.export_kohya",
        description=f"Write {KOHYA_NAME} (AUTOMATIC1111/ComfyUI) beside a saved "
                    f"{WEIGHTS_NAME}.")
    parser.add_argument("lora_dir", type=Path, nargs="+", help="folders holding " + WEIGHTS_NAME)
    args = parser.parse_args(argv)
    try:
        for folder in args.lora_dir:
            print(write_kohya(folder))
    except KohyaExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
