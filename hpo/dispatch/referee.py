"""The racing referee: one small Ray actor that holds each rung's reference and answers trials.

A trial asks part-way through a rung ("these are my scores on the prompts drawn so far: do I
go on?"); the driver's :class:`~hpo.dispatch.recorder.StudyRecorder` tells the referee every
rung a trial finishes. The statistics and the bookkeeping are
:class:`hpo.verdict.racing.RungReferences`; this module only puts them where every trial of the
cluster can reach them. ``trials`` never imports it: the trial gets a plain callable
(:func:`asker`), the orchestrator answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray

from hpo.sweep.racing import Racing
from hpo.verdict.racing import RungReferences


@ray.remote(num_cpus=0)
class Referee:
    """:class:`RungReferences` as an actor (calls run one at a time, in arrival order)."""

    def __init__(self, racing: Racing) -> None:
        self.references = RungReferences(racing)

    def record(self, step: int, trial: int, per_prompt: Sequence[float],
               prompt_indices: Sequence[int] | None, usable: bool,
               partial: bool = False) -> None:
        self.references.record(step, trial, per_prompt, prompt_indices, usable, partial)

    def decide(self, step: int, prompt_indices: Sequence[int], per_prompt: Sequence[float],
               final: bool = False) -> dict[str, Any] | None:
        return self.references.decide(step, prompt_indices, per_prompt, final)

    def references_held(self) -> dict[int, int]:
        """Rung step -> the reference's trial number (for tests and the curious)."""
        held = {step: self.references.reference(step) for step in self.references.records}
        return {step: ref.trial for step, ref in held.items() if ref is not None}


def start(racing: Racing) -> Any:
    """A new referee on the connected cluster (no CPU reserved: it only compares lists)."""
    return Referee.remote(racing)


def asker(referee: Any, last_step: int):
    """The ``race`` callable a trial is given (``trials.train.loop.RungRace``);
    ``last_step``: the trial's ``max_train_steps``, its last rung."""
    def race(step: int, prompt_indices: list[int], per_prompt: list[float]
             ) -> Mapping[str, Any] | None:
        return ray.get(referee.decide.remote(step, prompt_indices, per_prompt,
                                             step >= last_step))
    return race
