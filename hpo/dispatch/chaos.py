"""Fault injection for a whole sweep (``--inject-faults kill=0.1,nan=0.05``): the soak test.

Each trial draws its fault from a generator seeded by (seed, trial id), so a trial that is
retried meets the same fault again and the draw does not depend on scheduling order. The
fault itself is carried out inside the trial by ``trials.train.faults``.

A kind may name its moment and step, ``KIND@AT[:STEP]=RATE``: ``crash@rung:5=1.0`` SIGKILLs
every trial once, just after its first rung at or after step 5 (the retry resumes from that
rung). Without them the step is drawn, and a ``crash`` draws its moment too (mid-step,
mid-checkpoint, or after a rung).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from trials.api import FAULT_KINDS

MOMENTS = ("step", "checkpoint", "rung")  # trials.train.faults: when a fault strikes


@dataclass(frozen=True)
class ChaosPlan:
    """Probabilities per fault kind; an empty plan injects nothing."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def fault_for(self, trial_key: str, max_steps: int) -> dict[str, Any] | None:
        """The fault this trial meets (kind and optimizer step), or None."""
        if not self.rates:
            return None
        rng = random.Random(f"{self.seed}:{trial_key}")
        draw, edge = rng.random(), 0.0
        for key, rate in sorted(self.rates.items()):
            edge += rate
            if draw < edge:
                kind, at, step = _parts(key)
                fault: dict[str, Any] = {
                    "kind": kind, "step": step or rng.randint(1, max(1, max_steps))}
                if at or kind == "crash":
                    fault["at"] = at or rng.choice(MOMENTS)
                return fault
        return None


def _parts(key: str) -> tuple[str, str | None, int | None]:
    """``KIND[@AT[:STEP]]`` as (kind, moment or None, step or None)."""
    kind, _, when = key.partition("@")
    at, _, step = when.partition(":")
    return kind, at or None, int(step) if step else None


def parse_chaos(text: str | None, seed: int = 0) -> ChaosPlan:
    """Read ``kill=0.1,nan=0.05`` (or ``crash@rung:5=1.0``, see the module docstring) into a
    plan; raises ValueError with a one-line message."""
    if not text:
        return ChaosPlan(seed=seed)
    rates: dict[str, float] = {}
    for part in text.split(","):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        name, _, when = kind.partition("@")
        at, _, step = when.partition(":")
        if not sep or name not in FAULT_KINDS or (when and (
                at not in MOMENTS or (step and not step.isdigit()) or (name in ("nan", "oom")
                and at != "step"))):
            raise ValueError(f"--inject-faults: expected KIND[@AT[:STEP]]=RATE with KIND one "
                             f"of {', '.join(FAULT_KINDS)} and AT one of {', '.join(MOMENTS)} "
                             f"(got {part!r})")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"--inject-faults: {kind}: rate must be a number (got {value!r})") \
                from None
        if not 0 <= rate <= 1:
            raise ValueError(f"--inject-faults: {kind}: rate must be in [0, 1] (got {rate:g})")
        rates[kind] = rate
    if sum(rates.values()) > 1:
        raise ValueError(f"--inject-faults: rates add up to {sum(rates.values()):g}, over 1")
    return ChaosPlan(rates=rates, seed=seed)
