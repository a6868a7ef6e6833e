"""Did a LoRA keep the base model? Paired statistics of the control prompts, and feasibility.

A rung's control measures come per control prompt (:mod:`trials.eval.preservation`). Paired
over prompts (:mod:`hpo.verdict.paired`, same seeds):

- ``control_delta``: control score minus the base model's (``baseline_control_per_prompt``),
  with its paired standard error and two-sided paired t-test p-value;
- ``drift``: mean image similarity to the base model's twin image (100 = unchanged), with the
  standard error over prompts;
- ``leak``: the brand margin's rise over the base model's; its p-value tests ``leak = 0``.

The sweep's requirement (:class:`hpo.sweep.preservation.Require`) becomes named Optuna
constraint values, feasible when every value is <= 0 (Optuna 5's ``Trial.set_constraint``,
stored as the trial's ``constraints:<name>`` system attrs, read back as
``FrozenTrial.constraints``; TPE and NSGA-II learn the feasible region from them and
optuna-dashboard marks infeasible trials):

- ``control_not_worse``: ``-t - t_crit``, with ``t = control_delta / stderr`` and ``t_crit`` the
  two-sided critical value of Student's t with ``n - 1`` degrees of freedom at ``level``. It is
  > 0 exactly when the control score is significantly *below* the base model's (the paired
  t-test rejects at ``level`` and the difference is negative);
- ``control_max_drop``: ``-max_drop - control_delta`` (> 0 when the control score fell further);
- ``leak_not_above``: ``t_leak - t_crit`` (> 0 when the leak is significantly above 0);
- ``leak_max``: ``leak - max_leak``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial
from scipy import stats

from hpo.sweep.preservation import Require
from hpo.verdict.paired import paired_or_none
from trials.api import (
    CONTROL_PER_PROMPT,
    CONTROL_SCORE,
    DRIFT,
    DRIFT_PER_PROMPT,
    LEAK,
    LEAK_PER_PROMPT,
)


def control_stats(rung: Mapping[str, Any], base_control: Sequence[float] | None
                  ) -> dict[str, Any]:
    """A rung's preservation figures (empty when the rung has no control scores)."""
    mine = rung.get(CONTROL_PER_PROMPT)
    if not mine:
        return {}
    out: dict[str, Any] = {CONTROL_SCORE: rung.get(CONTROL_SCORE)}
    paired = paired_or_none(mine, base_control)
    if paired is not None:
        d = paired.as_dict()
        out.update(control_delta=d["delta"], control_delta_stderr=d["stderr"],
                   control_delta_p_value=d["p_value"], control_n=paired.n)
    for name, per_prompt in ((DRIFT, DRIFT_PER_PROMPT), (LEAK, LEAK_PER_PROMPT)):
        values = rung.get(per_prompt)
        if not values:
            continue
        vs_zero = paired_or_none(values, [0.0] * len(values))
        if vs_zero is None:
            continue
        d = vs_zero.as_dict()
        out[name] = d["delta"]
        out[f"{name}_stderr"] = d["stderr"]
        if name == LEAK:
            out["leak_p_value"] = d["p_value"]
    return out


def constraint_values(require: Require, figures: dict[str, Any]) -> dict[str, float] | None:
    """Named Optuna constraint values (feasible when all <= 0) of a rung's
    :func:`control_stats`; None when the control delta is missing (no baseline to pair with)."""
    delta = figures.get("control_delta")
    if delta is None:
        return None
    n = int(figures.get("control_n") or 0)
    values: dict[str, float] = {}
    if require.not_worse:
        values["control_not_worse"] = _significant(-delta, figures.get("control_delta_stderr"),
                                                   n, require.level)
    if require.max_drop is not None:
        values["control_max_drop"] = -require.max_drop - delta
    leak = figures.get("leak")
    if require.leak_not_above or require.max_leak is not None:
        if leak is None:  # no base-model control features: the leak cannot be judged
            return None
        if require.leak_not_above:
            values["leak_not_above"] = _significant(leak, figures.get("leak_stderr"), n,
                                                    require.level)
        if require.max_leak is not None:
            values["leak_max"] = leak - require.max_leak
    return {k: float(v) for k, v in values.items()}


def _significant(excess: float, stderr: float | None, n: int, level: float) -> float:
    """``t - t_crit`` for an ``excess`` (> 0 is bad) with paired ``stderr`` over ``n``
    prompts: > 0 exactly when the two-sided paired t-test at ``level`` rejects and the
    difference is bad. Zero spread: any bad difference counts as significant."""
    if n < 2 or stderr is None:
        return 1.0 if excess > 0 else 0.0
    if stderr == 0:
        return 1.0 if excess > 0 else -1.0
    t_crit = float(stats.t.ppf(1 - level / 2, n - 1))
    return excess / stderr - t_crit


def is_feasible(values: Mapping[str, float] | None) -> bool | None:
    """True/False for constraint values; None when there are none."""
    if not values:
        return None
    return all(math.isfinite(v) and v <= 0 for v in values.values())


def trial_feasible(trial: FrozenTrial) -> bool | None:
    """Whether a finished trial met the sweep's requirement, from Optuna's own record of its
    constraints (None: nothing was required or measured)."""
    return is_feasible(trial.constraints)


def verdict(figures: dict[str, Any], require: Require | None, who: str) -> str:
    """One line on ``who`` (e.g. "trial 4 on fresh seeds"): its control Δ, drift and leak,
    and whether it keeps the base model by the sweep's requirement."""
    parts = []
    if figures.get("control_delta") is not None:
        p = figures.get("control_delta_p_value")
        se = figures.get("control_delta_stderr")
        parts.append(f"control Δ {figures['control_delta']:+.4f}"
                     + (f" ± {se:.4f}" if se is not None else "")
                     + (f" (p = {p:.3g})" if p is not None else ""))
    if figures.get("drift") is not None:
        parts.append(f"drift {figures['drift']:.2f}/100")
    if figures.get("leak") is not None:
        se = figures.get("leak_stderr")
        parts.append(f"leak {figures['leak']:+.4f}" + (f" ± {se:.4f}" if se is not None else ""))
    line = ", ".join(parts) or "no control scores"
    if require is None:
        return f"{who}: {line} (nothing required)"
    ok = is_feasible(constraint_values(require, figures))
    if ok is None:
        return f"{who}: {line}; preservation cannot be judged (no base-model control scores)"
    return (f"{who} preserves the base model ({require.describe()}): {line}" if ok else
            f"{who} does NOT preserve the base model ({require.describe()}): {line}")
