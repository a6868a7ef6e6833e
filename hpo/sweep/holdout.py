"""The held-out real images of a sweep, as the study records them.

``data.holdout`` keeps N training images out of every trial (CLIP-I and DINO against them
measure subject fidelity on images no LoRA trained on); ``eval.reference_dir`` names a folder of
such images instead. The split itself is :func:`trials.data.holdout.split`; this module only
turns it into the study attribute ``holdout`` that a reader (and the fingerprint) sees.
"""

from __future__ import annotations

from typing import Any

from hpo.sweep.spec import PreflightError, Sweep


def held_out_split(sweep: Sweep, examples: list | None = None) -> dict[str, Any] | None:
    """The held-out real images as the study records them (None without any)."""
    from trials.data.folder import load_examples
    from trials.data.holdout import split

    d = sweep.data
    if not d.holdout and sweep.eval.reference_dir is None:
        return None
    held: list = []
    if d.holdout:
        examples = examples or load_examples(d.train_dir, d.caption_column)
        try:
            held = split(examples, d.holdout, d.holdout_seed)[1]
        except ValueError as err:
            raise PreflightError(f"{sweep.source}: {err}") from None
    return {"n": d.holdout, "seed": d.holdout_seed, "files": [ex.file_name for ex in held],
            "reference_dir": None if sweep.eval.reference_dir is None
            else str(sweep.eval.reference_dir), "dino_model": sweep.eval.dino_model}
