"""The search space as Optuna sees it: a define-by-run function and the sampler.

Parameters with a fixed ``value`` are not suggested (Optuna stores only what varies); they are
added back by :meth:`hpo.sweep.spec.Sweep.trial_config`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import optuna

from hpo.sweep.optuna_private import StudyGridSampler
from hpo.sweep.spec import Parameter, Sweep

# Smaller than Optuna's default (50): a LoRA sweep runs tens of trials, not thousands.
NSGA2_POPULATION = 8


def suggest(trial: optuna.Trial, param: Parameter) -> Any:
    """Ask Optuna for one value of ``param``."""
    name = param.name
    if param.kind == "values":
        return trial.suggest_categorical(name, list(param.values))
    assert param.low is not None and param.high is not None
    integral = name in ("rank", "max_train_steps")
    if param.kind == "int_uniform" or (integral and param.kind == "uniform"):
        return trial.suggest_int(name, int(param.low), int(param.high))
    if param.kind == "q_uniform":
        assert param.q is not None
        if integral and float(param.q).is_integer():
            return trial.suggest_int(name, int(param.low), int(param.high), step=int(param.q))
        return trial.suggest_float(name, param.low, param.high, step=param.q)
    if param.kind == "log_uniform_values":
        if integral:
            return trial.suggest_int(name, int(param.low), int(param.high), log=True)
        return trial.suggest_float(name, param.low, param.high, log=True)
    return trial.suggest_float(name, param.low, param.high)


def define_by_run(sweep: Sweep):
    """The function :class:`hpo.dispatch.searcher.StudySearch` calls for each new trial.

    It only suggests (and returns None): the searcher reads the values from the trial's
    ``params``.
    """
    searched = sweep.searched

    def space(trial: optuna.Trial) -> None:
        for param in searched:
            suggest(trial, param)

    return space


def sampler_settings(sweep: Sweep) -> dict[str, Any]:
    """What the sampler is and how it is seeded, recorded in the study for reproducibility."""
    settings: dict[str, Any] = {"method": sweep.method, "seed": sweep.seed}
    if sweep.method == "tpe":
        # Optuna 5 turned these on by default; written out so a reader knows what ran.
        settings.update(multivariate=True, constant_liar=True, n_startup_trials=10)
    if sweep.method == "nsga2":
        settings.update(population_size=NSGA2_POPULATION)
    if sweep.multi_objective:
        settings["objectives"] = [f"{o.name} ({o.goal})" for o in sweep.objectives]
    return settings


def run_seed(sweep_seed: int, trials_in_study: int) -> int:
    """The sampler seed of one driver run: the sweep's seed and the study's size when it starts.

    A fresh sampler seeded with the sweep's seed alone would repeat its random draws on every
    rerun (trials 2-3 of a resumed study would copy trials 0-1). Mixing in the number of trials
    already in the study gives each run new draws, and the same study state with the same seed
    still gives the same next draws (reproducible). TPE reads every trial in the study, so it
    stays conditioned on earlier runs whatever the seed.
    """
    if trials_in_study == 0:
        return sweep_seed  # a fresh study draws exactly what a single run always drew
    digest = hashlib.sha256(f"hpo.space/v1:{sweep_seed}:{trials_in_study}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def make_sampler(sweep: Sweep, trials_in_study: int = 0) -> optuna.samplers.BaseSampler:
    """TPE, random or grid, seeded from the sweep (``method.seed``, else ``train.seed``).

    ``trials_in_study`` is the study's size when this run starts; see :func:`run_seed`.
    """
    seed = run_seed(sweep.seed, trials_in_study)
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.method == "grid":
        grid = {p.name: list(p.grid() or ()) for p in sweep.searched}
        # The seed shuffles the grid ids, which must mean the same points in every run:
        # the sweep's own seed; the points still left are what changes between runs.
        return StudyGridSampler(grid, seed=sweep.seed)
    settings = sampler_settings(sweep)
    # A preservation requirement needs no setting here: the recorder gives each trial its
    # constraint values (Trial.set_constraint, Optuna 5), and TPE and NSGA-II learn the
    # feasible region from every trial that has them.
    if sweep.method == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=NSGA2_POPULATION, seed=sweep.seed)
    # With several objectives this is Optuna's multi-objective TPE (MOTPE).
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=settings["multivariate"],
        constant_liar=settings["constant_liar"], n_startup_trials=settings["n_startup_trials"])


def baseline_values(sweep: Sweep) -> dict[str, Any]:
    """Any valid parameter values: the baseline trains nothing, but needs a full config."""
    values: dict[str, Any] = {}
    for p in sweep.parameters:
        if p.kind in ("value", "values"):
            values[p.name] = (p.grid() or (None,))[0]
        else:  # a range's low end (an int where the parameter takes whole numbers)
            low = p.low
            values[p.name] = int(low) if p.size() is not None and low is not None \
                and float(low).is_integer() else low
    return values
