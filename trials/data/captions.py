"""Caption dropout: train some samples on the empty caption, so the LoRA also learns the
unconditional prediction that classifier-free guidance subtracts.

The other trainers have it (kohya sd-scripts ``--caption_dropout_rate``, SimpleTuner
``--caption_dropout_probability``, diffusers' SDXL script ``--proportion_empty_prompts``); the
SD 1.5 reference script does not, so the default (0) keeps its behaviour.
"""

from __future__ import annotations

import random

import torch


def drop_captions(text: torch.Tensor, empty: torch.Tensor | None, probability: float,
                  rng: random.Random) -> torch.Tensor:
    """Replace each sample's caption embedding by the empty caption's with ``probability``.

    ``text`` is ``(batch, 77, dim)``, ``empty`` the ``(77, dim)`` embedding of ``""``. One draw
    of ``rng`` per sample. Returns a new tensor; ``text`` is not changed.
    """
    if not probability:
        return text
    if empty is None:
        raise ValueError("caption dropout needs the empty caption's embedding")
    drop = torch.tensor([rng.random() < probability for _ in range(text.shape[0])])
    return torch.where(drop[:, None, None], empty.to(text.dtype).expand_as(text), text)
