"""Every use of Optuna's private names, in one place (the rest of the project uses its public API).

Each use is pinned by ``tests/hpo/sweep/test_optuna_private.py``, which fails when a release of
Optuna moves or reshapes the name; ``tests/test_private_apis.py`` keeps private names out of
every other module. It lives in :mod:`hpo.sweep`, the lowest wing that uses Optuna, so that the
grid sampler here (used by :mod:`hpo.sweep.space`) and the wings above can all import it.

The private uses, and why there is no public way:

- :class:`StudyGridSampler` subclasses ``GridSampler`` and reads its grid
  (``_search_space``, ``_param_names``, ``_all_grids``, ``_grid_value_equal``) to give a
  re-queued trial the grid id of its parameters, and writes that id where ``GridSampler``
  itself writes it (``study._storage.set_trial_system_attr(trial._trial_id, ...)``): the grid
  and its ``grid_id`` system attr are ``GridSampler``'s own bookkeeping, with no public API,
  and a sampler is handed only the study (no storage, no trial id).
- :func:`clear_intermediate` deletes a trial's intermediate values: Optuna can write one
  (``BaseStorage.set_trial_intermediate_value``) but has no way to delete them, so it goes to
  the RDB models (``optuna.storages._rdb.models``) or, for an in-memory storage (tests), the
  stored frozen trial (``InMemoryStorage._get_trial``); a cached storage is unwrapped
  (``_CachedStorage._backend``).
- :func:`storage_of` reads ``Study._storage``: the outputs (report, Pareto files, dashboard
  link) get a study loaded by URL and need its storage for a ``FrozenTrial``'s artifacts
  (``optuna.artifacts.get_all_artifact_meta`` asks for it) and the study's id; ``Study`` has
  no public accessor. The sweep driver itself passes the storage it opened instead.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (Optuna's cached wrapper where it made one)."""
    return study._storage


def clear_intermediate(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Delete every intermediate value of the trial ``trial_id`` (its storage id)."""
    backend = getattr(storage, "_backend", storage)  # a cached storage wraps the RDB one
    if isinstance(backend, optuna.storages.RDBStorage):
        from optuna.storages._rdb import models

        with backend.scoped_session() as session:
            session.query(models.TrialIntermediateValueModel).filter_by(
                trial_id=trial_id).delete()
            session.commit()
    else:  # in-memory storage (tests): the stored frozen trial holds the values
        backend._get_trial(trial_id).intermediate_values.clear()


class StudyGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, made safe for ask/tell and for re-queued trials.

    Optuna 5's ``after_trial`` calls ``study.stop()`` once the grid is used up, which raises
    outside ``study.optimize()`` (Tune drives the study by ask/tell): here ``--trials`` and the
    grid size end the sweep instead. A trial queued with ``enqueue_trial`` (a re-run of an
    interrupted one) carries no ``grid_id``, so the grid would not count its point as visited:
    it gets the grid id of its parameters here.
    """

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        fixed = trial.system_attrs.get("fixed_params")
        if fixed is not None and "grid_id" not in trial.system_attrs:
            grid_id = self.grid_id_of(fixed)
            if grid_id is not None:
                storage = storage_of(study)
                storage.set_trial_system_attr(trial._trial_id, "search_space",
                                              self._search_space)
                storage.set_trial_system_attr(trial._trial_id, "grid_id", grid_id)
            return
        super().before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        pass  # never study.stop(): see the class docstring

    def grid_id_of(self, params: dict[str, Any]) -> int | None:
        """The index in the grid of these parameter values, or None when they are not on it."""
        if set(params) != set(self._param_names):
            return None
        wanted = tuple(params[name] for name in self._param_names)
        for grid_id, point in enumerate(self._all_grids):
            if all(self._grid_value_equal(a, b) for a, b in zip(point, wanted, strict=True)):
                return grid_id
        return None
