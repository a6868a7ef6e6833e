"""What a sweep's compute is made of, and the least it could be at given settings.

The speed benchmark's ratios between whole sweeps (ASHA vs none) are measured one sweep after
the other, so a change in the machine's load between the arms moves them. This module counts
each arm's *work* instead, which no load can change, and prices it with unit costs pooled over
the arms that are compared:

- a trial's work is its optimizer steps (``last_step``), its rung images (rungs scored x
  held-out prompts x images per prompt; ``score_per_rung`` holds one entry per rung) and one
  setup;
- the unit costs are seconds per optimizer step (``train_seconds / last_step``), per rung image
  (``eval_seconds / rung images``) and per setup, each a ratio of sums over every trial of the
  compared arms, so both arms are priced at the same rates.

It also gives two floors, which say what no implementation can beat at a sweep's settings:

- :func:`~hpo.sweep.cost.ideal_asha` (in the sweep's cost forecast, re-exported here): the
  work of synchronous successive halving (Jamieson & Talwalkar 2016; ASHA, Li et al. 2020,
  approaches it as the trial count grows): all ``n`` trials reach the first milestone,
  ``ceil(n / r**k)`` reach milestone ``k``; every trial is scored at each evaluation rung it
  passes. Against no early stopping (:func:`~hpo.sweep.cost.no_early_stopping`), where each
  trial is scored only at the candidate step counts, this is the smallest compute fraction
  ASHA can have;
- :func:`eval_share_floor`: the evaluation share of a trial if a rung cost only its UNet
  forward passes (no VAE, no CLIP, no pipeline), measured, and the number of rung images at
  which the share would meet a target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hpo.sweep.cost import Work, ideal_asha, no_early_stopping

__all__ = ["UnitCosts", "Work", "arm_work", "eval_share_floor", "ideal_asha",
           "no_early_stopping", "pooled_costs", "trial_work"]


@dataclass(frozen=True)
class UnitCosts:
    """Seconds (times CPUs per trial) per optimizer step, per rung image, per trial setup."""

    per_step: float
    per_image: float
    per_setup: float

    def price(self, work: Work) -> float:
        """CPU-seconds of ``work`` at these rates."""
        return (work.steps * self.per_step + work.images * self.per_image
                + work.setups * self.per_setup)


def trial_work(attrs: dict[str, Any], images_per_rung: int) -> Work:
    """The work of one finished trial from its Optuna user attrs (``last_step``,
    ``score_per_rung``); a trial with no rung (failed before its first) counts as a setup."""
    rungs = len(attrs.get("score_per_rung") or {})
    return Work(float(attrs.get("last_step") or 0), float(rungs * images_per_rung), 1.0)


def arm_work(trials: Iterable[dict[str, Any]], images_per_rung: int) -> Work:
    """Total work of the trials of one sweep (their user attrs)."""
    total = Work(0.0, 0.0, 0.0)
    for attrs in trials:
        total = total + trial_work(attrs, images_per_rung)
    return total


def pooled_costs(trials: Iterable[dict[str, Any]], images_per_rung: int,
                 cpus_per_trial: float = 1.0) -> UnitCosts:
    """Unit costs as ratios of sums over ``trials`` (all compared arms together).

    Raises ValueError when the trials hold no step or no rung image to price."""
    train = evals = setup = 0.0
    work = Work(0.0, 0.0, 0.0)
    for attrs in trials:
        train += float(attrs.get("train_seconds") or 0.0)
        evals += float(attrs.get("eval_seconds") or 0.0)
        setup += float(attrs.get("setup_seconds") or 0.0)
        work = work + trial_work(attrs, images_per_rung)
    if work.steps <= 0 or work.images <= 0:
        raise ValueError("pooled_costs: the trials trained no step or scored no rung")
    return UnitCosts(cpus_per_trial * train / work.steps, cpus_per_trial * evals / work.images,
                     cpus_per_trial * setup / max(work.setups, 1.0))


def eval_share_floor(unet_seconds_per_rung: float, eval_seconds_per_rung: float,
                     train_seconds_per_rung: float, images_per_rung: int,
                     target: float = 0.25) -> dict[str, float]:
    """The evaluation share of a trial at three prices of a rung.

    ``measured``: a rung as it runs; ``unet_only``: a rung costing only its UNet forward
    passes; ``images_for_target``: how many rung images (at the measured cost per image) keep
    the share at ``target``, all per rung of ``train_seconds_per_rung`` training."""
    def share(e: float) -> float:
        return e / (e + train_seconds_per_rung)
    per_image = eval_seconds_per_rung / images_per_rung
    return {"measured": share(eval_seconds_per_rung),
            "unet_only": share(unet_seconds_per_rung),
            "unet_fraction_of_rung": unet_seconds_per_rung / eval_seconds_per_rung,
            "images_for_target": target / (1 - target) * train_seconds_per_rung / per_image,
            "target": target}
