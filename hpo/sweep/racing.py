"""Evaluation that races, and prompts as a fidelity: the sweep file's ``racing`` section and
``early_terminate.rung_prompts``.

Drawing images is most of a sweep's compute (``hpo.sweep.cost``), and a rung draws every
held-out prompt for every trial, even one that is clearly worse after a handful of prompts.

```yaml
racing:                # optional; without it every rung draws all its prompts at once
  chunk: 8             # prompts drawn between two decisions
  min_prompts: 16      # no decision before this many prompts
  test: t              # one-sided paired test against the rung's reference: t | wilcoxon
  level: 0.01          # each decision's significance level
  against: best        # the reference: the rung's best trial, or ASHA's cutoff there

early_terminate:
  type: asha
  grace_steps: 15
  rung_prompts: 16     # optional: ASHA-only rungs score this many prompts (prompts as a fidelity)
```

With ``racing`` a rung draws its prompts ``chunk`` at a time, in one shuffled order every trial
shares (``trials.eval.evaluator.prompt_order``), and after each chunk the orchestrator compares
the trial, paired over the prompts drawn so far, with the rung's reference
(:mod:`hpo.verdict.racing`): a trial significantly worse stops drawing and is stopped early
(PRUNED), its partial score kept in the study as ``raced``.

``against``: ``best`` (the default) races against the best trial that finished the rung, so it
also stops trials ASHA would keep (above its cutoff but below the best); ``cutoff`` races
against the trial at ASHA's cutoff there (the one a ``1 / reduction_factor`` share of the rung's
trials score above), so it only stops, sooner, what ASHA would stop at the rung's end anyway:
it saves fewer images and changes the search less. ``cutoff`` needs ``early_terminate``, and
races only where ASHA decides: at its milestones (``grace_steps * reduction_factor**k``), never
at a trial's last step.

``rung_prompts``: the rungs that only feed ASHA's decisions (its milestones before the step
counts a sweep may export, ``hpo.sweep.fidelity``) score the first ``rung_prompts`` prompts of
that order; the rungs where step counts are compared, and the confirmation, score all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trials.api import CLIP_SCORE, Section, setting, settings

TESTS = ("t", "wilcoxon")
AGAINST = ("best", "cutoff")
DEFAULT_CHUNK = 8
DEFAULT_MIN_PROMPTS = 16
# One look's false-stop probability for a trial exactly as good as the reference; a rung of
# 48 prompts in chunks of 8 from 16 has 4 looks (hpo.verdict.racing).
DEFAULT_LEVEL = 0.01
MIN_DECISION_PROMPTS = 4  # a paired test over fewer prompts says little


def asha_milestones(grace_steps: int, reduction_factor: int, max_steps: int) -> tuple[int, ...]:
    """ASHA's milestones up to ``max_steps``: ``grace_steps * reduction_factor**k`` (Li et al.
    2020; Ray Tune's ``AsyncHyperBandScheduler`` rungs)."""
    out, step = [], grace_steps
    while step <= max_steps:
        out.append(step)
        step *= reduction_factor
    return tuple(out)


@dataclass(frozen=True)
class Racing:
    """The ``racing`` section (see the module docstring)."""

    chunk: int = setting(DEFAULT_CHUNK, doc="Prompts drawn between two decisions", minimum=1)
    min_prompts: int = setting(DEFAULT_MIN_PROMPTS, doc="No decision before this many prompts "
                               "(below the number of held-out prompts)",
                               minimum=MIN_DECISION_PROMPTS)
    test: str = setting("t", doc="One-sided paired test against the rung's reference",
                        choices=TESTS)
    level: float = setting(DEFAULT_LEVEL, doc="Each decision's significance level", above=0,
                           maximum=0.5)
    against: str = setting("best", doc="The reference: the rung's best trial, or ASHA's "
                           "cutoff there (needs early_terminate)", choices=AGAINST)
    # With against=cutoff: the share of a rung's trials ASHA lets go on (1 / reduction_factor)
    # and its first milestone; None: every rung is one (a replay with a single rung).
    keep_fraction: float | None = setting(None, doc="1 / ASHA's reduction_factor",
                                          derived=True, free="follows early_terminate")
    grace_steps: int | None = setting(None, doc="ASHA's first milestone", derived=True,
                                      free="follows early_terminate")

    def asha_decides_at(self, step: int) -> bool:
        """Whether ``step`` is one of ASHA's milestones, ``grace_steps * r**k`` with ``r =
        1 / keep_fraction`` (always True without ``grace_steps``)."""
        if self.grace_steps is None or not self.keep_fraction:
            return True
        return step in asha_milestones(self.grace_steps, round(1.0 / self.keep_fraction), step)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"chunk": self.chunk, "min_prompts": self.min_prompts,
                                  "test": self.test, "level": self.level}
        if self.against != "best":
            out["against"] = self.against
        return out

    def looks(self, n_prompts: int) -> int:
        """Decisions a rung of ``n_prompts`` prompts can take (after each chunk but the last,
        from ``min_prompts`` on)."""
        ends = range(self.chunk, n_prompts, self.chunk)
        return sum(1 for end in ends if end >= self.min_prompts)

    def describe(self, n_prompts: int) -> str:
        """One line for the dry run and the study."""
        name = "paired t-test" if self.test == "t" else "Wilcoxon signed-rank test"
        against = "the rung's best" if self.against == "best" else "ASHA's cutoff at the rung"
        return (f"racing: prompts in chunks of {self.chunk}; from {self.min_prompts} prompts "
                f"on, a trial whose one-sided {name} against {against} says worse at "
                f"level {self.level:g} stops drawing ({self.looks(n_prompts)} look(s) per "
                f"rung of {n_prompts} prompts)")


def parse_racing(root: Section, n_prompts: int, metric: str, multi_objective: bool,
                 reduction_factor: int | None = None, grace_steps: int | None = None
                 ) -> Racing | None:
    """``racing``, or None without it. ``reduction_factor``, ``grace_steps``: ASHA's, None
    without ``early_terminate``. Raises ``ConfigError`` naming the key: racing needs the single
    objective ``clip_score`` (the per-prompt CLIP-T it pairs), ``min_prompts`` of at least 4
    and below the number of held-out prompts, a ``chunk`` that leaves a decision point between
    them (else it never decides), and ``against: cutoff`` needs ASHA."""
    if not root.has("racing"):  # null: no racing, as when left out
        return None
    section = root.sub("racing")
    racing = settings.read(Racing, section)
    if multi_objective or metric != CLIP_SCORE:
        raise root.error(f"races on the held-out prompts' CLIP-T, so it needs the single "
                         f"objective clip_score (the metric is {metric}"
                         f"{' among several' if multi_objective else ''}); drop racing",
                         "racing")
    if racing.against == "cutoff":
        if reduction_factor is None:
            raise section.error("cutoff races against ASHA's cutoff, and this sweep has no "
                                "early_terminate: use best, or add early_terminate", "against")
        racing = replace(racing, keep_fraction=1.0 / reduction_factor, grace_steps=grace_steps)
    if racing.min_prompts >= n_prompts:
        raise section.error(f"must be below the number of held-out prompts ({n_prompts}), or "
                            f"racing never decides (got {racing.min_prompts})", "min_prompts")
    if racing.looks(n_prompts) == 0:
        # Decisions come after each chunk but the last, from min_prompts on: a chunk as large
        # as the prompts (or one that jumps from below min_prompts to the end) leaves none.
        raise section.error(f"racing never decides: a rung of {n_prompts} prompts drawn "
                            f"{racing.chunk} at a time has no decision point from min_prompts "
                            f"({racing.min_prompts}) on and before its last prompt; allowed: a "
                            f"chunk that ends between {racing.min_prompts} and {n_prompts - 1} "
                            f"prompts (got {racing.chunk})", "chunk")
    return racing


def check_rung_prompts(section: Section, value: int | None, n_prompts: int) -> None:
    """``early_terminate.rung_prompts``: None, or below the number of held-out prompts (at
    ASHA-only rungs; ``ConfigError`` naming the key else)."""
    if value is not None and value >= n_prompts:
        raise section.error(f"must be below the number of held-out prompts ({n_prompts}); "
                            f"leave it out to score them all (got {value})", "rung_prompts")
