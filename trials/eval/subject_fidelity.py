"""Fidelity to held-out real images: ``clip_i_holdout`` and ``dino_holdout`` at every rung.

DreamBooth (Ruiz et al. 2022, Table 1) scores *subject fidelity* as the mean pairwise cosine
similarity between generated images and real images of the subject, with CLIP image
embeddings (CLIP-I) and with DINO embeddings (DINO), beside *prompt fidelity* (CLIP-T, here
``clip_score``). Here the real images are ones no trial trained on (:mod:`trials.data.holdout`), so
a LoRA that learned the design scores high without memorising its training images (that is
what ``clip_i``, similarity to the *training* images, still measures).

Both are reported as 100 x the mean cosine over all (generated, held-out) pairs, the scale of
``clip_score`` and ``clip_i`` (DreamBooth's table shows raw cosines: divide by 100 to compare,
with the caveat that the backbones differ).

:class:`trials.eval.evaluator.Evaluator` calls :func:`for_config` once and, at each rung,
:meth:`FidelityScorer.score` on the images it drew.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from trials import report
from trials.config import TrialConfig
from trials.data.folder import folder_state, load_rgb
from trials.data.holdout import reference_examples
from trials.eval.dino import DinoEmbedder
from trials.eval.score import ClipScorer

# Generated images are compared with at most this many held-out images (an even subset).
MAX_HOLDOUT_IMAGES = 64

# One scorer per process, for the trials a reused worker runs one after another.
_kept: dict[tuple, FidelityScorer] = {}


class FidelityScorer:
    """Held-out reference embeddings (CLIP and DINOv2) and the two fidelity metrics."""

    def __init__(self, clip: ClipScorer, dino: DinoEmbedder,
                 references: list[Image.Image]) -> None:
        if not references:
            raise ValueError("fidelity needs at least one held-out image")
        self.clip, self.dino = clip, dino
        self.clip_refs = clip.embed_images(references)
        self.dino_refs = dino.embed(references)
        self.n_references = len(references)

    def score(self, images: list[list[Image.Image]]) -> dict[str, float]:
        """``clip_i_holdout`` and ``dino_holdout`` of ``images[prompt][seed]``."""
        flat = [im for row in images for im in row]
        clip = self.clip.embed_images(flat)
        dino = self.dino.embed(flat)
        return {report.CLIP_I_HOLDOUT: float(100.0 * (clip @ self.clip_refs.T).mean()),
                report.DINO_HOLDOUT: float(100.0 * (dino @ self.dino_refs.T).mean()),
                report.N_HOLDOUT_IMAGES: self.n_references}


def _key(config: TrialConfig, clip: ClipScorer, device: torch.device) -> tuple:
    folders = [Path(config.data.train_dir)] if config.data.holdout else []
    if config.eval.reference_dir is not None:
        folders.append(Path(config.eval.reference_dir))
    return (id(clip), config.eval.dino_model, str(device), config.data.holdout,
            config.data.holdout_seed, tuple((str(f), folder_state(f)) for f in folders))


def for_config(config: TrialConfig, clip: ClipScorer, device: torch.device
               ) -> FidelityScorer | None:
    """The fidelity scorer for this config, or None when it has no held-out images."""
    if not config.data.holdout and config.eval.reference_dir is None:
        return None
    key = _key(config, clip, device)
    if key not in _kept:
        _kept.clear()
        refs = reference_examples(config)
        step = max(1, len(refs) // MAX_HOLDOUT_IMAGES)
        images = [load_rgb(ex.path) for ex in refs[::step][:MAX_HOLDOUT_IMAGES]]
        dino = DinoEmbedder(config.eval.dino_model, device, cache_dir=config.cache_dir)
        _kept[key] = FidelityScorer(clip, dino, images)
    return _kept[key]
