"""Early stopping: the same sweep with ASHA and without, on the same trial budget.

Both arms run ``python -m hpo.run`` on ``sweeps/tiny.yaml`` (written to a temp folder, cold
caches) with the same number of trials and the same sampler seed; the second arm only drops
``early_terminate``. What each spent is the sum of the trials' ``cpu_seconds`` user attr
(``gpu_seconds`` on a GPU cluster): the trial's setup + training + scoring seconds times the
CPUs it held. The best score reached is the study's best COMPLETE trial, which is what the
sweep reports and exports (ASHA's stopped trials are PRUNED and are never the winner).

With TPE's 10 random start-up trials the first 10 configurations are the same in both arms;
after that TPE sees different histories (pruned trials report only their early rungs), so the
arms may try different configurations.

:func:`asha_work` counts the same comparison in work instead of seconds (see
:mod:`benchmarks.cost_model`), with the floor set by ideal successive halving.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import cost_model
from benchmarks.common import DELETE, TINY_SWEEP, SweepRun, run_sweep, write_sweep


@dataclass(frozen=True)
class Arm:
    label: str
    trials: int
    complete: int
    pruned: int
    failed: int
    cpu_seconds: float
    gpu_seconds: float
    steps_trained: int
    best_value: float | None
    best_params: dict[str, Any] | None
    wall_seconds: float


@dataclass(frozen=True)
class EarlyStopResult:
    asha: Arm
    full: Arm

    @property
    def cpu_saving(self) -> float:
        """Share of the no-ASHA arm's CPU-seconds that ASHA did not spend."""
        return 1 - self.asha.cpu_seconds / self.full.cpu_seconds

    @property
    def score_difference(self) -> float | None:
        if self.asha.best_value is None or self.full.best_value is None:
            return None
        return self.asha.best_value - self.full.best_value


def arm(label: str, run: SweepRun) -> Arm:
    """Sum what a sweep's trials spent, and take its best COMPLETE trial."""
    records = run.records
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    best = max(complete, key=lambda r: r.value or 0.0, default=None)
    return Arm(
        label=label,
        trials=len(records),
        complete=len(complete),
        pruned=sum(r.state == "PRUNED" for r in records),
        failed=sum(r.state == "FAIL" for r in records),
        cpu_seconds=sum(r.attr("cpu_seconds") for r in records),
        gpu_seconds=sum(r.attr("gpu_seconds") for r in records),
        steps_trained=int(sum(r.attr("last_step") for r in records)),
        best_value=None if best is None else best.value,
        best_params=None if best is None else best.params,
        wall_seconds=run.wall_seconds,
    )


def measure_early_stop(trials: int = 20, base: Path = TINY_SWEEP) -> EarlyStopResult:
    """Run the sweep with ASHA, then without, each from cold in its own temp folder."""
    runs = {}
    for label, overrides in (("ASHA", {}), ("no early stopping", {"early_terminate": DELETE})):
        with tempfile.TemporaryDirectory(prefix="early-stop-bench-") as tmp:
            file = write_sweep(Path(tmp), base, overrides)
            runs[label] = run_sweep(file, trials, Path(tmp) / "runs")
    return EarlyStopResult(arm("ASHA", runs["ASHA"]),
                           arm("no early stopping", runs["no early stopping"]))


def asha_work(asha, none, trials: int) -> dict[str, Any]:
    """ASHA vs none counted in work (steps, rung images, setups) priced at unit costs pooled
    over both arms (:mod:`benchmarks.cost_model`), so load drifting between the two sweeps
    does not move the ratio; and the same ratio for ideal successive halving (the floor)."""
    from hpo.sweep import fidelity
    from hpo.sweep.spec import load_sweep

    sweep = load_sweep(TINY_SWEEP)
    images = len(sweep.eval.prompt_list) * sweep.eval.images_per_prompt
    with_asha = fidelity.plan_steps(sweep)
    without = fidelity.plan_steps(replace(sweep, early_terminate=None))  # the none arm
    attrs_a = [r.attrs for r in asha.records]
    attrs_n = [r.attrs for r in none.records]
    costs = cost_model.pooled_costs(attrs_a + attrs_n, images, sweep.resources.cpu_per_trial)
    work_a = cost_model.arm_work(attrs_a, images)
    work_n = cost_model.arm_work(attrs_n, images)
    top = with_asha.candidates[-1]
    milestones = [m for m in fidelity.asha_rungs(sweep, top) if m < top]
    ideal_a = cost_model.ideal_asha(trials, milestones, top, with_asha.rungs, images,
                                    sweep.early_terminate.reduction_factor)
    ideal_n = cost_model.no_early_stopping(trials, top, without.rungs, images)
    return {
        "images_per_rung": images, "unit_costs": vars(costs),
        "asha": vars(work_a), "none": vars(work_n),
        "fraction": costs.price(work_a) / costs.price(work_n),
        "ideal_asha": vars(ideal_a), "ideal_none": vars(ideal_n),
        "ideal_fraction": costs.price(ideal_a) / costs.price(ideal_n),
        "ideal_fraction_if_rungs_were_free": ideal_a.steps / ideal_n.steps,
        "rungs_asha": list(with_asha.rungs), "rungs_none": list(without.rungs),
        "milestones": milestones,
    }
