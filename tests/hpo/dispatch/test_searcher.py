"""hpo/dispatch/searcher.py: Tune's searcher asks the study exactly as Optuna's own ask/tell
loop would (the same trials from the same sampler), and writes nothing itself. No Tune run:
Tune calls ``suggest`` once per new trial, which these tests do by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import ray.cloudpickle
from optuna.trial import TrialState
from ray.tune.search import Searcher

from hpo.dispatch.searcher import StudySearch
from hpo.study.storage import open_storage, trial_id_of
from hpo.sweep.space import define_by_run, make_sampler
from hpo.sweep.spec import Sweep, load_sweep
from tests.sweep_files import write_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)

GRID = {"parameters.learning_rate": {"value": 1e-4}, "parameters.max_train_steps": {"value": 20},
        "parameters.target_modules": {"value": "attn"},
        "parameters.rank": {"values": [2, 4, 8]}}


# NSGA-II is for several objectives (hpo.sweep.spec refuses it for one)
TWO_OBJECTIVES = {"metric": [{"name": "clip_score"}, {"name": "clip_i", "goal": "minimize"}]}


def sweep_of(tmp_path: Path, method: str) -> Sweep:
    changes = {"method.type": method, **(GRID if method == "grid" else {}),
               **(TWO_OBJECTIVES if method == "nsga2" else {})}
    return load_sweep(write_sweep(tmp_path, **changes))


def searcher_for(sweep: Sweep, storage: optuna.storages.BaseStorage) -> StudySearch:
    # metric and mode as hpo.dispatch.tune.run_sweep gives them
    if sweep.multi_objective:
        metric: Any = [o.name for o in sweep.objectives]
        mode: Any = ["max" if o.goal == "maximize" else "min" for o in sweep.objectives]
    else:
        metric, mode = sweep.metric, "max" if sweep.goal == "maximize" else "min"
    return StudySearch(define_by_run(sweep), metric=metric, mode=mode,
                       sampler=make_sampler(sweep), study_name="s", storage=storage)


def value(sweep: Sweep, params: dict[str, Any]) -> float | list[float]:
    score = float(params.get("learning_rate", 0.0)) * 1000 + float(params.get("rank", 0))
    return [score, -score / 2] if sweep.multi_objective else score


@pytest.mark.parametrize("method", ["tpe", "random", "grid", "nsga2"])
def test_the_searcher_asks_what_optunas_own_loop_asks(tmp_path: Path, method: str) -> None:
    sweep = sweep_of(tmp_path, method)
    searcher = searcher_for(sweep, optuna.storages.InMemoryStorage())
    assert isinstance(searcher, Searcher)
    plain = optuna.create_study(sampler=make_sampler(sweep),
                                directions=[t.name.lower() for t in searcher.study.directions])
    space = define_by_run(sweep)
    n = 3 if method == "grid" else 12
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        assert searcher.suggest(f"t{i}") == config  # a repeat asks nothing new
        assert set(config) == {p.name for p in sweep.searched}
        # the recorder tells the study; the searcher's own hooks write nothing
        searcher.on_trial_result(f"t{i}", {"clip_score": 1.0, "step": 4})
        searcher.on_trial_complete(f"t{i}", {"clip_score": 1.0})
        assert searcher.study.trials[i].state == TrialState.RUNNING
        searcher.study.tell(searcher.optuna_trial(f"t{i}"), value(sweep, config))
        trial = plain.ask()
        space(trial)
        plain.tell(trial, value(sweep, trial.params))
        assert config == trial.params, (method, i)
    if method == "grid":
        assert sorted(t.params["rank"] for t in searcher.study.trials) == [2, 4, 8]


def test_a_queued_trial_is_asked_first_and_ids_are_the_storages(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path, "tpe")
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = searcher_for(sweep, storage)
    # as hpo.study.storage.recover_interrupted re-queues an interrupted trial
    queued = searcher.suggest("first")
    searcher.study.tell(searcher.optuna_trial("first"), state=TrialState.FAIL)
    searcher.study.enqueue_trial(queued, user_attrs={"retry_of": 0})
    assert searcher.suggest("a") == queued
    assert searcher.optuna_trial("a").user_attrs["retry_of"] == 0
    searcher.suggest("b")
    for name in ("first", "a", "b"):
        number = searcher.optuna_trial(name).number
        assert searcher.storage_id(name) == trial_id_of(storage, "s", number)
        assert searcher.storage_id(name) == searcher.study.trials[number]._trial_id
    # A second searcher (the next run) loads the same study.
    again = searcher_for(sweep, storage)
    assert [t.number for t in again.study.trials] == [0, 1, 2]


def test_tune_pickles_the_searcher_without_the_storage(tmp_path: Path) -> None:
    # tuner.pkl goes to the storage path, maybe shared: no database URL (password) in it
    sweep = sweep_of(tmp_path, "random")
    url = f"sqlite:///{tmp_path / 'secret-optuna.db'}"
    searcher = searcher_for(sweep, open_storage(url))
    searcher.suggest("a")
    searcher.save(str(tmp_path / "state.pkl"))  # Tune's checkpoint: nothing to save
    assert not (tmp_path / "state.pkl").exists()
    blob = ray.cloudpickle.dumps(searcher)  # as Tune writes tuner.pkl
    assert b"secret-optuna" not in blob
    copy = ray.cloudpickle.loads(blob)
    assert not hasattr(copy, "storage") and copy.metric == "clip_score" and copy.mode == "max"
