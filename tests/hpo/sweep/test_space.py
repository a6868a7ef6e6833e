"""Tests for hpo.sweep.space: the Optuna define-by-run search space and the seeded samplers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.sweep.space import define_by_run, make_sampler, run_seed, sampler_settings
from hpo.sweep.spec import Sweep, load_sweep
from tests.sweep_files import tiny_doc

REPO = Path(__file__).resolve().parents[3]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def sweep_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Sweep]:
    """The tiny sweep with some top-level sections or parameters replaced."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a red car\n", encoding="utf-8")

    def make(parameters: dict[str, Any] | None = None, **sections: Any) -> Sweep:
        doc = tiny_doc()  # the shipped tiny sweep, without its preservation
        doc["eval"]["prompts"] = "prompts.txt"
        doc["parameters"].update(parameters or {})
        doc.update(sections)
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return load_sweep(path)

    return make


def sample(sweep: Sweep, n: int) -> list[optuna.trial.FrozenTrial]:
    """Run ``n`` trials of an in-memory study on the sweep's space (objective: rank)."""
    study = optuna.create_study(sampler=make_sampler(sweep), direction="maximize")
    space = define_by_run(sweep)

    def objective(trial: optuna.Trial) -> float:
        assert space(trial) is None
        return float(trial.params.get("learning_rate", 0.0))

    study.optimize(objective, n_trials=n)
    return study.trials


def test_tiny_space(sweep_with: Callable[..., Sweep]) -> None:
    sweep = sweep_with()
    trials = sample(sweep, 20)
    for trial in trials:
        # lora_alpha is fixed (value: rank): not suggested, added back by trial_config.
        assert set(trial.params) == {"rank", "learning_rate", "max_train_steps", "target_modules"}
        assert trial.params["rank"] in (2, 4, 8)
        assert trial.params["max_train_steps"] in (30, 45, 60)
        assert trial.params["target_modules"] in ("cross_attn", "attn", "attn_ff")
        assert 1e-4 <= trial.params["learning_rate"] <= 5e-2
    dists = trials[0].distributions
    assert dists["learning_rate"] == FloatDistribution(1e-4, 5e-2, log=True)
    assert dists["rank"] == CategoricalDistribution((2, 4, 8))
    assert dists["target_modules"] == CategoricalDistribution(("cross_attn", "attn", "attn_ff"))
    assert len({t.params["learning_rate"] for t in trials}) == len(trials)


def test_distributions(sweep_with: Callable[..., Sweep]) -> None:
    sweep = sweep_with({
        "rank": {"distribution": "int_uniform", "min": 2, "max": 16},
        "lora_alpha": {"distribution": "uniform", "min": 1, "max": 32},
        "learning_rate": {"distribution": "q_uniform", "min": 1e-4, "max": 1e-3, "q": 1e-4},
        "max_train_steps": {"distribution": "q_uniform", "min": 20, "max": 60, "q": 10},
        "target_modules": {"value": "attn"},
    }, method="random")
    trials = sample(sweep, 30)
    assert trials[0].distributions == {
        "rank": IntDistribution(2, 16),
        "lora_alpha": FloatDistribution(1.0, 32.0),
        "learning_rate": FloatDistribution(1e-4, 1e-3, step=1e-4),
        "max_train_steps": IntDistribution(20, 60, step=10),
    }
    for trial in trials:
        p = trial.params
        assert "target_modules" not in p
        assert isinstance(p["rank"], int) and 2 <= p["rank"] <= 16
        assert isinstance(p["max_train_steps"], int) and p["max_train_steps"] in range(20, 61, 10)
        assert 1.0 <= p["lora_alpha"] <= 32.0
        steps = (p["learning_rate"] - 1e-4) / 1e-4
        assert abs(steps - round(steps)) < 1e-6 and 1e-4 <= p["learning_rate"] <= 1e-3 + 1e-12


def test_integral_parameters_stay_integers(sweep_with: Callable[..., Sweep]) -> None:
    sweep = sweep_with({
        "rank": {"distribution": "log_uniform_values", "min": 2, "max": 64},
        "max_train_steps": {"distribution": "uniform", "min": 20, "max": 40},
    }, method="random")
    trials = sample(sweep, 20)
    assert trials[0].distributions["rank"] == IntDistribution(2, 64, log=True)
    assert trials[0].distributions["max_train_steps"] == IntDistribution(20, 40)
    for trial in trials:
        assert isinstance(trial.params["rank"], int)
        assert isinstance(trial.params["max_train_steps"], int)


@pytest.mark.parametrize(("method", "sampler"), [
    ("tpe", optuna.samplers.TPESampler),
    ("random", optuna.samplers.RandomSampler),
    ("grid", optuna.samplers.GridSampler),
])
def test_sampler_per_method(sweep_with: Callable[..., Sweep], method: str,
                            sampler: type) -> None:
    sweep = sweep_with({"learning_rate": {"values": [1e-4, 2e-4]}}, method=method)
    assert isinstance(make_sampler(sweep), sampler)
    settings = sampler_settings(sweep)
    assert settings["method"] == method and settings["seed"] == 42  # train.seed


def first_five(sweep: Sweep) -> list[dict[str, Any]]:
    return [t.params for t in sample(sweep, 5)]


@pytest.mark.parametrize("method", ["tpe", "random"])
def test_sampler_is_seeded(sweep_with: Callable[..., Sweep], method: str) -> None:
    seeded = sweep_with(method={"type": method, "seed": 3})
    assert first_five(seeded) == first_five(seeded)
    other = sweep_with(method={"type": method, "seed": 4})
    assert first_five(other) != first_five(seeded)


def test_train_seed_seeds_the_sampler(sweep_with: Callable[..., Sweep]) -> None:
    a = sweep_with(method="random", train={"seed": 5})
    b = sweep_with(method={"type": "random", "seed": 5})
    assert a.seed == b.seed == 5
    assert first_five(a) == first_five(b)


def test_grid_sampler_covers_the_grid(sweep_with: Callable[..., Sweep]) -> None:
    sweep = sweep_with({
        "rank": {"distribution": "int_uniform", "min": 2, "max": 3},
        "learning_rate": {"values": [1e-4, 2e-4]},
        "max_train_steps": {"distribution": "q_uniform", "min": 20, "max": 40, "q": 10},
        "target_modules": {"value": "attn"},
    }, method="grid")
    assert sweep.grid_size() == 2 * 2 * 3
    trials = sample(sweep, sweep.grid_size())
    seen = {(t.params["rank"], t.params["learning_rate"], t.params["max_train_steps"])
            for t in trials}
    assert seen == set(itertools.product((2, 3), (1e-4, 2e-4), (20, 30, 40)))


def resumed(sweep: Sweep, runs: list[int]) -> optuna.Study:
    """One study filled by several driver runs of ``runs[i]`` trials, each with a new sampler
    built as ``hpo.run`` builds it (from the study's size when the run starts)."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    space = define_by_run(sweep)
    for n in runs:
        study = optuna.load_study(study_name="s", storage=storage,
                                  sampler=make_sampler(sweep, len(study.trials)))
        for _ in range(n):
            trial = study.ask()
            space(trial)
            study.tell(trial, float(trial.params.get("learning_rate", trial.number)))
    return study


@pytest.mark.parametrize("method", ["tpe", "random"])
def test_a_resumed_study_continues_the_search_instead_of_replaying_it(
        sweep_with: Callable[..., Sweep], method: str) -> None:
    # Issue 11, item 1: --trials 2, then --trials 4, must not repeat trials 0-1.
    sweep = sweep_with(method={"type": method, "seed": 0})
    study = resumed(sweep, [2, 2])
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 4, params
    # Reproducible: the same runs from the same seed give the same trials.
    assert [t.params for t in resumed(sweep, [2, 2]).trials] == [t.params for t in study.trials]
    # A first run draws what a single run always drew.
    assert [t.params for t in study.trials[:2]] == [t.params for t in sample(sweep, 2)]
    assert run_seed(0, 0) == 0 and run_seed(0, 2) != run_seed(0, 3)


def test_tpe_is_conditioned_on_trials_of_earlier_runs(sweep_with: Callable[..., Sweep]) -> None:
    sweep = sweep_with(method={"type": "tpe", "seed": 0})
    study = resumed(sweep, [11, 1])  # past TPE's 10 start-up trials, over two runs
    last = study.trials[-1]
    # Conditioned on 11 trials maximizing learning_rate, TPE proposes a large one.
    assert last.params["learning_rate"] > sorted(
        t.params["learning_rate"] for t in study.trials[:11])[5]


def grid_sweep(sweep_with: Callable[..., Sweep]) -> Sweep:
    return sweep_with({"learning_rate": {"value": 1e-4}, "max_train_steps": {"value": 20},
                       "target_modules": {"value": "attn"}, "rank": {"values": [2, 4]}},
                      method="grid")


def test_grid_end_does_not_stop_the_study_and_resumes_cleanly(
        sweep_with: Callable[..., Sweep]) -> None:
    # Issue 11, item 3: Optuna's GridSampler stops the study (raises) at the last tell.
    sweep = grid_sweep(sweep_with)
    study = resumed(sweep, [1, 1])  # the last tell of the grid, in a second run, raises nothing
    assert sorted(t.params["rank"] for t in study.trials) == [2, 4]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_requeued_grid_trial_takes_its_grid_point(sweep_with: Callable[..., Sweep]) -> None:
    sweep = sweep_with({"learning_rate": {"value": 1e-4}, "max_train_steps": {"value": 20},
                        "target_modules": {"value": "attn"}, "rank": {"values": [2, 4, 8]}},
                       method="grid")
    study = optuna.create_study(sampler=make_sampler(sweep), direction="maximize")
    space = define_by_run(sweep)
    first = study.ask()
    space(first)
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # interrupted, as recover marks it
    study.enqueue_trial(first.params)
    for _ in range(3):
        trial = study.ask()
        space(trial)
        study.tell(trial, 1.0)
    ranks = [t.params["rank"] for t in study.trials[1:]]
    assert ranks[0] == first.params["rank"] and sorted(ranks) == [2, 4, 8]
    assert study.trials[1].system_attrs["grid_id"] == study.trials[0].system_attrs["grid_id"]
