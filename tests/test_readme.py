"""The code a reader copies runs as written (issue 23: the README's diffusers snippet failed
on the shipped toy world on a CPU with "mat1 and mat2 must have the same dtype").

The snippet is read from README.md and from the docs page that holds it (docs/outputs.md), so
the test follows both and keeps them true.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def readme_snippet(after: str, page: str = "README.md") -> str:
    """The first ```python block after the line ``after`` in ``page`` (under the repo)."""
    text = (REPO / page).read_text(encoding="utf-8")
    start = text.index(after)
    match = re.search(r"```python\n(.*?)```", text[start:], flags=re.DOTALL)
    assert match, f"no python block after {after!r} in {page}"
    return match.group(1)


@pytest.mark.parametrize("page", ["README.md", "docs/outputs.md"])
def test_the_diffusers_snippet_loads_the_winner_and_draws(tmp_path: Path, page: str) -> None:
    from diffusers import UNet2DConditionModel

    from trials.models.lora import attach_lora, save_lora
    from trials.parameters import HyperParams
    from trials.toyworld import SD_DIR

    code = readme_snippet("Load the winner in diffusers", page)
    assert '"trials/toyworld/weights/sd"' in code and '"runs/tiny-demo/best_lora"' in code
    # The paths the snippet names, as after `make demo` in a checkout: the committed toy world
    # (linked, never written) and a LoRA in the demo's output folder.
    (tmp_path / "trials" / "toyworld" / "weights").mkdir(parents=True)
    (tmp_path / "trials" / "toyworld" / "weights" / "sd").symlink_to(SD_DIR)
    unet = UNet2DConditionModel.from_pretrained(SD_DIR, subfolder="unet")
    attach_lora(unet, HyperParams(rank=4, lora_alpha=4.0, learning_rate=1e-3,
                                  max_train_steps=1, target_modules="attn"))
    with torch.no_grad():  # peft starts B at zero: give the LoRA an effect to load
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    save_lora(unet, tmp_path / "runs" / "tiny-demo" / "best_lora")

    check = ("\nimport json\nprint(json.dumps({'adapters': pipe.get_list_adapters(), "
             "'dtypes': sorted({str(p.dtype) for m in (pipe.unet, pipe.text_encoder, pipe.vae) "
             "for p in m.parameters()}), 'size': list(image.size)}))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code + check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["adapters"] == {"unet": ["default_0"]}
    assert seen["dtypes"] == ["torch.float32"] and seen["size"] == [32, 32]
    assert (tmp_path / "hyundai.png").is_file()

