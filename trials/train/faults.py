"""Fault injection for tests and the soak: make a trial diverge, run out of memory, or die.

A fault is asked for in ``TrialConfig.extras["fault"]`` as ``{"kind": ..., "step": N}``; the
sweep never sets it on its own. Kinds: ``nan`` (the loss becomes NaN), ``oom`` (a
``torch.cuda.OutOfMemoryError`` is raised), ``kill`` (the process SIGKILLs itself),
``error`` (a plain RuntimeError).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where a fault is injected: the sweep's --inject-faults reads KINDS
    import torch

KINDS = ("nan", "oom", "kill", "error")


@dataclass(frozen=True)
class FaultPlan:
    """Which fault to inject at which optimizer step (``kind`` None: none)."""

    kind: str | None = None
    step: int = 0

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> FaultPlan:
        spec = extras.get("fault")
        if not spec:
            return cls()
        if spec.get("kind") not in KINDS:
            raise ValueError(f"fault.kind must be one of {', '.join(KINDS)} (got {spec!r})")
        return cls(kind=spec["kind"], step=int(spec.get("step", 1)))

    def corrupt_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss, or NaN when a ``nan`` fault is due at this step."""
        if self.kind == "nan" and step == self.step:
            return loss * float("nan")
        return loss

    def maybe_fail(self, step: int) -> None:
        """Raise or die when an ``oom``, ``kill`` or ``error`` fault is due at this step."""
        if step != self.step:
            return
        if self.kind == "oom":
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected fault)")
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "error":
            raise RuntimeError(f"injected error at step {step}")
