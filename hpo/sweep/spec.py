"""The sweep file: YAML read once with ``yaml.safe_load`` into typed, immutable objects.

Sections shared with a single trial (model, data, train, eval) are read by ``trials.config``;
this module adds what only a sweep has: the search space (``parameters``), ``method``,
``metric``, ``early_terminate`` and ``resources``. Everything downstream takes a
:class:`Sweep` and never looks at the raw YAML again.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpo.sweep.objectives import (
    FIDELITY_METRICS,
    METRICS,
    PRESERVATION_METRICS,
    Confirm,
    Objective,
    Select,
    parse_confirm,
    parse_objectives,
    parse_select,
)
from hpo.sweep.preservation import Require, parse_require
from hpo.sweep.racing import (
    MIN_DECISION_PROMPTS,
    Racing,
    check_rung_prompts,
    parse_racing,
)
from trials.api import (
    DISTRIBUTIONS,
    INTEGRAL,
    PARAMETER_PATHS,
    TOP_LEVEL_KEYS,
    ConfigError,
    DataSpec,
    EvalSpec,
    ModelSpec,
    Parameter,
    PreservationSpec,
    Section,
    TrainSpec,
    TrialConfig,
    describe,
    load_yaml_mapping,
    make_params,
    parse_parameters,
    read_data,
    read_eval,
    read_model,
    read_preservation,
    read_train,
    rung_steps,
    setting,
    settings,
)

METHODS = ("tpe", "random", "grid", "nsga2")  # nsga2: multi-objective sweeps only
GOALS = ("maximize", "minimize")
MAX_RUNGS = 50
# More grid points than this in all is a typo, not a plan.
MAX_GRID = 100_000
_SWEEP_KEYS = tuple(k for k in TOP_LEVEL_KEYS if k != "result")
# A study name names the folder OUT/NAME and the lock file beside a SQLite study
# (``<database>.<NAME>.lock``): file names have at most 255 bytes, and Optuna's study name
# column 512 characters.
NAME_MAX_BYTES = 100
_NAME_PUNCTUATION = "-_."
NAME_RULE = (f"letters and digits (any script), '-', '_' and '.', at most {NAME_MAX_BYTES} "
             "bytes as UTF-8, not '.' or '..'")


class PreflightError(ValueError):
    """Something that would fail a trial, found before any trial starts."""


@dataclass(frozen=True)
class Method:
    """The sampler: ``method: tpe`` or ``method: {type: tpe, seed: 0}``."""

    type: str = setting("tpe", doc="tpe, random, grid, or nsga2 (several objectives)",
                        choices=METHODS)
    seed: int | None = setting(None, doc="The sampler's seed (default: train.seed)", minimum=0)


@dataclass(frozen=True)
class EarlyTerminate:
    """ASHA on the training step: rungs at ``grace_steps * reduction_factor**k``."""

    grace_steps: int = setting(doc="ASHA's first rung, in steps (a multiple of "
                               "eval.every_steps)", minimum=1)
    type: str = setting("asha", doc="The scheduler", choices=("asha",))
    reduction_factor: int = setting(2, doc="Rungs at grace_steps * reduction_factor**k; "
                                    "1 / reduction_factor of a rung's trials go on", minimum=2)
    # Prompts as a fidelity: ASHA-only rungs score this many prompts (hpo.sweep.racing).
    rung_prompts: int | None = setting(None, doc="ASHA-only rungs score this many prompts "
                                       "(below the number of held-out prompts)",
                                       minimum=MIN_DECISION_PROMPTS)


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for; ``max_concurrent`` None means as many as fit."""

    gpu_per_trial: float = setting(1.0, doc="GPUs per trial (a fraction shares one; above 1 "
                                   "a whole number)", above=0)
    cpu_per_trial: float = setting(1.0, doc="CPUs per trial", above=0)
    max_concurrent: int | None = setting(None, doc="Trials at once (none: as many as fit)",
                                         minimum=1)
    max_retries: int = setting(1, doc="Retries of a trial whose worker died", minimum=0)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file."""

    # Each field says whether a change makes a rerun another study (hpo.study.fingerprint):
    # derived (assembled by load_sweep), fingerprinted unless ``free`` says why not.
    source: Path = setting(doc="The sweep file", derived=True, free="a path; its contents count")
    name: str = setting(doc="The study name", derived=True, free="names the study")
    model: ModelSpec = setting(doc="The weights", derived=True)
    data: DataSpec = setting(doc="The training data", derived=True)
    train: TrainSpec = setting(doc="Fixed training settings", derived=True)
    eval: EvalSpec = setting(doc="The rung evaluation", derived=True)
    method: str = setting(doc="The sampler", derived=True,
                          free="how trials are proposed, not what they score")
    seed: int = setting(doc="The sampler's seed", derived=True,
                        free="how trials are proposed, not what they score")
    parameters: tuple[Parameter, ...] = setting(doc="The search space", derived=True)
    early_terminate: EarlyTerminate | None = setting(
        doc="ASHA", derived=True, free="which trials stop early, not what a rung scores")
    resources: Resources = setting(doc="What a trial asks Ray for", derived=True,
                                   free="where trials run, not what they score")
    # Every objective (``metric`` and ``goal`` are the first's); see hpo.sweep.objectives.
    objectives: tuple[Objective, ...] = setting(doc="Every objective", derived=True,
                                                key="metric")
    select: Select = setting(doc="The winner's rule", derived=True, factory=Select,
                             free="picks the winner from recorded scores, changing none")
    confirm: Confirm = setting(doc="Confirmation on fresh seeds", derived=True,
                               factory=lambda: Confirm(top_k=0),
                               free="each confirmation record keeps the seed and image count "
                               "it was drawn with; another setting draws again")
    # The trigger, control prompts and training remedy (trials.config), and what the winner
    # must keep (hpo.sweep.preservation; None: measured, not required).
    preservation: PreservationSpec = setting(doc="Keeping the base model", derived=True,
                                             factory=PreservationSpec)
    require: Require | None = setting(None, doc="What the winner must keep", derived=True,
                                      key="preservation.require")
    # Evaluation that races (hpo.sweep.racing); None: every rung draws all its prompts.
    racing: Racing | None = setting(None, doc="Racing at a rung", derived=True,
                                    free="which trials stop drawing early, not what a rung "
                                    "scores")

    @property
    def metric(self) -> str:
        """The first objective's name: what ASHA and racing decide on."""
        return self.objectives[0].name

    @property
    def goal(self) -> str:
        """The first objective's direction."""
        return self.objectives[0].goal

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def searched(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if not p.is_fixed)

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    @property
    def max_steps(self) -> int:
        """The largest ``max_train_steps`` any trial can get (ASHA's ``max_t``)."""
        steps = self.parameter("max_train_steps")
        assert steps is not None
        if steps.high is not None:  # a range: its top, without listing it
            return int(steps.high)
        return int(max(steps.grid() or (0,)))

    def grid_size(self) -> int | None:
        """Number of distinct configurations, or None when some range is continuous."""
        size = 1
        for p in self.parameters:
            n = p.size()
            if n is None:
                return None
            size *= n
        return size

    def rungs(self, max_train_steps: int) -> list[int]:
        """The steps at which a trial with this many steps is scored (always the last one)."""
        return rung_steps(self.eval.every_steps, max_train_steps, self.eval.rungs)

    def trial_config(
        self, values: Mapping[str, Any], *, output_dir: Path, cache_dir: Path
    ) -> TrialConfig:
        """The config of one trial, given the sampled values of the searched parameters."""
        merged = {p.name: p.value for p in self.parameters if p.is_fixed}
        merged.update(values)
        return TrialConfig(
            model=self.model, data=self.data, train=self.train, eval=self.eval,
            params=make_params(merged), output_dir=output_dir, cache_dir=cache_dir,
            preservation=self.preservation,
        )


def study_name(name: str) -> tuple[str, str | None]:
    """The study name in Unicode's composed form (NFC: an ``é`` typed as ``e`` + accent becomes
    one letter), and why it cannot be one (it names a folder and files), or None."""
    name = unicodedata.normalize("NFC", name)
    shown = repr(name if len(name) <= 40 else name[:40] + "...")
    if any("\ud800" <= c <= "\udfff" for c in name):
        return name, (f"is not text in this terminal's encoding (got {shown}); set a UTF-8 "
                      "locale (e.g. LANG=C.UTF-8) or use an ASCII name")
    size = len(name.encode("utf-8"))
    if size > NAME_MAX_BYTES:
        return name, (f"is {size} bytes as UTF-8, at most {NAME_MAX_BYTES}: it names the folder "
                      f"OUT/NAME and the lock file beside the study (got {shown})")
    bad = next((c for c in name if c not in _NAME_PUNCTUATION
                and unicodedata.category(c)[0] not in "LMN"), None)
    if not name or name in (".", "..") or bad is not None:
        why = f": {bad!r} is not allowed" if bad is not None else ""
        return name, f"may use {NAME_RULE} (got {shown}{why})"
    return name, None


def _check_rungs(sweep: Sweep, section: Section) -> None:
    steps = sweep.parameter("max_train_steps")
    assert steps is not None
    smallest = int(steps.low if steps.low is not None else min(steps.grid() or (0,)))
    every = sweep.eval.every_steps
    if every > smallest:
        raise section.sub("eval").error(
            f"must be <= the smallest max_train_steps ({smallest}) so every trial is scored "
            f"before it ends (got {every})", "every_steps")
    n = len(sweep.rungs(sweep.max_steps))
    if n > MAX_RUNGS:
        raise section.sub("eval").error(
            f"gives {n} evaluation rungs for {sweep.max_steps} steps; at most {MAX_RUNGS} "
            f"(raise every_steps to >= {math.ceil(sweep.max_steps / MAX_RUNGS)})", "every_steps")
    if sweep.early_terminate is None:
        return
    grace = sweep.early_terminate.grace_steps
    if grace % every:
        raise section.sub("early_terminate").error(
            f"must be a multiple of eval.every_steps ({every}), since trials report only at "
            f"rungs (got {grace})", "grace_steps")
    if grace > sweep.max_steps:
        raise section.sub("early_terminate").error(
            f"must be <= the largest max_train_steps ({sweep.max_steps}) (got {grace})",
            "grace_steps")


def _check_preservation(sweep: Sweep, root: Section) -> None:
    """A searched or fixed preservation remedy needs a trigger to tell captions apart."""
    param = sweep.parameter("preservation")
    methods = set(param.grid() or ()) if param is not None else set()
    if sweep.preservation.trigger is None and methods - {"none"}:
        raise root.sub("parameters").sub("preservation").error(
            "needs preservation.trigger (the brand phrase removed from the captions)")


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; raises :class:`ConfigError` with a one-line message."""
    file = Path(path)
    root = Section(file, "", load_yaml_mapping(file))
    if "result" in root.data:
        raise root.error("is best.yaml's result: rerun that trial with python -m trials.train "
                         "FILE, or drop the result section to sweep from this file", "result")
    root.allow_only(_SWEEP_KEYS, PARAMETER_PATHS)
    base = Path.cwd()
    name, problem = study_name(root.string("name"))
    if problem:
        raise root.error(problem, "name")

    objectives = parse_objectives(root)
    method = root.sub("method") if isinstance(root.data.get("method"), dict) or (
        "method" in root.data and root.data["method"] is None) else None
    if method is not None:
        method_name, seed = dataclasses.astuple(settings.read(Method, method))
    else:
        if root.has("method") and not isinstance(root.data["method"], str):
            raise root.error(
                f"must be one of {', '.join(METHODS)}, or a mapping with type and seed "
                f"(got {describe(root.data['method'])})", "method")
        method_name = root.string("method", "tpe", METHODS)
        seed = None

    train = read_train(root.sub("train"))
    eval_spec = read_eval(root.sub("eval"), base)
    early = None
    if root.has("early_terminate"):  # null: no early stop, as when left out
        et = root.sub("early_terminate")
        early = settings.read(EarlyTerminate, et)
        check_rung_prompts(et, early.rung_prompts, len(eval_spec.prompt_list))
    racing = parse_racing(root, len(eval_spec.prompt_list), objectives[0].name,
                          len(objectives) > 1,
                          None if early is None else early.reduction_factor,
                          None if early is None else early.grace_steps)
    if racing is not None:  # the trials draw their rungs in chunks and ask after each
        eval_spec = replace(eval_spec, chunk_prompts=racing.chunk)

    res = root.sub("resources")
    resources = settings.read(Resources, res)
    if resources.gpu_per_trial > 1 and not resources.gpu_per_trial.is_integer():
        raise res.error(
            f"above 1 must be a whole number of GPUs (got {resources.gpu_per_trial:g})",
            "gpu_per_trial")

    preservation = read_preservation(root.sub("preservation"), eval_spec, base)
    sweep = Sweep(
        source=file.resolve(),
        name=name,
        model=read_model(root.sub("model")),
        data=read_data(root.sub("data"), base),
        train=train,
        eval=eval_spec,
        method=method_name,
        seed=seed if seed is not None else train.seed,
        parameters=parse_parameters(root.sub("parameters")),
        early_terminate=early,
        resources=resources,
        objectives=objectives,
        select=parse_select(root, objectives),
        confirm=parse_confirm(root, eval_spec.seed, eval_spec.images_per_prompt,
                              eval_spec.inference_steps),
        preservation=preservation,
        require=parse_require(root, preservation.measured),
        racing=racing,
    )
    _check_preservation(sweep, root)
    kept = [o.name for o in objectives if o.name in PRESERVATION_METRICS]
    if kept and not sweep.preservation.measured:
        raise root.error(f"{kept[0]} needs control prompts: set preservation.trigger (the brand "
                         "phrase the control prompts are the held-out prompts without)", "metric")
    fidelity = [o.name for o in objectives if o.name in FIDELITY_METRICS]
    if fidelity and not sweep.data.holdout and sweep.eval.reference_dir is None:
        raise root.error(f"{fidelity[0]} needs held-out real images: set data.holdout (a "
                         "number of training images never trained on) or eval.reference_dir",
                         "metric")
    if sweep.method == "nsga2" and not sweep.multi_objective:
        raise root.error("nsga2 is for several objectives; list them under metric (or use "
                         "tpe)", "method")
    if sweep.method == "grid" and sweep.grid_size() is None:
        cont = next(p for p in sweep.parameters if p.size() is None)
        raise root.sub("parameters").sub(cont.name).error(
            f"method grid needs values, int_uniform or q_uniform (got {cont.kind})",
            "distribution")
    grid_size = sweep.grid_size()
    if sweep.method == "grid" and grid_size is not None and grid_size > MAX_GRID:
        raise root.error(f"method grid over {grid_size:,} configurations; at most "
                         f"{MAX_GRID:,} (fewer values, or method tpe)", "parameters")
    if train.lr_scheduler != "constant" and train.lr_warmup_steps > sweep.max_steps:
        raise root.sub("train").error(
            f"must be <= the largest max_train_steps ({sweep.max_steps}), or no trial ever "
            f"finishes warming up (got {train.lr_warmup_steps})", "lr_warmup_steps")
    _check_rungs(sweep, root)
    return sweep


__all__ = ["DISTRIBUTIONS", "INTEGRAL", "METRICS", "ConfigError", "EarlyTerminate", "Parameter",
           "Resources", "Sweep", "load_sweep"]
