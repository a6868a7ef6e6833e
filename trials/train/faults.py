"""Fault injection for tests and the soak: make a trial diverge, run out of memory, or die.

A fault is asked for in ``TrialConfig.extras["fault"]`` as ``{"kind": ..., "step": N}``, with
an optional ``"at"``; the sweep never sets it on its own. Kinds:

- ``nan`` (the loss becomes NaN) and ``oom`` (a ``torch.cuda.OutOfMemoryError`` is raised) at
  step N;
- ``kill`` (the process SIGKILLs itself, on every attempt: a retry dies too) and ``error`` (a
  plain RuntimeError);
- ``crash``: SIGKILL once per trial; before dying it leaves a mark in ``mark_dir`` (the spec's
  own, else the trial's output folder), so the retried attempt, resumed from the last rung
  checkpoint, goes past it. The folder must be the same for every attempt of the trial.

``at`` (``kill``, ``error``, ``crash``) says when: ``step`` (the default: after optimizer step
N), ``checkpoint`` (in the middle of writing the first rung checkpoint at or after step N,
which leaves it torn) or ``rung`` (just after the first rung at or after step N is reported).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where a fault is injected: the sweep's --inject-faults reads KINDS
    import torch

KINDS = ("nan", "oom", "kill", "error", "crash")
MOMENTS = ("step", "checkpoint", "rung")
CRASHED = ".crashed"  # the mark a crash leaves in the trial's output folder


@dataclass(frozen=True)
class FaultPlan:
    """Which fault to inject at which optimizer step (``kind`` None: none), and when
    (``at``); ``mark_dir`` is where a ``crash`` leaves its mark (the trial's output folder)."""

    kind: str | None = None
    step: int = 0
    at: str = "step"
    mark_dir: Path | None = None

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any], mark_dir: Path | None = None) -> FaultPlan:
        """Read ``extras["fault"]``; its ``mark_dir``, when given, wins over ``mark_dir``.
        Raises ValueError naming a bad ``kind`` or ``at``."""
        spec = extras.get("fault")
        if not spec:
            return cls()
        if spec.get("kind") not in KINDS:
            raise ValueError(f"fault.kind must be one of {', '.join(KINDS)} (got {spec!r})")
        at = spec.get("at", "step")
        if at not in MOMENTS or (at != "step" and spec["kind"] in ("nan", "oom")):
            raise ValueError(f"fault.at must be one of {', '.join(MOMENTS)}, and 'step' for "
                             f"nan and oom (got {spec!r})")
        if spec.get("mark_dir"):
            mark_dir = Path(spec["mark_dir"])
        return cls(kind=spec["kind"], step=int(spec.get("step", 1)), at=at, mark_dir=mark_dir)

    def corrupt_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss, or NaN when a ``nan`` fault is due at this step."""
        if self.kind == "nan" and step == self.step:
            return loss * float("nan")
        return loss

    def maybe_fail(self, step: int) -> None:
        """Raise or die when an ``oom``, ``kill``, ``error`` or ``crash`` fault is due after
        this optimizer step."""
        if step != self.step:
            return
        if self.kind == "oom":
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected fault)")
        if self.at == "step":
            self._fail(step)

    def mid_checkpoint(self, step: int) -> None:
        """Die or raise half-way through writing the checkpoint of the rung at ``step``."""
        if self.at == "checkpoint" and step >= self.step:
            self._fail(step)

    def after_rung(self, step: int) -> None:
        """Die or raise just after the rung at ``step`` was reported."""
        if self.at == "rung" and step >= self.step:
            self._fail(step)

    def _fail(self, step: int) -> None:
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "error":
            raise RuntimeError(f"injected error at step {step}")
        if self.kind == "crash":
            mark = Path(self.mark_dir or ".") / CRASHED
            if mark.exists():  # crashed once already: this is the retry
                return
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(f"{self.at} {step}\n", encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)
