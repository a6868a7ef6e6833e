"""Training steps as a fidelity, not a search dimension, where a shorter run is a prefix.

With a ``constant`` learning rate (or ``constant_with_warmup`` once every candidate step count is
past the warmup) the learning rate at step ``s`` does not depend on ``max_train_steps``, and
neither do the data order and the random draws (they follow the trial's seed). So the first 400
steps of a 1000-step trial ARE a 400-step trial, and its rung at step 400 scores exactly the
LoRA a 400-step trial would have exported. Searching ``max_train_steps`` as its own dimension
then trains the same prefixes again and again.

So, when the schedule allows it (:func:`plan_steps`):

- ``max_train_steps`` leaves the search space; every trial is set to train to the largest
  step count the sweep allows (ASHA's ``max_t``) and ASHA stops the poor ones early;
- a trial is scored at the step counts the sweep lists as candidates and at ASHA's rungs
  (``grace_steps * reduction_factor**k``), and nowhere else: each scored rung either feeds an
  ASHA decision or measures a candidate step count (:func:`fidelity_rungs`);
- the best rung's step is exported as the winner's ``max_train_steps`` (``hpo.outputs.export``).

Otherwise (``cosine``, ``linear``, a warmup longer than some candidate) a shorter run follows
another curve, and ``max_train_steps`` stays a dimension searched like the others. The dry run
says which applies and why.

Li et al. (2018), "Hyperband", and Li et al. (2020), "A System for Massively Parallel
Hyperparameter Tuning" (ASHA), treat training iterations as the resource (fidelity) in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hpo.sweep.racing import asha_milestones
from hpo.sweep.spec import Parameter, Sweep

STEPS_AS = ("auto", "fidelity", "dimension")
# Schedules whose learning rate at step s does not depend on the total number of steps.
PREFIX_SCHEDULES = ("constant", "constant_with_warmup")


@dataclass(frozen=True)
class StepsPlan:
    """How a sweep treats ``max_train_steps``."""

    fidelity: bool
    reason: str
    candidates: tuple[int, ...]  # step counts the sweep may export
    rungs: tuple[int, ...]  # where a trial is scored (fidelity), else empty

    def describe(self) -> str:
        if self.fidelity:
            return (f"a fidelity: every trial trains up to {self.candidates[-1]} steps and is "
                    f"scored at {', '.join(map(str, self.rungs))}; the best rung's step is "
                    f"exported as max_train_steps ({self.reason})")
        return f"a search dimension ({self.reason})"


def is_prefix_schedule(lr_scheduler: str, warmup_steps: int, shortest: int) -> bool:
    """True when a run of ``shortest`` steps or more is a prefix of any longer run."""
    if lr_scheduler == "constant":
        return True
    return lr_scheduler == "constant_with_warmup" and shortest >= warmup_steps


def candidate_steps(sweep: Sweep) -> tuple[int, ...]:
    """The step counts ``max_train_steps`` may take: its values, or the multiples of
    ``eval.every_steps`` inside its range (a continuous range is scored at rungs only)."""
    param = sweep.parameter("max_train_steps")
    assert param is not None
    if param.kind in ("value", "values", "q_uniform"):
        return tuple(sorted({int(v) for v in param.grid() or ()}))
    low, high = int(param.low or 0), int(param.high or 0)
    every = sweep.eval.every_steps
    inside = [s for s in range(every, high + 1, every) if s >= low]
    return tuple(sorted({*inside, high}))


def asha_rungs(sweep: Sweep, max_steps: int) -> tuple[int, ...]:
    """ASHA's milestones up to ``max_steps``: ``grace_steps * reduction_factor**k``."""
    if sweep.early_terminate is None:
        return ()
    et = sweep.early_terminate
    return asha_milestones(et.grace_steps, et.reduction_factor, max_steps)


def fidelity_rungs(sweep: Sweep, candidates: tuple[int, ...]) -> tuple[int, ...]:
    """Scored steps: the candidate step counts, ASHA's milestones and the last step."""
    top = candidates[-1]
    return tuple(sorted({*candidates, *asha_rungs(sweep, top), top}))


def plan_steps(sweep: Sweep, steps_as: str = "auto") -> StepsPlan:
    """Decide whether ``max_train_steps`` is a fidelity; ``steps_as`` forces either way
    (``fidelity`` on a schedule that is not a prefix raises ValueError)."""
    if steps_as not in STEPS_AS:
        raise ValueError(f"--steps-as: must be one of {', '.join(STEPS_AS)} (got {steps_as!r})")
    candidates = candidate_steps(sweep)
    t = sweep.train
    prefix = is_prefix_schedule(t.lr_scheduler, t.lr_warmup_steps, candidates[0])
    if t.lr_scheduler not in PREFIX_SCHEDULES:
        why = f"the {t.lr_scheduler} schedule depends on max_train_steps"
    elif not prefix:
        why = (f"the warmup ({t.lr_warmup_steps} steps) is longer than the shortest candidate "
               f"({candidates[0]} steps)")
    else:
        why = f"with the {t.lr_scheduler} schedule a shorter run is a prefix of a longer one"
    if len(candidates) < 2:
        return StepsPlan(False, "max_train_steps has one value", candidates, ())
    if steps_as == "fidelity" and not prefix:
        raise ValueError(f"--steps-as fidelity: {why}, so a shorter run is not a prefix of a "
                         "longer one")
    if steps_as == "dimension":
        return StepsPlan(False, "--steps-as dimension", candidates, ())
    if not prefix:
        return StepsPlan(False, why, candidates, ())
    return StepsPlan(True, why, candidates, fidelity_rungs(sweep, candidates))


def subset_rungs(sweep: Sweep, plan: StepsPlan) -> tuple[int, ...]:
    """The screening rungs, which only feed ASHA: its milestones that are no candidate step
    count (nor the last step). No constraint is decided there and their LoRA is never exported,
    so they draw the brand prompts alone (no control images); with
    ``early_terminate.rung_prompts`` a subset of them (``hpo.sweep.racing``). Every candidate
    step is scored in full."""
    if not plan.fidelity or sweep.early_terminate is None:
        return ()
    top = plan.candidates[-1]
    return tuple(m for m in asha_rungs(sweep, top) if m not in plan.candidates and m != top)


def apply(sweep: Sweep, plan: StepsPlan) -> Sweep:
    """The sweep a fidelity plan runs: ``max_train_steps`` fixed at the largest candidate, the
    evaluation rungs given explicitly, and the screening rungs (:func:`subset_rungs`) drawing
    brand prompts alone, ``rung_prompts`` of them when the sweep asks for it. A dimension plan
    returns ``sweep`` unchanged."""
    if not plan.fidelity:
        return sweep
    params = tuple(
        Parameter("max_train_steps", "value", value=plan.candidates[-1])
        if p.name == "max_train_steps" else p for p in sweep.parameters)
    subset = subset_rungs(sweep, plan)
    return replace(sweep, parameters=params, eval=replace(
        sweep.eval, rungs=plan.rungs, subset_rungs=subset,
        subset_prompts=sweep.early_terminate.rung_prompts if subset and sweep.early_terminate
        else None))


def exported_steps(sweep: Sweep, trained_steps: int, best_step: int) -> int:
    """``max_train_steps`` for the exported config: the best rung's step where that run is a
    prefix of the trained one, else the steps the trial was trained for."""
    t = sweep.train
    if best_step < trained_steps and is_prefix_schedule(t.lr_scheduler, t.lr_warmup_steps,
                                                        best_step):
        return best_step
    return trained_steps
