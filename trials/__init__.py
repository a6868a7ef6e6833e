"""One trial of a LoRA sweep: data, model, training loop and CLIP scoring.

This package never imports ``hpo`` or ``ray``: the orchestrator calls
:func:`trials.train.run_trial` with a ``report(step, metrics, checkpoint_dir)`` callback.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_baseline", "run_trial"]


def __getattr__(name: str) -> Any:
    # Lazy, so reading a config does not import torch and diffusers.
    if name in __all__:
        from trials import train

        return getattr(train, name)
    raise AttributeError(name)
