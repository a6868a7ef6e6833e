"""Fault injection for a whole sweep (``--inject-faults kill=0.1,nan=0.05``): the soak test.

Each trial draws its fault from a generator seeded by (seed, trial id), so a trial that is
retried meets the same fault again and the draw does not depend on scheduling order. The
fault itself is carried out inside the trial by ``trials.train.faults``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from trials.api import FAULT_KINDS


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
        for kind, rate in sorted(self.rates.items()):
            edge += rate
            if draw < edge:
                return {"kind": kind, "step": rng.randint(1, max(1, max_steps))}
        return None


def parse_chaos(text: str | None, seed: int = 0) -> ChaosPlan:
    """Read ``kill=0.1,nan=0.05`` into a plan; raises ValueError with a one-line message."""
    if not text:
        return ChaosPlan(seed=seed)
    rates: dict[str, float] = {}
    for part in text.split(","):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in FAULT_KINDS:
            raise ValueError(f"--inject-faults: expected KIND=RATE with KIND one of "
                             f"{', '.join(FAULT_KINDS)} (got {part!r})")
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
