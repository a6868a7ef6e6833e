"""The work accounting and floors of benchmarks.cost_model (pure arithmetic, no torch)."""

from __future__ import annotations

import math

import pytest

from benchmarks import cost_model as cm


def _trial(steps: int, rungs: list[int], train: float, evals: float, setup: float = 0.5):
    return {"last_step": steps, "score_per_rung": {str(r): 1.0 for r in rungs},
            "train_seconds": train, "eval_seconds": evals, "setup_seconds": setup}


def test_trial_and_arm_work_count_steps_rung_images_and_setups() -> None:
    pruned = _trial(15, [15], 1.0, 4.0)
    full = _trial(60, [15, 30, 45, 60], 4.0, 16.0)
    assert cm.trial_work(full, 96) == cm.Work(60.0, 384.0, 1.0)
    assert cm.arm_work([pruned, full], 96) == cm.Work(75.0, 480.0, 2.0)
    # a trial that failed before its first rung still cost a setup
    assert cm.trial_work({"last_step": None}, 96) == cm.Work(0.0, 0.0, 1.0)


def test_pooled_costs_are_ratios_of_sums_and_price_work() -> None:
    trials = [_trial(15, [15], 1.0, 4.0, 0.2), _trial(60, [15, 30, 45, 60], 5.0, 20.0, 0.4)]
    costs = cm.pooled_costs(trials, 96, cpus_per_trial=2)
    assert costs.per_step == pytest.approx(2 * 6.0 / 75)
    assert costs.per_image == pytest.approx(2 * 24.0 / 480)
    assert costs.per_setup == pytest.approx(2 * 0.6 / 2)
    # pricing an arm's own work gives back its busy CPU-seconds
    assert costs.price(cm.arm_work(trials, 96)) == pytest.approx(2 * (6.0 + 24.0 + 0.6))
    with pytest.raises(ValueError, match="no step or scored no rung"):
        cm.pooled_costs([{"last_step": 0}], 96)


def test_ideal_asha_halves_at_each_milestone() -> None:
    # the demo: 20 trials, milestones 15 and 30, 60 steps, rungs 15/30/45/60, factor 2:
    # 10 stop at 15 (1 rung), 5 at 30 (2 rungs), 5 reach 60 (4 rungs)
    work = cm.ideal_asha(20, [15, 30], 60, [15, 30, 45, 60], 96, 2)
    assert work == cm.Work(10 * 15 + 5 * 30 + 5 * 60, (10 * 1 + 5 * 2 + 5 * 4) * 96, 20.0)
    none = cm.no_early_stopping(20, 60, [30, 45, 60], 96)
    assert none == cm.Work(1200.0, 60 * 96.0, 20.0)
    # with rungs that cost nothing ASHA trains half the steps; priced rungs raise the fraction
    free = cm.UnitCosts(per_step=1.0, per_image=0.0, per_setup=0.0)
    assert free.price(work) / free.price(none) == pytest.approx(0.5)
    dear = cm.UnitCosts(per_step=0.07, per_image=0.045, per_setup=0.2)
    assert dear.price(work) / dear.price(none) > 0.6


def test_ideal_asha_rounds_survivors_up_and_never_loses_a_trial() -> None:
    work = cm.ideal_asha(7, [10, 30], 90, [10, 30, 90], 1, 3)
    # 7 -> ceil(7/3) = 3 survive 10 -> ceil(7/9) = 1 survives 30 -> trains to 90
    assert work.setups == 7
    assert work.steps == 4 * 10 + 2 * 30 + 1 * 90
    assert work.images == 4 * 1 + 2 * 2 + 1 * 3


def test_eval_share_floor() -> None:
    floor = cm.eval_share_floor(unet_seconds_per_rung=3.0, eval_seconds_per_rung=4.0,
                                train_seconds_per_rung=1.0, images_per_rung=96)
    assert floor["measured"] == pytest.approx(0.8)
    assert floor["unet_only"] == pytest.approx(0.75)
    assert floor["unet_fraction_of_rung"] == pytest.approx(0.75)
    # 25 % share: eval = train / 3 = 1/3 s at 4/96 s per image -> 8 images
    assert floor["images_for_target"] == pytest.approx(8.0)
    assert math.isclose(floor["target"], 0.25)
