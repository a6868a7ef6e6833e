"""The held-out real images of a sweep, as the study records them.

``data.holdout`` keeps N training images out of every trial (CLIP-I and DINO against them
measure subject fidelity on images no LoRA trained on); ``eval.reference_dir`` names a folder of
such images instead. The split itself is the trials' (:func:`trials.api.held_out_files`); this
module only turns it into the study attribute ``holdout`` that a reader (and the fingerprint)
sees.
"""

from __future__ import annotations

from typing import Any

from hpo.sweep.spec import PreflightError, Sweep
from trials.api import TrialError, held_out_files


def held_out_split(sweep: Sweep) -> dict[str, Any] | None:
    """The held-out real images as the study records them (None without any).

    Raises :class:`~hpo.sweep.spec.PreflightError` when the training folder cannot be read or
    the split would leave nothing to train on."""
    d = sweep.data
    if not d.holdout and sweep.eval.reference_dir is None:
        return None
    try:
        held = held_out_files(d)
    except TrialError as err:
        key = f"{err.key}: " if err.key else ""
        raise PreflightError(f"{sweep.source}: {key}{err}") from None
    return {"n": d.holdout, "seed": d.holdout_seed, "files": list(held),
            "reference_dir": None if sweep.eval.reference_dir is None
            else str(sweep.eval.reference_dir), "dino_model": sweep.eval.dino_model}
