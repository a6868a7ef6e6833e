"""One trial of a LoRA sweep: data, model, training loop and scoring.

Wings, bottom to top (a wing imports only the wings below it):

- ``trials.config``, ``trials.validation``: a trial's settings as typed objects (pure data);
  ``trials.toyworld`` (its ``__init__``): the paths of the committed toy world;
- :mod:`trials.data`: the image folder, buckets, captions, the held-out split, drawn cars;
- :mod:`trials.models`: the frozen SD components and the LoRA on the UNet;
- :mod:`trials.eval`: drawing the held-out prompts' images and scoring them (CLIP, DINO);
- :mod:`trials.train`: the training loop, the baseline, rescoring, the shared latent cache;
- commands on top: ``python -m trials.train``, ``python -m trials.export_kohya``,
  ``python -m trials.toyworld`` (its builders import the wings above).

This package never imports ``hpo`` or ``ray``: the orchestrator calls
:func:`trials.train.loop.run_trial` with a ``report(step, rung, checkpoint_dir)`` callback
(``rung``: a :class:`trials.report.RungReport`)
and gets a bool back (stop or go on). ``tests/test_architecture.py`` checks these rules.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_baseline", "run_trial"]


def __getattr__(name: str) -> Any:
    # Lazy, so reading a config does not import torch and diffusers.
    if name in __all__:
        from trials.train import loop as train

        return getattr(train, name)
    raise AttributeError(name)
