"""Search efficiency: TPE against random (and grid) search on a surrogate of a LoRA sweep.

This measures the search, not the training: each "trial" is one call of a cheap, deterministic
surrogate of the CLIP score, so many seeds can be run. The samplers, the search space and the
define-by-run function are the sweep's own (``hpo.sweep.spec.load_sweep('sweeps/hyundai.yaml')``,
``hpo.sweep.space.define_by_run``, ``hpo.sweep.space.make_sampler``), driven through a plain Optuna
study one trial at a time (ask, evaluate, tell), as the sweep's driver does with one slot, and
also 4 at a time (4 asked before any is told, as with 4 GPU slots: TPE's constant liar then
sees the pending ones).

The surrogate
-------------
For rank ``r``, learning rate ``lr``, steps ``s`` and target modules ``m``::

    k        = {cross_attn: 1, attn: 2, attn_ff: 3}[m]       # adapted matrix types
    capacity = 1 - exp(-r * k / 8)                              # saturates in rank
    dose     = (lr / 1e-4) * (s / 1000)                         # how far training has gone
    fit      = 1 - exp(-dose / 0.3)                             # too little: under-fits
    onset    = 0.9 - 0.4 * capacity                             # bigger adapters memorise sooner
    overfit  = max(0, dose - onset)**2 / 0.05                   # too much: over-fits
    f        = 25 + 3 * capacity * fit - 2 * capacity * overfit
    observed = f + N(0, 0.1**2)     # noise drawn from Random(f"{seed}:{trial number}")

It is shaped after published LoRA ablations: the rank saturates (Hu et al. 2021, LoRA,
section 7.2: a very small r does about as well as r = 64), adapting more kinds of weight
matrices beats a higher rank on fewer (ibid., section 7.1), LoRA under-trains at a low learning
rate and wants a higher one than full fine-tuning (Biderman et al. 2024, "LoRA Learns Less and
Forgets Less"), and too many steps over-fit (memorise) a small fine-tuning set, sooner with
more trainable capacity (Ruiz et al. 2023, DreamBooth; the diffusers training guides). The
constants are chosen, not fitted: they put the optimum inside the hyundai space. The noise
(sd 0.1 score points) stands for the trial-to-trial scatter of a CLIP score measured with
common random numbers. In the hyundai space the optimum is rank 32 with attn_ff at a dose
lr * steps of about 0.052 (1000 steps at lr 5.2e-5, or 600 at 8.7e-5: a ridge, not a point),
f = 27.45; a random configuration scores 26.7 (median).

Simple regret of a study = f(optimum) - f(the trial with the best *observed* score), both
noiseless: what picking the sweep's winner costs against the true best. Every method sees the
same noise for trial number n under seed k (common random numbers across methods). The
optimum is found by enumerating every categorical combination against a fine log grid of
learning rates.

Grid search needs every parameter discrete, so it runs on the same space with the learning
rate cut to three values (5e-5, 7.07e-5, 1e-4): 144 points, of which 20 trials see 20 in
the grid sampler's seeded random order.
"""

from __future__ import annotations

import math
import random
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from benchmarks.common import DELETE, HYUNDAI_SWEEP, median, quartiles, write_sweep

MODULE_FACTOR = {"cross_attn": 1.0, "attn": 2.0, "attn_ff": 3.0}
NOISE_SD = 0.1
GRID_LEARNING_RATES = [5e-5, 7.07e-5, 1e-4]
METHODS = ("tpe", "random", "grid")


def surrogate(params: dict[str, Any]) -> float:
    """The noiseless surrogate score of one configuration (see the module docstring)."""
    rank = float(params["rank"])
    lr = float(params["learning_rate"])
    steps = float(params["max_train_steps"])
    capacity = 1 - math.exp(-rank * MODULE_FACTOR[str(params["target_modules"])] / 8)
    dose = (lr / 1e-4) * (steps / 1000)
    fit = 1 - math.exp(-dose / 0.3)
    onset = 0.9 - 0.4 * capacity
    overfit = max(0.0, dose - onset) ** 2 / 0.05
    return 25 + 3 * capacity * fit - 2 * capacity * overfit


def noise(seed: int, number: int) -> float:
    return random.Random(f"{seed}:{number}").gauss(0.0, NOISE_SD)


def optimum(sweep, lr_points: int = 4001) -> tuple[float, dict[str, Any]]:
    """The best noiseless value in the sweep's space, and where it is."""
    import itertools

    lr = sweep.parameter("learning_rate")
    grid = lr.grid()
    if grid is None:
        lo, hi = math.log(lr.low), math.log(lr.high)
        grid = [math.exp(lo + (hi - lo) * i / (lr_points - 1)) for i in range(lr_points)]
    names = ("rank", "max_train_steps", "target_modules")
    choices = [sweep.parameter(n).grid() for n in names]
    best: tuple[float, dict[str, Any]] = (-math.inf, {})
    for combo in itertools.product(*choices):
        for value in grid:
            params = {**dict(zip(names, combo, strict=True)), "learning_rate": value}
            f = surrogate(params)
            if f > best[0]:
                best = (f, params)
    return best


def run_study(sweep, seed: int, n_trials: int, at_once: int = 1) -> list[float]:
    """One plain Optuna study with the sweep's sampler (seeded ``seed``) and space.

    ``at_once`` trials are asked before any is told, as the sweep does with that many slots
    (TPE's constant liar then sees the pending ones). Returns, after each trial, the noiseless
    value of the trial with the best observed value so far.
    """
    from hpo.sweep.space import define_by_run, make_sampler

    seeded = replace(sweep, seed=seed)
    sign = 1 if sweep.goal == "maximize" else -1
    picked: list[float] = []
    best_seen = -math.inf
    best_true = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        study = optuna.create_study(direction=sweep.goal, sampler=make_sampler(seeded))
        space = define_by_run(seeded)
        while len(picked) < n_trials:
            batch = []
            for _ in range(min(at_once, n_trials - len(picked))):
                trial = study.ask()
                space(trial)
                batch.append(trial)
            for trial in batch:
                true = surrogate(trial.params)
                observed = true + noise(seed, trial.number)
                study.tell(trial, observed)
                if sign * observed > best_seen:
                    best_seen, best_true = sign * observed, true
                picked.append(best_true)
    return picked


@dataclass(frozen=True)
class MethodResult:
    method: str
    label: str
    regrets: list[float]  # one per seed, after n_trials
    regrets_by_trials: dict[int, list[float]]  # the same after fewer (or more) trials

    @property
    def median(self) -> float:
        return median(self.regrets)

    @property
    def quartiles(self) -> tuple[float, float]:
        return quartiles(self.regrets)

    @property
    def worst(self) -> float:
        return max(self.regrets)

    def share_within(self, tolerance: float) -> float:
        return sum(r <= tolerance for r in self.regrets) / len(self.regrets)


@dataclass(frozen=True)
class SearchResult:
    n_trials: int
    seeds: int
    best_value: float
    best_params: dict[str, Any]
    median_config: float  # median noiseless value over the space (random configurations)
    methods: list[MethodResult]
    checkpoints: tuple[int, ...]


def sweeps(work: Path, base: Path = HYUNDAI_SWEEP) -> dict[str, Any]:
    """The sweep as loaded from ``base`` with each method (grid: learning rate cut to 3).

    The preservation remedy and its weight are left out: the surrogate models rank, learning
    rate, steps and modules only, so a searched dimension it ignores would only be noise."""
    from hpo.sweep.spec import load_sweep

    out = {}
    for method in METHODS:
        overrides: dict[str, Any] = {"method": {"type": method, "seed": 0},
                                     "parameters": {"preservation": DELETE,
                                                    "preservation_weight": DELETE}}
        if method == "grid":
            overrides["parameters"]["learning_rate"] = {
                "values": GRID_LEARNING_RATES, "distribution": DELETE, "min": DELETE,
                "max": DELETE}
        out[method] = load_sweep(write_sweep(work, base, overrides, name=f"search-{method}.yaml"))
    return out


# (method, trials asked at once, label)
RUNS = (("tpe", 1, "TPE (the sweep's sampler)"), ("random", 1, "random"),
        ("grid", 1, "grid (lr cut to 3 values)"), ("tpe", 4, "TPE, 4 trials at a time"))


def measure_search(seeds: int = 20, n_trials: int = 20, runs=RUNS,
                   checkpoints: tuple[int, ...] | None = None) -> SearchResult:
    """Every (method, at_once) in ``runs`` over ``seeds`` seeds; regret after ``n_trials``
    trials, and after each of ``checkpoints`` (default: half and twice ``n_trials``)."""
    if checkpoints is None:
        checkpoints = (max(1, n_trials // 2), 2 * n_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        loaded = sweeps(Path(tmp))
    best_value, best_params = optimum(loaded["tpe"])
    rng = random.Random(0)
    space = loaded["random"]
    lr = space.parameter("learning_rate")
    samples = [surrogate({
        "rank": rng.choice(space.parameter("rank").grid()),
        "max_train_steps": rng.choice(space.parameter("max_train_steps").grid()),
        "target_modules": rng.choice(space.parameter("target_modules").grid()),
        "learning_rate": math.exp(rng.uniform(math.log(lr.low), math.log(lr.high))),
    }) for _ in range(4000)]
    horizon = max(n_trials, *checkpoints)
    results = []
    for method, at_once, label in runs:
        traces = [run_study(loaded[method], seed, horizon, at_once) for seed in range(seeds)]
        by = {k: [best_value - t[k - 1] for t in traces] for k in sorted({*checkpoints, n_trials})}
        results.append(MethodResult(method, label, by[n_trials], by))
    return SearchResult(n_trials, seeds, best_value, best_params, median(samples), results,
                        tuple(sorted({*checkpoints, n_trials})))
