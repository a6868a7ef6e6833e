"""Preservation statistics, constraints and the feasible winner (hpo.verdict.preservation)."""

from __future__ import annotations

import optuna
import pytest
from scipy import stats

from hpo.sweep.preservation import Require
from hpo.verdict import preservation, winner
from hpo.verdict.paired import paired_difference

BASE = [50.0, 52.0, 48.0, 51.0, 49.0, 50.0]


def test_control_stats_pair_with_the_base_model_and_test_the_leak_against_zero() -> None:
    mine = [48.0, 51.0, 45.0, 50.0, 47.0, 49.5]
    leak = [1.0, 2.0, 0.5, 1.5, 0.0, 1.0]
    drift = [90.0, 95.0, 92.0, 91.0, 93.0, 94.0]
    figures = preservation.control_stats(
        {"control_score": 48.4, "control_per_prompt": mine, "leak_per_prompt": leak,
         "drift_per_prompt": drift}, BASE)
    hand = paired_difference(mine, BASE)
    assert figures["control_delta"] == pytest.approx(hand.delta)
    assert figures["control_delta_stderr"] == pytest.approx(hand.stderr)
    assert figures["control_delta_p_value"] == pytest.approx(stats.ttest_rel(mine, BASE).pvalue)
    assert figures["leak"] == pytest.approx(sum(leak) / 6)
    assert figures["leak_p_value"] == pytest.approx(stats.ttest_1samp(leak, 0).pvalue)
    assert figures["drift"] == pytest.approx(sum(drift) / 6)
    assert figures["drift_stderr"] == pytest.approx(stats.sem(drift))
    assert preservation.control_stats({"clip_score": 1.0}, BASE) == {}


def _figures(delta: float, stderr: float, n: int = 10, leak: float = 0.0,
             leak_stderr: float = 1.0) -> dict:
    return {"control_delta": delta, "control_delta_stderr": stderr, "control_n": n,
            "leak": leak, "leak_stderr": leak_stderr}


def test_not_worse_is_infeasible_exactly_when_the_paired_test_rejects_a_drop() -> None:
    t_crit = stats.t.ppf(1 - 0.05 / 2, 9)
    require = Require()
    just_ok = preservation.constraint_values(require, _figures(-(t_crit - 0.01), 1.0))
    just_bad = preservation.constraint_values(require, _figures(-(t_crit + 0.01), 1.0))
    assert preservation.is_feasible(just_ok) and not preservation.is_feasible(just_bad)
    # a significant *rise* is no violation
    assert preservation.is_feasible(preservation.constraint_values(require, _figures(9, 1.0)))
    assert set(just_ok) == {"control_not_worse"}


def test_bounds_on_the_drop_and_the_leak() -> None:
    require = Require(control="any", max_drop=2.0, leak="not_above", max_leak=1.5)
    ok = preservation.constraint_values(require, _figures(-1.9, 0.1, leak=1.4, leak_stderr=5))
    assert preservation.is_feasible(ok) and set(ok) == {"control_max_drop", "leak_not_above",
                                                        "leak_max"}
    assert not preservation.is_feasible(
        preservation.constraint_values(require, _figures(-2.1, 0.1, leak=0.0)))
    assert not preservation.is_feasible(  # leak 1.4 ± 0.1 is significantly above 0
        preservation.constraint_values(require, _figures(0.0, 0.1, leak=1.4, leak_stderr=0.1)))
    # without base-model features there is no leak to judge
    assert preservation.constraint_values(require, {**_figures(0, 1), "leak": None}) is None


def test_a_constrained_study_records_feasibility_in_optunas_attrs_and_picks_feasible() -> None:
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    study.set_user_attr("preservation", {"trigger": "Hyundai", "require": Require().as_dict()})
    scored = [(80.0, {"control_not_worse": 3.2}), (70.0, {"control_not_worse": -1.5}),
              (60.0, {"control_not_worse": -4.0})]
    for value, constraints in scored:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        for name, v in constraints.items():
            trial.set_constraint(name, v)
        study.tell(trial, value)
    frozen = study.get_trials()
    assert [t.constraints for t in frozen] == [c for _, c in scored]
    assert [preservation.trial_feasible(t) for t in frozen] == [False, True, True]
    # the highest brand score breaks the base model: it is no candidate and cannot win
    assert [t.number for t in winner.candidates(study)] == [1, 2]
    assert winner.best_trial(study).number == 1
    study.ask()  # TPE samples with the constrained trials on record


def test_without_a_requirement_every_complete_trial_is_a_candidate() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (1.0, 2.0):
        trial = study.ask()
        trial.set_constraint("control_not_worse", 1.0)
        study.tell(trial, value)
    assert [t.number for t in winner.candidates(study)] == [1, 0]


def test_the_verdict_line_says_whether_the_base_model_is_kept() -> None:
    line = preservation.verdict(_figures(-0.5, 1.0), Require(), "trial 3 on fresh seeds")
    assert line.startswith("trial 3 on fresh seeds preserves the base model")
    line = preservation.verdict(_figures(-9.0, 1.0), Require(), "trial 3")
    assert "does NOT preserve" in line and "control Δ -9.0000 ± 1.0000" in line
    assert preservation.verdict(_figures(-9.0, 1.0), None, "it").endswith("(nothing required)")
