"""The search space as Optuna sees it: a define-by-run function and the sampler.

Parameters with a fixed ``value`` are not suggested (Optuna stores only what varies); they are
added back by :meth:`hpo.spec.Sweep.trial_config`.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.spec import Parameter, Sweep

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
    """The function OptunaSearch calls for each new trial.

    It only suggests (and returns None): OptunaSearch reads the values from the trial, and a
    returned dict would be added to every config as constants.
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


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    """TPE, random or grid, seeded from the sweep (``method.seed``, else ``train.seed``)."""
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    if sweep.method == "grid":
        grid = {p.name: list(p.grid() or ()) for p in sweep.searched}
        return optuna.samplers.GridSampler(grid, seed=sweep.seed)
    settings = sampler_settings(sweep)
    if sweep.method == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=NSGA2_POPULATION, seed=sweep.seed)
    # With several objectives this is Optuna's multi-objective TPE (MOTPE).
    return optuna.samplers.TPESampler(
        seed=sweep.seed, multivariate=settings["multivariate"],
        constant_liar=settings["constant_liar"], n_startup_trials=settings["n_startup_trials"])
