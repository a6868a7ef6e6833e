"""Paired differences between two LoRAs (or a LoRA and the base model), over prompts.

Every trial, the baseline and the confirmation runs draw image ``j`` of prompt ``i`` from the
same seed (``trials.eval.score.image_seed``), so two score sets are *paired* by prompt: the
prompt-to-prompt spread (some prompts are easy for every model) cancels in the difference.
The unit is the prompt mean, since the images of one prompt are correlated.

For per-prompt means ``a_i`` and ``b_i`` of the same ``n`` prompts, ``d_i = a_i - b_i``:

- ``delta = mean(d)``; with the same number of images per prompt this equals the difference of
  the two overall scores;
- ``stderr = sd(d) / sqrt(n)`` with the ``n - 1`` (Bessel) standard deviation, the standard
  error of the paired t-test (Student 1908; ``scipy.stats.ttest_rel``, whose statistic is
  ``delta / stderr``);
- ``p_value``: the two-sided paired t-test, ``scipy.stats.ttest_rel(a, b)``.

The unpaired standard error of one score (over its prompt means) also contains the spread of
prompt difficulty, which is the same for every LoRA, so it is far larger than the paired one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Two scores are called distinguishable when the paired t-test rejects "no difference" at this
# level (two-sided).
DEFAULT_LEVEL = 0.05


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over ``n`` paired prompt means, with its paired standard error."""

    delta: float
    stderr: float  # NaN with fewer than 2 prompts
    n: int
    p_value: float  # two-sided paired t-test; NaN with fewer than 2 prompts or zero spread

    def distinguishable(self, level: float = DEFAULT_LEVEL) -> bool:
        """True when the paired t-test says ``a`` and ``b`` differ at ``level``.

        A difference with zero spread over prompts (every prompt moved by the same amount) is
        distinguishable when it is not zero.
        """
        if self.n >= 2 and self.stderr == 0:
            return self.delta != 0
        return math.isfinite(self.p_value) and self.p_value < level

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready (NaN as None), e.g. for Optuna user attrs."""
        def clean(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None
        return {"delta": clean(self.delta), "stderr": clean(self.stderr), "n": self.n,
                "p_value": clean(self.p_value)}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """The paired difference ``a - b`` of two per-prompt score lists in the same prompt order.

    Raises ``ValueError`` when the lists differ in length or are empty (they then do not come
    from the same prompts, and pairing them would be wrong).
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired scores need the same non-empty prompt list (got {x.size} and "
                         f"{y.size} per-prompt scores)")
    d = x - y
    n = int(d.size)
    if n < 2:
        return PairedDifference(float(d[0]), math.nan, n, math.nan)
    stderr = float(stats.sem(d, ddof=1))
    # With zero spread the t statistic is undefined; see distinguishable().
    p_value = math.nan if stderr == 0 else float(stats.ttest_rel(x, y).pvalue)
    return PairedDifference(float(d.mean()), stderr, n, p_value)


def paired_or_none(a: Sequence[float] | None, b: Sequence[float] | None
                   ) -> PairedDifference | None:
    """:func:`paired_difference`, or None when either side is missing or they do not pair."""
    if not a or not b or len(a) != len(b):
        return None
    if any(v is None for v in (*a, *b)):
        return None
    return paired_difference(a, b)


def at_places(values: Sequence[float] | None, places: Sequence[int] | None
              ) -> list[float] | None:
    """``values`` (one per held-out prompt) at ``places`` (a rung that scored a subset), in
    that order; all of them when ``places`` is None."""
    if values is None or places is None:
        return None if values is None else list(values)
    if any(not 0 <= p < len(values) for p in places):
        return None
    return [values[p] for p in places]
