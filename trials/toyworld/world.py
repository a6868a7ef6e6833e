"""The world's images and captions, as tensors for training (drawn by trials.data.synthetic).

The base world is every colour x body style x view x background, drawn *without* the brand
design and captioned without the brand name ("a red sedan, side view facing left, on a road"):
the pretrained model never sees the brand. The scorer's world mixes both, so the CLIP scorer
learns what "hyundai" looks like (the light bar and hubs) and can reward it on brand prompts.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import torch

from trials.data.synthetic import (
    BACKGROUNDS,
    COLOURS,
    STYLES,
    VIEWS,
    Attributes,
    describe,
    render_car,
)

ALL_COMBINATIONS: list[Attributes] = list(itertools.product(COLOURS, STYLES, VIEWS, BACKGROUNDS))


@dataclass
class WorldSample:
    """``images``: uint8 ``[n, 3, size, size]``; one caption, combination and brand flag each."""

    images: torch.Tensor
    captions: list[str]
    combos: list[Attributes]
    brand: list[bool]

    def caption_ids(self) -> torch.Tensor:
        """An id per distinct (combination, brand) pair: images that share a true caption."""
        keys = {k: i for i, k in enumerate(sorted(set(zip(self.combos, self.brand, strict=True))))}
        return torch.tensor([keys[k] for k in zip(self.combos, self.brand, strict=True)])


def draw_world(n: int, size: int, seed: int, brand_fraction: float = 0.0) -> WorldSample:
    """Draw ``n`` cars, cycling through shuffled combinations; ``brand_fraction`` of them branded.

    Captions use either phrasing at random; deterministic in (n, size, seed, brand_fraction).
    """
    rng = random.Random(seed)
    combos: list[Attributes] = []
    while len(combos) < n:
        block = ALL_COMBINATIONS[:]
        rng.shuffle(block)
        combos += block
    combos = combos[:n]
    brand = [rng.random() < brand_fraction for _ in range(n)]
    images = np.stack(
        [np.asarray(render_car(c, size, rng, brand=b)) for c, b in zip(combos, brand, strict=True)]
    )
    captions = [describe(*c, phrasing=rng.randrange(2), brand=b)
                for c, b in zip(combos, brand, strict=True)]
    return WorldSample(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions,
                       combos, brand)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, 3, h, w]`` -> float in [-1, 1] (the VAE's and the reference script's range)."""
    return images.float() / 127.5 - 1.0
