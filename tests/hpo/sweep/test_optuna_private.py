"""Pins for hpo/sweep/optuna_private.py: each private Optuna name it uses, still there and still
of the shape it relies on. A failure here after an upgrade of Optuna says which use to redo
(the module docstring says what each is for); the pyproject bound keeps Optuna on the minor
release these pass on.
"""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.study.storage import open_storage, set_intermediate, trial_id_of
from hpo.sweep import optuna_private
from hpo.sweep.optuna_private import StudyGridSampler, clear_intermediate, storage_of

optuna.logging.set_verbosity(optuna.logging.WARNING)

GRID = {"rank": [4, 8], "learning_rate": [1e-4, 1e-3, 1e-2]}


@pytest.fixture(params=["sqlite", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.storages.BaseStorage:
    if request.param == "memory":
        return optuna.storages.InMemoryStorage()
    return open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_a_study_keeps_its_storage_as_underscore_storage(storage) -> None:
    # storage_of: Study._storage, the storage it was given or Optuna's cache around it
    study = optuna.create_study(storage=storage, study_name="s")
    held = storage_of(study)
    assert isinstance(held, optuna.storages.BaseStorage)
    assert held is storage or getattr(held, "_backend", None) is storage
    study.ask()
    study_id = held.get_study_id_from_name("s")
    assert [t.number for t in held.get_all_trials(study_id)] == [0]


def test_a_cached_storage_wraps_the_rdb_one_as_underscore_backend(tmp_path: Path) -> None:
    rdb = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=rdb, study_name="s")
    assert type(storage_of(study)).__name__ == "_CachedStorage"
    assert storage_of(study)._backend is rdb


def test_intermediate_values_can_be_cleared(storage) -> None:
    # clear_intermediate: optuna.storages._rdb.models.TrialIntermediateValueModel (with
    # RDBStorage.scoped_session), InMemoryStorage._get_trial; through the cache too
    from optuna.storages._rdb import models

    assert hasattr(models.TrialIntermediateValueModel, "trial_id")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial_id = trial_id_of(storage, "s", trial.number)
    set_intermediate(storage, trial_id, 4, 1.0)
    set_intermediate(storage, trial_id, 8, 2.0)
    assert study.trials[0].intermediate_values == {4: 1.0, 8: 2.0}
    clear_intermediate(storage_of(study), trial_id)  # the cached wrapper is unwrapped
    assert study.trials[0].intermediate_values == {}
    set_intermediate(storage, trial_id, 4, 3.0)  # a retry's rungs are written as before
    study.tell(trial, 3.0)
    assert study.trials[0].intermediate_values == {4: 3.0}


def test_grid_sampler_keeps_its_grid_where_study_grid_sampler_reads_it() -> None:
    sampler = StudyGridSampler(GRID, seed=0)
    assert sampler._search_space == GRID  # written as the trial's search_space system attr
    assert sampler._param_names == sorted(GRID)  # the order of a point's values
    assert len(sampler._all_grids) == 6 and all(len(p) == 2 for p in sampler._all_grids)
    assert sampler._grid_value_equal(1e-3, 1e-3) and not sampler._grid_value_equal(4, 8)
    # GridSampler.before_trial still writes the grid id where StudyGridSampler writes one
    source = inspect.getsource(optuna.samplers.GridSampler.before_trial)
    assert 'set_trial_system_attr(trial._trial_id, "grid_id"' in source.replace("\n", "")


def test_a_requeued_trial_takes_the_grid_id_of_its_parameters(storage) -> None:
    # before_trial: Study._storage.set_trial_system_attr(FrozenTrial._trial_id, ...)
    study = optuna.create_study(storage=storage, study_name="s",
                                sampler=StudyGridSampler(GRID, seed=0))
    first = study.ask()
    for name, values in GRID.items():
        first.suggest_categorical(name, values)
    study.tell(first, state=TrialState.FAIL)
    study.enqueue_trial(first.params)
    again = study.ask()
    for name, values in GRID.items():
        again.suggest_categorical(name, values)
    attrs = study.trials[1].system_attrs
    assert attrs["grid_id"] == study.trials[0].system_attrs["grid_id"]
    assert attrs["search_space"] == GRID


def test_frozen_trials_carry_their_storage_id_as_underscore_trial_id(storage) -> None:
    study = optuna.create_study(storage=storage, study_name="s")
    study.ask()
    frozen = study.trials[0]
    assert frozen._trial_id == trial_id_of(storage, "s", frozen.number)


def test_the_grid_sampler_pickles() -> None:
    # Tune pickles the searcher (not the sampler), but a sampler must survive a copy.
    assert pickle.loads(pickle.dumps(StudyGridSampler(GRID, seed=0))).grid_id_of(
        {"rank": 4, "learning_rate": 1e-4}) is not None
    assert optuna_private.StudyGridSampler.__mro__[1] is optuna.samplers.GridSampler
