"""Picking the winner from the study alone (hpo.verdict.winner), with and without confirmation."""

from __future__ import annotations

import math

import optuna
import pytest

from hpo.verdict import winner
from hpo.verdict.paired import paired_difference

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_study(search: dict[int, float], directions=("maximize",)) -> optuna.Study:
    study = optuna.create_study(directions=list(directions))
    study.set_user_attr("objectives", [{"name": "clip_score", "goal": "maximize"}])
    for number in sorted(search):
        trial = study.ask()
        trial.suggest_int("rank", 1, 64)
        trial.set_user_attr("best_step", 10)
        trial.set_user_attr("score_per_rung", {"10": search[number]})
        study.tell(trial, search[number])
    return study


def confirm(study: optuna.Study, per_prompt: dict[int | str, list[float]], top_k: int) -> None:
    study.set_user_attr(winner.SETTINGS_KEY, {"top_k": top_k, "seed": 7,
                                              "images_per_prompt": 2})
    for key, scores in per_prompt.items():
        name = winner.BASELINE_KEY if key == "base" else winner.trial_key(int(key))
        study.set_user_attr(name, {"seed": 7, "images_per_prompt": 2, "per_prompt": scores,
                                   "clip_score": sum(scores) / len(scores),
                                   "clip_score_stderr": 0.1})


def test_without_confirmation_the_best_search_score_wins() -> None:
    study = make_study({0: 20.0, 1: 23.0, 2: 22.0})
    assert winner.pick(study).number == 1
    assert winner.confirmation_summary(study) is None


def test_the_best_confirmed_trial_wins_and_the_summary_is_paired() -> None:
    study = make_study({0: 20.0, 1: 23.0, 2: 22.0})
    confirm(study, {1: [20.0, 21.0, 22.0], 2: [21.0, 22.5, 23.5], "base": [19.0, 20.0, 21.0]},
            top_k=2)
    assert winner.pick(study).number == 2  # the search's best (1) did worse on fresh seeds
    conf = winner.confirmation_summary(study)
    assert conf["winner"] == 2 and conf["runner_up"] == 1 and conf["trials"] == [2, 1]
    hand = paired_difference([21.0, 22.5, 23.5], [20.0, 21.0, 22.0])
    assert conf["delta_vs_runner_up"] == pytest.approx(hand.delta)
    assert conf["delta_vs_runner_up_stderr"] == pytest.approx(hand.stderr)
    assert conf["search_clip_score"] == 22.0
    assert conf["search_minus_confirmed"] == pytest.approx(22.0 - 67.0 / 3)
    assert conf["delta_vs_baseline"] == pytest.approx(67.0 / 3 - 20.0)
    assert conf["distinguishable_from_runner_up"] is (hand.p_value < 0.05)


def test_a_winner_not_distinguishable_from_the_runner_up_is_said_plainly() -> None:
    study = make_study({0: 23.0, 1: 22.0})
    confirm(study, {0: [20.0, 22.0, 21.0], 1: [21.0, 21.0, 21.5]}, top_k=2)
    conf = winner.confirmation_summary(study)
    assert conf["distinguishable_from_runner_up"] is False
    assert "NOT distinguishable from the runner-up" in conf["verdict"]


def test_an_incomplete_or_stale_confirmation_is_not_used() -> None:
    study = make_study({0: 20.0, 1: 23.0, 2: 22.0})
    confirm(study, {2: [30.0, 30.0]}, top_k=2)  # trial 1 not confirmed yet
    assert winner.pick(study).number == 1 and winner.confirmation_summary(study) is None
    confirm(study, {1: [1.0, 1.0], 2: [30.0, 30.0]}, top_k=2)
    assert winner.pick(study).number == 2
    # Settings changed (another seed): the stored scores do not count any more.
    study.set_user_attr(winner.SETTINGS_KEY, {"top_k": 2, "seed": 8, "images_per_prompt": 2})
    assert winner.pick(study).number == 1


def test_a_confirmation_drawn_at_other_sampler_steps_is_not_used() -> None:
    study = make_study({0: 20.0, 1: 23.0})
    confirm(study, {0: [30.0, 30.0], 1: [1.0, 1.0]}, top_k=2)
    assert winner.pick(study).number == 0
    # the confirmation now draws at 30 steps (confirm.inference_steps): records without them
    # were drawn at the rungs' steps and do not count
    study.set_user_attr(winner.SETTINGS_KEY, {"top_k": 2, "seed": 7, "images_per_prompt": 2,
                                              "inference_steps": 30})
    assert winner.pick(study).number == 1 and winner.confirmation_summary(study) is None
    for number in (0, 1):
        record = dict(study.user_attrs[winner.trial_key(number)], inference_steps=30)
        study.set_user_attr(winner.trial_key(number), record)
    assert winner.pick(study).number == 0
    assert winner.confirmation_summary(study)["inference_steps"] == 30


def test_the_confirmation_jobs_draw_at_the_confirmations_own_steps(tmp_path) -> None:
    from dataclasses import replace

    from hpo.sweep.spec import load_sweep
    from hpo.verdict import confirm as confirmation
    from tests.sweep_files import REPO

    hyundai = load_sweep(REPO / "sweeps" / "hyundai.yaml")
    assert confirmation.settings_of(hyundai)["inference_steps"] == 30
    config = hyundai.trial_config({p.name: p.value for p in hyundai.parameters if p.is_fixed}
                                  | {"rank": 4, "learning_rate": 1e-4, "max_train_steps": 400,
                                     "target_modules": "attn", "preservation": "dop",
                                     "preservation_weight": 1.0},
                                  output_dir=tmp_path, cache_dir=tmp_path)
    assert config.eval.inference_steps == 20  # a rung's
    assert confirmation.full_size(hyundai, config).eval.inference_steps == 30
    same = replace(hyundai, confirm=replace(hyundai.confirm, inference_steps=20))
    assert "inference_steps" not in confirmation.settings_of(same)  # as recorded before


def test_with_two_objectives_candidates_are_the_pareto_front() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    study.set_user_attr("objectives", [{"name": "clip_score", "goal": "maximize"},
                                       {"name": "dino_holdout", "goal": "maximize"}])
    for values in ([20.0, 5.0], [19.0, 9.0], [18.0, 4.0], [21.0, 1.0]):
        trial = study.ask()
        trial.suggest_int("rank", 1, 64)
        study.tell(trial, values)
    assert [t.number for t in winner.candidates(study)] == [3, 0, 1]  # 2 is dominated
    assert winner.pick(study).number == 3
    study.set_user_attr("select", {"rule": "weighted", "weights": [1.0, 1.0]})
    assert winner.pick(study).number == 1  # 19 + 9 = 28 is the largest sum
    assert not math.isnan(winner.rule_score(study, {"clip_score": 1.0, "dino_holdout": 2.0}))


def _preserving_study(control: dict[int | str, list[float]]) -> optuna.Study:
    """Two trials that kept the base model on the search seeds, trial 1 scoring higher on
    fresh seeds, and ``control``: each one's and the base model's control prompts there."""
    from hpo.sweep.preservation import Require

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("objectives", [{"name": "clip_score", "goal": "maximize"}])
    study.set_user_attr("preservation", {"trigger": "Hyundai", "require": Require().as_dict()})
    for value in (20.0, 23.0):
        trial = study.ask()
        trial.set_user_attr("best_step", 10)
        trial.set_user_attr("score_per_rung", {"10": value})
        trial.set_constraint("control_not_worse", -1.0)
        study.tell(trial, value)
    confirm(study, {0: [20.0, 21.0, 22.0], 1: [30.0, 31.0, 33.0], "base": [19.0, 20.0, 21.0]},
            top_k=2)
    for key, scores in control.items():
        name = winner.BASELINE_KEY if key == "base" else winner.trial_key(int(key))
        study.set_user_attr(name, {**study.user_attrs[name], "control_per_prompt": scores})
    return study


def test_a_runner_up_that_breaks_the_base_model_on_fresh_seeds_ranks_second() -> None:
    # Preservation required: trial 1 scores higher on fresh seeds but its control prompts drop
    # significantly; trial 0 keeps the base model and wins, and the verdict says why.
    study = _preserving_study({0: [50.0, 51.0, 49.5], 1: [40.0, 41.5, 39.0],
                               "base": [50.0, 51.0, 49.0]})
    assert winner.pick(study).number == 0
    summary = winner.confirmation_summary(study)
    assert summary["preservation"]["preserves"] is True
    assert summary["verdict"].startswith("trial 0 wins because the runner-up by score, trial 1, "
                                         "does not keep the base model on fresh seeds")


def test_a_winner_that_breaks_the_base_model_on_fresh_seeds_is_not_confirmed() -> None:
    """Every confirmed candidate's control prompts drop on the fresh seeds: the winner is
    reported as NOT confirmed (hpo.run exits 4), never as confirmed."""
    from hpo.plan import confirmation_lines
    study = _preserving_study({0: [40.0, 41.0, 39.5], 1: [40.0, 41.5, 39.0],
                               "base": [50.0, 51.0, 49.0]})
    assert winner.confirmation_summary(study)["preservation"]["preserves"] is False
    assert winner.breaks_on_fresh_seeds(study) == winner.pick(study).number
    lines = confirmation_lines(study)
    assert lines[0].startswith(f"NOT confirmed: trial {winner.pick(study).number} (and every "
                               "confirmed candidate) fails the preservation requirement")
    assert not any(line.startswith("confirmed on fresh seeds") for line in lines)
    # Without a requirement nothing is asked of the control prompts: not "broken".
    study.set_user_attr("preservation", {"trigger": "Hyundai", "require": None})
    assert winner.breaks_on_fresh_seeds(study) is None
