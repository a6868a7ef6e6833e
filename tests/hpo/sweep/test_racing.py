"""The racing section and prompts as a fidelity, as a sweep file states them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.sweep import fidelity
from hpo.sweep.spec import load_sweep
from tests.sweep_files import DELETE, write_sweep
from trials.validation import ConfigError

# Test sweeps have 10 held-out prompts.
RACE = {"racing": {"chunk": 2, "min_prompts": 4, "test": "wilcoxon", "level": 0.02},
        "early_terminate.rung_prompts": 6}


def _sweep(folder: Path, **changes):
    folder.mkdir(parents=True, exist_ok=True)
    return load_sweep(write_sweep(folder, **changes))


def test_racing_is_read_into_the_sweep_and_the_trials_draw_in_chunks(tmp_path) -> None:
    sweep = _sweep(tmp_path, **RACE)
    assert sweep.racing is not None
    assert sweep.racing.as_dict() == {"chunk": 2, "min_prompts": 4, "test": "wilcoxon",
                                      "level": 0.02}
    assert sweep.eval.chunk_prompts == 2
    assert sweep.early_terminate.rung_prompts == 6
    plain = _sweep(tmp_path / "plain")
    assert plain.racing is None and plain.eval.chunk_prompts is None


def test_asha_only_rungs_score_the_subset_every_candidate_scores_all(tmp_path) -> None:
    # FAST: candidates 8 and 12; ASHA's milestones 4 and 12 (factor 3): 4 is ASHA's alone
    sweep = _sweep(tmp_path, **RACE)
    plan = fidelity.plan_steps(sweep)
    run = fidelity.apply(sweep, plan)
    only_asha = [m for m in fidelity.asha_rungs(sweep, plan.candidates[-1])
                 if m not in plan.candidates]
    assert only_asha and run.eval.subset_rungs == tuple(only_asha)
    n = len(run.eval.prompt_list)
    for step in plan.rungs:
        expected = 6 if step in only_asha else n
        assert run.eval.prompt_budget(step) == min(expected, n)
    # without rung_prompts every rung scores every prompt; rung 4 still screens (no control)
    full = fidelity.apply(_sweep(tmp_path / "full", racing={"min_prompts": 4}), plan)
    assert full.eval.subset_rungs == tuple(only_asha) and full.eval.subset_prompts is None
    assert all(full.eval.prompt_budget(step) == n for step in plan.rungs)


def test_steps_as_a_dimension_score_every_prompt_at_every_rung(tmp_path) -> None:
    sweep = _sweep(tmp_path, **RACE, **{"train.lr_scheduler": "cosine"})
    plan = fidelity.plan_steps(sweep)
    assert not plan.fidelity and fidelity.subset_rungs(sweep, plan) == ()


@pytest.mark.parametrize(("changes", "key", "words"), [
    ({"racing": {"min_prompts": 200}}, "racing.min_prompts", "never decides"),
    ({"racing": {"min_prompts": 2}}, "racing.min_prompts", ">= 4"),
    ({"racing": {"test": "z"}}, "racing.test", "wilcoxon"),
    ({"racing": {"level": 0.9}}, "racing.level", "0.5"),
    ({"racing": {"chunk": 0}}, "racing.chunk", ">= 1"),
    ({"racing": {"chunks": 4}}, "racing", "chunk"),
    ({"racing": {}, "metric": {"name": "clip_i_holdout", "goal": "maximize"},
      "data.holdout": 2}, "racing", "clip_score"),
    ({"early_terminate.rung_prompts": 500}, "early_terminate.rung_prompts", "leave it out"),
    ({"racing": {"against": "median"}}, "racing.against", "cutoff"),
    ({"racing": {"against": "cutoff"}, "early_terminate": DELETE}, "racing.against",
     "no early_terminate"),
])
def test_bad_racing_settings_name_the_file_and_key(tmp_path, changes, key, words) -> None:
    with pytest.raises(ConfigError) as err:
        _sweep(tmp_path, **changes)
    message = str(err.value)
    assert "sweep.yaml" in message and key in message and words in message
    assert "\n" not in message


def test_a_sweep_without_early_terminate_may_race(tmp_path) -> None:
    sweep = _sweep(tmp_path, racing={"min_prompts": 4}, early_terminate=DELETE)
    assert sweep.racing is not None and sweep.early_terminate is None


def test_racing_against_ashas_cutoff_takes_its_reduction_factor_and_milestones(tmp_path) -> None:
    sweep = _sweep(tmp_path, racing={"min_prompts": 4, "against": "cutoff"})
    assert sweep.racing is not None and sweep.racing.against == "cutoff"
    assert sweep.racing.keep_fraction == pytest.approx(1 / 3)  # the test sweeps' factor 3
    assert sweep.racing.grace_steps == sweep.early_terminate.grace_steps == 4
    assert sweep.racing.asha_decides_at(12) and not sweep.racing.asha_decides_at(8)
    assert sweep.racing.as_dict()["against"] == "cutoff"
    assert "ASHA's cutoff" in sweep.racing.describe(10)
    assert _sweep(tmp_path / "best", racing={"min_prompts": 4}).racing.against == "best"
