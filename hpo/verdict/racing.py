"""Racing at a rung: is a trial, part-way through its prompts, significantly worse than the
rung's reference?

F-Race (Birattari et al. 2002) and irace (López-Ibáñez et al. 2016) evaluate candidates on
instances one block at a time and drop a candidate as soon as a statistical test over the
instances seen so far says it is worse; Optuna's ``WilcoxonPruner`` does the same with a paired
signed-rank test against the best trial's per-instance values. Here the instances are the
held-out prompts: every trial draws them in one shared shuffled order with the same seeds
(``trials.eval.evaluator.prompt_order``), so a trial's first ``n`` prompt means pair one to one
with the reference's scores on the same prompts.

**The reference** at a rung (the training step), among the trials that have scored that rung in
full (every prompt of its budget), by the mean score:

- ``against: best``: the best one; with a preservation requirement, the best *feasible* one (a
  trial that keeps the base model must not be raced out by one that breaks it).
- ``against: cutoff``: the one at ASHA's cutoff. Ray Tune's ``AsyncHyperBandScheduler`` lets a
  trial go on from a rung when its score is at least the ``(1 - 1/reduction_factor)`` quantile
  of the scores recorded there (``numpy.nanpercentile``, all trials, feasible or not: ASHA sees
  the raw metric). The reference is the recorded trial at that quantile's place in the sorted
  scores, rounded down (toward the worse trial: racing must not stop more than ASHA would).
  ASHA records every trial that reaches a milestone, the ones it then stops too, so its cutoff
  falls as poor trials arrive; a trial racing stops never finishes the rung, so it is recorded
  with the prompts it did draw (a *partial* record: its mean over those prompts, an unbiased
  estimate of its full score). Without that, one early trial far above the rest stays the
  cutoff, every later trial is raced out against it, and the rung never fills. A partial
  record may be the cutoff; a trial is then paired with it on the prompts both drew.
  Racing against the cutoff happens only where ASHA decides: at its milestones, and never at
  a trial's *last* rung (its ``max_train_steps``): ASHA stops a trial to save its later
  steps, so a trial at its last step is kept, COMPLETE, whatever its score. Racing it there,
  or at a rung between milestones, would stop trials ASHA keeps and shrink the pool the winner
  is chosen from. ``against: best`` races at every rung: a trial significantly worse than the
  best cannot win.

Until some trial has finished a rung, the rung has no reference and nobody is stopped there.

**The decision**, after each chunk of at least ``min_prompts`` prompts: with ``d_i = trial_i -
reference_i`` over the prompts drawn so far, the one-sided p-value of "the trial is worse"
(``t``: Student's paired t-test, ``scipy.stats.ttest_1samp(d, 0, alternative="less")``;
``wilcoxon``: the signed-rank test, ``scipy.stats.wilcoxon(d, alternative="less")``). Below
``level`` the trial stops drawing. A trial as good as the reference is stopped at one look with
probability ``level`` at most (the test's size); over the looks of a rung (``(budget -
min_prompts) / chunk`` of them) at most their sum (Bonferroni), and much less since the looks
share their prompts. That false-stop rate is what racing risks; the winner's claim does not rest
on it: it rests on the confirmation on fresh seeds, which always scores every prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from hpo.sweep.racing import Racing


def one_sided_p(differences: Sequence[float], test: str) -> float:
    """p-value of "the mean (``t``) or median (``wilcoxon``) difference is below 0".

    With fewer than 2 differences, or all of them equal (the t statistic is undefined), the
    p-value is 0 when they are all below 0 and 1 otherwise: a constant loss on every prompt is
    as clear as a difference gets. Raises ``ValueError`` for an unknown test.
    """
    d = np.asarray(differences, dtype=float)
    if test not in ("t", "wilcoxon"):
        raise ValueError(f"racing test must be t or wilcoxon (got {test!r})")
    if d.size < 2 or np.all(d == d[0]):
        return 0.0 if d.size and np.all(d < 0) else 1.0
    if test == "t":
        return float(stats.ttest_1samp(d, 0.0, alternative="less").pvalue)
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative="less").pvalue)


@dataclass(frozen=True)
class Reference:
    """One full record at one rung: its trial number, mean score and prompt scores."""

    trial: int
    score: float
    per_prompt: dict[int, float]  # prompt place -> prompt mean
    usable: bool = True  # may be the best (feasible where preservation is required)
    partial: bool = False  # stopped by racing part-way: per_prompt holds the prompts it drew


def _best(records: Sequence[Reference]) -> Reference | None:
    usable = [r for r in records if r.usable]
    return max(usable, key=lambda r: r.score) if usable else None


class RungReferences:
    """The reference of each rung, and the racing decision against it (module docstring).

    Fed by the orchestrator with every rung a trial finishes (:meth:`record`), asked by trials
    part-way through a rung (:meth:`decide`). Pure bookkeeping: the Ray side lives in
    ``hpo.dispatch.referee``.
    """

    def __init__(self, racing: Racing) -> None:
        self.racing = racing
        self.records: dict[int, list[Reference]] = {}

    def record(self, step: int, trial: int, per_prompt: Sequence[float],
               prompt_indices: Sequence[int] | None = None, usable: bool = True,
               partial: bool = False) -> None:
        """A rung trial ``trial`` scored at ``step`` (``prompt_indices``: the places of
        ``per_prompt``'s prompts, None: all in order): in full, or ``partial`` (racing stopped
        it there). ``usable`` False (it broke a preservation requirement, or could not be
        judged) and ``partial`` keep it from being the best; both still count toward ASHA's
        cutoff, as they do for ASHA."""
        if not per_prompt:
            return
        places = list(prompt_indices) if prompt_indices is not None else range(len(per_prompt))
        scores = {int(p): float(v) for p, v in zip(places, per_prompt, strict=True)}
        if not all(math.isfinite(v) for v in scores.values()):
            return
        score = sum(scores.values()) / len(scores)
        self.records.setdefault(step, []).append(
            Reference(trial, score, scores, usable and not partial, partial))

    @property
    def best(self) -> dict[int, Reference]:
        """Rung step -> its best usable record (the first of equals)."""
        best = {step: _best(records) for step, records in self.records.items()}
        return {step: ref for step, ref in best.items() if ref is not None}

    def reference(self, step: int) -> Reference | None:
        """The record a trial is raced against at ``step`` (module docstring), or None."""
        records = self.records.get(step) or []
        if self.racing.against == "best" or not records:
            return _best(records)
        ranked = sorted(records, key=lambda r: r.score)
        keep = self.racing.keep_fraction or 0.5
        return ranked[math.floor((1.0 - keep) * (len(ranked) - 1))]

    def decide(self, step: int, prompt_indices: Sequence[int], per_prompt: Sequence[float],
               final: bool = False) -> dict[str, Any] | None:
        """A stop decision for a trial with ``per_prompt`` scores on the prompts at
        ``prompt_indices`` of rung ``step`` (``final``: the trial's last rung), or None to go
        on (too few prompts, no reference there yet, against ASHA's cutoff a last rung or one
        where ASHA decides nothing, or not significantly worse). The decision: the prompts
        compared, the mean difference and its paired stderr, the p-value, the test, level and
        reference."""
        racing = self.racing
        if racing.against == "cutoff" and (final or not racing.asha_decides_at(step)):
            return None
        ref = self.reference(step)
        if ref is None or len(prompt_indices) < racing.min_prompts:
            return None
        # Paired on the prompts both drew: all of this trial's against a full record; fewer
        # against a partial one, or a subset rung's record of another size.
        shared = [(int(p), float(v)) for p, v in zip(prompt_indices, per_prompt, strict=True)
                  if int(p) in ref.per_prompt]
        if len(shared) < racing.min_prompts:
            return None
        d = np.array([v - ref.per_prompt[p] for p, v in shared])
        p_value = one_sided_p(d, racing.test)
        if p_value >= racing.level:
            return None
        stderr = float(stats.sem(d, ddof=1)) if d.size > 1 else math.nan
        return {"step": step, "n": int(d.size), "delta": float(d.mean()),
                "stderr": stderr if math.isfinite(stderr) else None, "p_value": p_value,
                "test": racing.test, "level": racing.level, "against": racing.against,
                "reference_trial": ref.trial, "reference_score": ref.score}
