"""DINOv2 image features, for subject fidelity (DreamBooth's DINO metric).

DreamBooth (Ruiz et al. 2022, section 4.1) measures subject fidelity as the mean pairwise
cosine similarity between self-supervised ViT (DINO) CLS embeddings of generated and real
images: unlike CLIP-I, DINO's features separate instances of one class. Here the model is
``transformers.Dinov2Model`` and the embedding its ``pooler_output`` (the layer-normed CLS
token). Real sweeps use ``facebook/dinov2-base`` (a hub id or a local folder with
``config.json`` and ``preprocessor_config.json``); ``tiny`` builds a small Dinov2 config with
fixed random weights, saved once in diffusers-style folder format and loaded through the same
``from_pretrained`` route, for tests and the CPU demo (its values are meaningless).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

TINY_DINO = "tiny"
TINY_DINO_DIR = "trials-tiny-dinov2-v1"  # bump when the config below changes
TINY_DINO_SEED = 0


def build_tiny_dino(folder: Path) -> Path:
    """Write the tiny Dinov2 (config, seeded random weights, image processor) once."""
    if (folder / "config.json").is_file() and (folder / "preprocessor_config.json").is_file():
        return folder
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-dino-build-", dir=folder.parent))
    tmp.chmod(0o755)
    try:
        config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, image_size=32, patch_size=8)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_DINO_SEED)
            model = Dinov2Model(config)
        model.save_pretrained(tmp)
        # DINOv2's own processor type, shrunk: resize shorter side, center crop, ImageNet norm.
        BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                          do_convert_rgb=True).save_pretrained(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process built it first; its files are identical
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class DinoEmbedder:
    """A Dinov2Model and its image processor; embeddings are L2-normalised fp32 CPU tensors."""

    def __init__(self, model: str, device: torch.device | str = "cpu",
                 cache_dir: Path | None = None, batch_size: int = 32) -> None:
        from transformers import AutoImageProcessor, Dinov2Model

        source = str(build_tiny_dino(Path(cache_dir or ".cache") / TINY_DINO_DIR)) \
            if model == TINY_DINO else model
        self.name = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.processor = AutoImageProcessor.from_pretrained(source)
        self.model = Dinov2Model.from_pretrained(source).eval().to(self.device)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Shape ``[len(images), hidden_size]``, unit length."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            out = self.model(pixel_values=pixels.to(self.device)).pooler_output
            chunks.append(torch.nn.functional.normalize(out.float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.model.config.hidden_size)
