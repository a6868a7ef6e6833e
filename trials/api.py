"""The door into ``trials``: everything the orchestrator (``hpo``) may use of one trial.

``hpo`` imports this module and no other of ``trials`` (``tests/test_architecture.py`` checks
it), so the trial's insides (data loading, the model, the loop, scoring) can change without
touching the orchestrator. In the spirit of a diffusers training script run by syne-tune, a
trial is a function of its settings that only reports:

- :func:`run_trial` trains one LoRA and calls ``report(step, metrics, checkpoint_dir)`` at
  every rung; the rung's folder also holds what the trial needs to go on from there
  (:data:`RESUME_DIR`), and ``run_trial(..., resume_from=folder)`` does (:func:`resume_step`
  says from which step); :func:`run_baseline` scores the base model; :func:`rescore` scores
  a saved LoRA on fresh seeds; :func:`probe_times` times one step and one image for the cost
  forecast (:func:`probe_blocker` says when it would need a download first);
- the settings: :class:`TrialConfig` and its parts, the constants and parsers the sweep file
  shares with a trial's config, the YAML reader's :class:`Section` and :class:`ConfigError`,
  and :mod:`trials.settings` (``setting()`` declares a key of the sweep file once; the sweep's
  own sections use it too);
- the pre-flight: :func:`check_data`, :func:`check_model`, :func:`check_scorer`,
  :func:`check_target_modules`, :func:`check_prompt_triggers`,
  :func:`long_prompts`, :func:`held_out_files`, :func:`bucket_lines` check what a trial would
  refuse, as the trial reads it (:mod:`trials.preflight`);
- errors: every one a :class:`TrialError`; ``err.every_trial`` says whether every trial of a
  sweep would fail alike (bad data, model, config) or only this one's parameters;
- a rung's results: :class:`RungReport` and the metric names (:mod:`trials.report`);
- names: where a LoRA's weights are (:data:`WEIGHTS_NAME`; :func:`write_kohya` converts them),
  the fault kinds a sweep may inject (:data:`FAULT_KINDS`), the toy world's paths.

Importing this module does not import torch or diffusers (reading a sweep file stays fast):
the functions that need them import them when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trials import report, settings
from trials.config import (
    RESUME_DIR,
    TOP_LEVEL_KEYS,
    WEIGHTS_NAME,
    DataSpec,
    EvalSpec,
    ModelSpec,
    PreservationSpec,
    SyntheticData,
    TrainSpec,
    TrialConfig,
    read_data,
    read_eval,
    read_model,
    read_preservation,
    read_train,
    rung_steps,
)
from trials.errors import (
    DataError,
    KohyaExportError,
    ModelError,
    SetupError,
    TrialDiverged,
    TrialError,
    TrialOutOfMemory,
)
from trials.parameters import (
    DISTRIBUTIONS,
    INTEGRAL,
    OPTIONAL_PARAMETERS,
    PARAMETER_NAMES,
    PARAMETER_PATHS,
    TARGET_PRESETS,
    HyperParams,
    Parameter,
    check_param_value,
    make_params,
    parse_parameters,
)
from trials.preflight import (
    DataCheck,
    bucket_lines,
    check_data,
    check_model,
    check_prompt_triggers,
    check_scorer,
    check_target_modules,
    held_out_files,
    long_prompts,
)
from trials.report import (
    CLIP_SCORE,
    CLIP_SCORE_STDERR,
    CONTROL_PER_PROMPT,
    CONTROL_SCORE,
    DRIFT,
    DRIFT_PER_PROMPT,
    LEAK,
    LEAK_PER_PROMPT,
    MAX_TRAIN_STEPS,
    PER_PROMPT,
    PROMPT_INDICES,
    RACED,
    STEP,
    TRAIN_LOSS,
    RungReport,
)
from trials.settings import setting
from trials.toyworld import CLIP_DIR as TOYWORLD_CLIP_DIR
from trials.toyworld import SD_DIR as TOYWORLD_SD_DIR
from trials.toyworld import TOYWORLD
from trials.train.faults import KINDS as FAULT_KINDS
from trials.validation import ConfigError, Section, closest, describe, load_yaml_mapping

if TYPE_CHECKING:  # for the signatures only: these modules import torch
    from trials.train.loop import Report, RungRace, TrialResult
    from trials.train.probe import UnitTimes

__all__ = [  # sorted; the module docstring groups them
    "CLIP_SCORE", "CLIP_SCORE_STDERR", "CONTROL_PER_PROMPT", "CONTROL_SCORE", "DISTRIBUTIONS",
    "DRIFT", "DRIFT_PER_PROMPT", "FAULT_KINDS", "INTEGRAL", "LEAK", "LEAK_PER_PROMPT",
    "MAX_TRAIN_STEPS", "OPTIONAL_PARAMETERS", "PARAMETER_NAMES", "PARAMETER_PATHS", "PER_PROMPT",
    "PROMPT_INDICES", "RACED", "RESUME_DIR", "STEP", "TARGET_PRESETS", "TOP_LEVEL_KEYS", "TOYWORLD",
    "TOYWORLD_CLIP_DIR", "TOYWORLD_SD_DIR", "TRAIN_LOSS", "WEIGHTS_NAME", "ConfigError",
    "DataCheck", "DataError", "DataSpec", "EvalSpec", "HyperParams", "KohyaExportError",
    "ModelError", "ModelSpec", "Parameter", "PreservationSpec", "RungReport", "Section",
    "SetupError", "SyntheticData", "TrainSpec", "TrialConfig", "TrialDiverged", "TrialError",
    "TrialOutOfMemory", "bucket_lines", "check_data", "check_model", "check_param_value",
    "check_prompt_triggers", "check_scorer", "check_target_modules", "closest", "describe",
    "held_out_files", "load_yaml_mapping", "long_prompts",
    "make_params", "parse_parameters", "probe_blocker", "probe_times", "read_data", "read_eval",
    "read_model", "read_preservation", "read_train", "report", "rescore", "resume_step",
    "resumed_rungs",
    "run_baseline",
    "run_trial", "rung_steps", "setting", "settings", "write_kohya",
]


def run_trial(config: TrialConfig, report: Report, race: RungRace | None = None,
              resume_from: Path | None = None) -> TrialResult:
    """Train one LoRA, scoring it at every rung and calling ``report`` with the rung's metrics
    and a folder holding the LoRA so far; stops when ``report`` returns True, or when ``race``
    stops a rung's drawing (that rung's metrics carry ``raced``; the trial then ends).

    ``resume_from``: a rung folder a ``report`` was given (or a folder of such folders: the
    newest complete one); the trial goes on from its step exactly as if it had not stopped,
    and reports only the rungs after it. None, or no complete checkpoint there: from step 0.

    Returns the trial's result (best rung, its LoRA folder; ``resumed_from_step``). Raises
    :class:`TrialError` (:class:`TrialDiverged`, :class:`DataError`, ...), ``ValueError`` for a
    checkpoint of another trial, and whatever else training raises.
    """
    from trials.train import loop

    return loop.run_trial(config, report, race, resume_from)


def resume_step(folder: Path) -> int | None:
    """The step a trial given ``resume_from=folder`` goes on from, or None (no complete
    checkpoint in ``folder``: it starts over)."""
    from trials.train import resume

    found = resume.latest(Path(folder))
    return None if found is None else resume.step_of(found)


def resumed_rungs(folder: Path) -> list[RungReport]:
    """The rungs a trial resumed from ``folder`` had reported before it (the checkpoint keeps
    them), oldest first; empty without a complete checkpoint there."""
    from trials.train import resume

    return [RungReport.from_dict(r) for r in resume.rungs_at(Path(folder))]


def run_baseline(config: TrialConfig) -> dict[str, Any]:
    """Score the base model without LoRA on every trial's prompts and seeds, building the
    shared latent cache on the way. Returns a rung's metrics (``clip_score``, ``per_prompt``,
    ...) plus ``eval_seconds`` and ``cache_file``; raises :class:`TrialError` as a trial."""
    from trials.train import loop

    return loop.run_baseline(config)


def rescore(config: TrialConfig, lora_dir: Path | None, seed: int,
            images_per_prompt: int | None = None) -> dict[str, Any]:
    """Score the LoRA in ``lora_dir`` (None: the base model) on ``config``'s prompts with base
    seed ``seed``. Returns a rung's metrics plus ``seed``, ``images_per_prompt`` and
    ``eval_seconds``; raises ``FileNotFoundError`` when the folder holds no LoRA."""
    from trials.train import rescore as rescoring

    return rescoring.rescore(config, lora_dir, seed, images_per_prompt)


def probe_blocker(config: TrialConfig) -> str | None:
    """Why :func:`probe_times` would first have to download or build a model (None: it need
    not, every model is local)."""
    from trials.train import probe

    return probe.not_local(config)


def probe_times(config: TrialConfig, threads: int, device: str = "cpu") -> UnitTimes:
    """Seconds per optimizer step and per rung image of ``config`` on ``device`` with
    ``threads`` torch threads, timed for about two seconds. Raises what loading raises."""
    import torch

    from trials.train import probe

    return probe.measure(config, torch.device(device), threads)


def write_kohya(lora_dir: Path) -> Path:
    """Write the kohya-format file (AUTOMATIC1111, ComfyUI) beside the LoRA in ``lora_dir``;
    returns its path. Raises :class:`KohyaExportError` when the LoRA cannot be converted."""
    from trials import export_kohya

    return export_kohya.write_kohya(lora_dir)
