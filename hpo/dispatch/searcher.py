"""Tune's searcher: each new Tune trial is a trial the Optuna study asks for.

:class:`StudySearch` is a plain ``ray.tune.search.Searcher`` (Ray's public searcher API) over
Optuna's ask interface (``Study.ask`` with the define-by-run space of
:func:`hpo.sweep.space.define_by_run`). It only asks: results are written into the study by
:class:`hpo.dispatch.recorder.StudyRecorder` (its module docstring says why not by the
searcher), so ``on_trial_result`` and ``on_trial_complete`` do nothing here.

It holds the storage the driver opened, and maps each Tune trial to its Optuna trial and that
trial's storage id, so the recorder can write through the storage's public methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from ray.tune.search import Searcher

from hpo.dispatch.rungs import RESUME_FROM
from hpo.study.storage import RESUME_CHECKPOINTS, trial_id_of


class StudySearch(Searcher):
    """Asks the study for a trial per Tune trial; leaves writing results to the recorder."""

    def __init__(self, space: Callable[[optuna.Trial], None], *, metric: str | list[str],
                 mode: str | list[str], sampler: optuna.samplers.BaseSampler, study_name: str,
                 storage: optuna.storages.BaseStorage) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.storage = storage
        directions = [_direction(m) for m in mode] if isinstance(mode, list) \
            else [_direction(mode)]
        # The driver has created the study already; loading it here (create-or-load, as the
        # study's first run may start here in tests) binds this run's sampler to it. Pruning
        # is ASHA's and racing's, never Optuna's.
        self.study = optuna.create_study(
            storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner(),
            study_name=study_name, directions=directions, load_if_exists=True)
        self.trials: dict[str, optuna.Trial] = {}  # Tune trial id -> its Optuna trial
        self._storage_ids: dict[str, int] = {}  # Tune trial id -> its Optuna trial's id

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The parameters of a new Optuna trial (a queued one first: Optuna's ``ask`` takes a
        re-queued trial's parameters before sampling new ones)."""
        if trial_id not in self.trials:
            self.trials[trial_id] = self.study.ask()
        ot_trial = self.trials[trial_id]
        self.space(ot_trial)  # suggests every searched parameter; a repeat returns the same
        config = dict(ot_trial.params)
        # A trial re-queued after its driver died goes on from its last rung checkpoint.
        checkpoints = ot_trial.user_attrs.get(RESUME_CHECKPOINTS)
        if checkpoints:
            config[RESUME_FROM] = str(checkpoints[-1])
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the recorder writes rungs

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass  # the recorder tells the study each trial's state and values

    def save(self, checkpoint_path: str) -> None:
        # The Optuna study in its database is the search state; resuming reads it, not a
        # pickled searcher (Tuner.restore is never used: see hpo.run).
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the searcher into tuner.pkl on the (maybe shared) storage path; the
        # storage object holds the database URL with its password, and is not needed there.
        state = self.__dict__.copy()
        for key in ("storage", "study", "trials"):
            state.pop(key, None)
        return state

    def optuna_trial(self, trial_id: str) -> optuna.Trial:
        """The Optuna trial of the Tune trial ``trial_id``."""
        return self.trials[trial_id]

    def storage_id(self, trial_id: str) -> int:
        """The storage's id of the Tune trial's Optuna trial (what the storage's trial methods
        take), looked up once."""
        if trial_id not in self._storage_ids:
            self._storage_ids[trial_id] = trial_id_of(
                self.storage, self.study.study_name, self.trials[trial_id].number)
        return self._storage_ids[trial_id]


def _direction(mode: str) -> str:
    return "minimize" if mode == "min" else "maximize"
