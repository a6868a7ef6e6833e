"""How many prompts and images a rung needs, from the per-prompt spread the study holds.

Every trial is scored on the same prompts and seeds as the base model, so two evaluations are
compared prompt by prompt: the paired standard error of a difference over ``n`` prompts is
``sd / sqrt(n)``, where ``sd`` is the spread over prompts of the per-prompt paired difference.
To tell apart two evaluations that differ by ``d`` with a two-sided 5 % paired test at 80 %
power, ``n = (z_0.975 + z_0.80)**2 * sd**2 / d**2 = 7.85 * sd**2 / d**2`` prompts are needed
(the normal approximation of the paired t-test's sample size; Lachin 1981, "Introduction to
sample size determination and power analysis for clinical trials", Controlled Clinical
Trials 2(2), eq. 3.1).

A prompt's score is the mean of ``m`` images, so its variance over prompts has two parts: the
prompts' own spread ``A`` and the images' noise ``B`` shrunk by ``m``: ``sd_m**2 = A + B / m``.
A confirmed study holds the spread at two image counts: the search's rungs (``m_r`` images per
prompt, the search seeds) and the confirmation (``m_c``, fresh seeds), both paired with the
base model on the same seeds, for the same trials. Two equations give ``A`` and ``B``
(:func:`split_variance`), and so the paired stderr of any ``n`` prompts x ``m`` images:
``sqrt((A + B / m) / n)``. With one image count (no confirmation, or the same count) only the
spread at that count is known, and the lines say so.

The figures are estimates from a few trials' 48 or so prompts; they say which way to move
(more prompts, or more images per prompt), not a guarantee.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from hpo.verdict import winner
from hpo.verdict.paired import paired_or_none
from trials.api import PER_PROMPT

# (z_0.975 + z_0.80)**2: two-sided 5 % test, 80 % power (module docstring).
POWER_FACTOR = (1.959964 + 0.841621) ** 2


@dataclass(frozen=True)
class Spread:
    """The spread over prompts of per-prompt paired differences against the base model."""

    sd: float  # CLIP-T points
    images_per_prompt: int
    pairs: int  # trials whose differences it pools


@dataclass(frozen=True)
class Precision:
    """What a study says about its rungs' precision: the spread at the rungs' image count,
    and where a confirmation gives a second count, the prompt and image parts."""

    rungs: Spread
    confirmation: Spread | None
    prompts: int  # held-out prompts a rung scores
    prompt_part: float | None = None  # A, CLIP-T points squared
    image_part: float | None = None  # B, per image

    def stderr(self, prompts: int, images: int) -> float | None:
        """Paired stderr of ``prompts`` x ``images`` (None without the split)."""
        if self.prompt_part is None or self.image_part is None:
            return None
        return math.sqrt((self.prompt_part + self.image_part / images) / prompts)

    def prompts_for(self, gap: float, images: int) -> int | None:
        """Prompts that tell apart a difference of ``gap`` at ``images`` per prompt."""
        if gap <= 0 or self.prompt_part is None or self.image_part is None:
            return None
        return math.ceil(POWER_FACTOR * (self.prompt_part + self.image_part / images) / gap**2)


def pooled_sd(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float | None:
    """The root mean variance of the paired differences ``a - b`` over prompts, pooled over
    ``pairs``; None when none pairs."""
    variances = []
    for a, b in pairs:
        paired = paired_or_none(a, b)
        if paired is not None and paired.n >= 2:
            variances.append(statistics.variance([x - y for x, y in zip(a, b, strict=True)]))
    return math.sqrt(statistics.mean(variances)) if variances else None


def split_variance(rungs: Spread, confirmation: Spread) -> tuple[float, float] | None:
    """``(A, B)`` of ``sd_m**2 = A + B / m`` from the spreads at two image counts; each
    clipped at 0 (sampling noise can make a difference of two estimates negative). None when
    the counts are equal."""
    m_r, m_c = rungs.images_per_prompt, confirmation.images_per_prompt
    if m_r == m_c:
        return None
    b = (rungs.sd**2 - confirmation.sd**2) / (1 / m_r - 1 / m_c)
    b = max(b, 0.0)
    a = max(rungs.sd**2 - b / m_r, 0.0)
    return a, b


def measure(study: optuna.Study, images_per_prompt: int) -> Precision | None:
    """The study's precision: the spread of the trials' best rungs against the baseline
    (search seeds, ``images_per_prompt``; the confirmed trials when there are some, else every
    COMPLETE one) and of the confirmed trials against the confirmed base model (fresh seeds).
    None before the baseline and a trial are scored."""
    base = study.user_attrs.get("baseline_per_prompt")
    if not base:
        return None
    complete = [t for t in study.get_trials(deepcopy=False,
                                            states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get(PER_PROMPT)]
    done = winner.confirmations(study)
    confirmed_base = study.user_attrs.get(winner.BASELINE_KEY)
    confirmation = None
    if done and isinstance(confirmed_base, dict) and confirmed_base.get(PER_PROMPT):
        pairs = [(r[PER_PROMPT], confirmed_base[PER_PROMPT]) for r in done.values()
                 if r.get(PER_PROMPT)]
        c_sd = pooled_sd(pairs)
        if c_sd is not None:
            confirmation = Spread(c_sd, int(confirmed_base.get("images_per_prompt") or 0)
                                  or images_per_prompt, len(pairs))
            # the same trials at both image counts, so the two spreads differ by the images
            complete = [t for t in complete if t.number in done]
    sd = pooled_sd([(t.user_attrs[PER_PROMPT], base) for t in complete])
    if sd is None:
        return None
    rungs = Spread(sd, images_per_prompt, len(complete))
    split = split_variance(rungs, confirmation) if confirmation else None
    return Precision(rungs, confirmation, len(base), *(split or (None, None)))


def top_gap(study: optuna.Study, k: int) -> float | None:
    """The search's gap between its best and its ``k``-th best COMPLETE trial: what the rungs
    must resolve to rank the top ``k`` (for the confirmation to pick among)."""
    values = sorted((t.value for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None),
        reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    if len(values) < max(k, 2):
        return None
    return abs(values[0] - values[min(k, len(values)) - 1])


def lines(study: optuna.Study) -> list[str]:
    """The dry run's and the summary's lines on the rungs' precision (empty before there is
    anything to measure), from the study's own records: the rungs' image count (study attr
    ``images_per_prompt``) and the confirmation's ``top_k``."""
    attrs = study.user_attrs
    p = measure(study, int(attrs.get("images_per_prompt") or 1))
    k = int((attrs.get(winner.SETTINGS_KEY) or {}).get("top_k") or 3)
    if p is None:
        return []
    r = p.rungs
    out = [f"  rung precision paired spread over prompts {r.sd:.2f} at {r.images_per_prompt} "
           f"image(s) per prompt ({r.pairs} trial(s)' best rungs against the base model): a rung "
           f"of {p.prompts} prompts has a paired stderr of {r.sd / math.sqrt(p.prompts):.2f}"]
    if p.confirmation is None or p.prompt_part is None or p.image_part is None:
        out.append("                 (a confirmation at another image count splits it into "
                   "prompts' and images' parts)")
        return out
    c = p.confirmation
    out.append(f"                 at {c.images_per_prompt} image(s) on fresh seeds: {c.sd:.2f};"
               f" so prompts' part {math.sqrt(p.prompt_part):.2f}, one image's noise "
               f"{math.sqrt(p.image_part):.2f} (sd**2 = A + B / images)")
    gap = top_gap(study, k)
    if gap:
        needs = ", ".join(f"{p.prompts_for(gap, m)} x {m}" for m in (1, 2, 4))
        out.append(f"                 to tell the search's top {k} apart (gap {gap:.2f}) at 80 %"
                   f" power: prompts x images per prompt {needs}")
    return out
