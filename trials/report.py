"""What one rung of a trial reports: the metric names, and :class:`RungReport`.

A trial only reports (as syne-tune's reporter does): at every evaluation rung
:func:`trials.train.loop.run_trial` builds one :class:`RungReport` and hands it to its
``report`` callback. Whoever runs the trial decides what to keep; the orchestrator converts it to
a flat dict at the Ray border (:meth:`RungReport.to_dict`: Ray Tune's ``tune.report`` takes
JSON-able values) and back (:meth:`RungReport.from_dict`), and records it in the study.

The names below are the keys of that dict and the names of the report's fields; code that reads
a metric by name (a sweep's ``metric:``, the study's user attrs, ``trials.csv``) uses these
constants rather than spelling the string again. This module is pure data: no torch, no numpy.

Units: CLIP scores are on the CLIP score's scale, ``100 * max(cos, 0)`` (Hessel et al. 2021);
image similarities (CLIP-I, DINO, drift) are ``100 * cos``; seconds are wall-clock seconds of the
trial's process, summed from the trial's start (running totals, not per rung).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

# The score: CLIP-T of the rung's images against the held-out prompts (trials.eval.score).
CLIP_SCORE = "clip_score"
CLIP_SCORE_STDERR = "clip_score_stderr"
PER_PROMPT = "per_prompt"
PROMPT_INDICES = "prompt_indices"
N_IMAGES = "n_images"
IMAGES_DRAWN = "images_drawn"
SAMPLES = "samples"
CLIP_I = "clip_i"
# Fidelity to held-out real images (trials.eval.subject_fidelity).
CLIP_I_HOLDOUT = "clip_i_holdout"
DINO_HOLDOUT = "dino_holdout"
N_HOLDOUT_IMAGES = "n_holdout_images"
# Preservation on the control prompts (trials.eval.preservation, trials.train.preserve).
CONTROL_SCORE = "control_score"
CONTROL_SCORE_STDERR = "control_score_stderr"
CONTROL_PER_PROMPT = "control_per_prompt"
DRIFT = "drift"
DRIFT_PER_PROMPT = "drift_per_prompt"
LEAK = "leak"
LEAK_PER_PROMPT = "leak_per_prompt"
PRESERVATION = "preservation"
PRESERVATION_WEIGHT = "preservation_weight"
PRESERVATION_LOSS = "preservation_loss"
# Where the rung is in the trial.
STEP = "step"
MAX_TRAIN_STEPS = "max_train_steps"
# Training diagnostics (trials.train.loop).
TRAIN_LOSS = "train_loss"
GRAD_NORM = "grad_norm"
LEARNING_RATE_NOW = "learning_rate_now"
ACCUMULATION = "accumulation"
# The trial's running totals: timings and what it ran on.
TRAIN_SECONDS = "train_seconds"
EVAL_SECONDS = "eval_seconds"
SETUP_SECONDS = "setup_seconds"
SAMPLES_PER_SECOND = "samples_per_second"
PEAK_MEMORY_MB = "peak_memory_mb"
DEVICE = "device"
PRECISION = "precision"
CACHE_HIT = "cache_hit"
# An ASHA-only rung (hpo.sweep.fidelity): it screens for early stopping and is never a result.
SCREENING = "screening"
# Racing (hpo.sweep.racing): the decision that stopped the rung part-way.
RACED = "raced"

# The groups of :class:`RungReport`'s fields (each field's ``metadata["group"]``).
SCORE, FIDELITY, PRESERVING, TRAINING, TOTALS, RACING = (
    "score", "fidelity", "preservation", "training", "totals", "racing")


def _metric(group: str, doc: str, *, baseline: bool = False, default: Any = None) -> Any:
    """A field of :class:`RungReport`: its group, whether the base model's score has it too
    (``baseline``: the study keeps it as ``baseline_<name>``) and its documentation."""
    return field(default=default, metadata={"group": group, "baseline": baseline, "doc": doc})


@dataclass(frozen=True)
class RungReport:
    """One rung's results. Lists are kept as tuples (the report is immutable); absent
    measures are None (a rung without control prompts has no drift)."""

    step: int = _metric(SCORE, "the training step of the rung (optimizer steps)",
                        default=MISSING)
    max_train_steps: int = _metric(SCORE, "the trial's last step; a rung below it whose trial "
                                          "ends was stopped early", default=MISSING)
    clip_score: float = _metric(SCORE, "CLIP-T of the brand images against their held-out "
                                       "prompts, mean of prompt means", baseline=True,
                                default=MISSING)
    clip_score_stderr: float = _metric(SCORE, "standard error of clip_score over prompt means",
                                       baseline=True, default=MISSING)
    per_prompt: tuple[float, ...] = _metric(SCORE, "each scored prompt's mean CLIP-T, in "
                                                   "held-out order", baseline=True, default=())
    prompt_indices: tuple[int, ...] | None = _metric(
        SCORE, "the places (in the held-out list) of the prompts scored, when a prompt subset "
               "or a raced rung scored fewer than all; None: every prompt")
    screening: bool = _metric(
        SCORE, "an ASHA-only rung (no step count the sweep may export): it feeds the early-"
               "stopping decision alone, so it draws no control images and is never the "
               "trial's result", default=False)
    n_images: int = _metric(SCORE, "brand images drawn and scored at this rung", default=0)
    images_drawn: int = _metric(SCORE, "images drawn at this rung, brand and control",
                                default=0)
    samples: str | None = _metric(SCORE, "path of the rung's labelled image grid (samples.png) "
                                         "in its checkpoint folder", baseline=True)
    clip_i: float | None = _metric(SCORE, "CLIP-I: 100 * cos of the images with a fixed subset "
                                          "of training images", baseline=True)
    clip_i_holdout: float | None = _metric(FIDELITY, "100 * cos (CLIP image features) with "
                                                     "held-out real images", baseline=True)
    dino_holdout: float | None = _metric(FIDELITY, "100 * cos (DINOv2 features) with held-out "
                                                   "real images", baseline=True)
    n_holdout_images: int | None = _metric(FIDELITY, "held-out real images compared with")
    control_score: float | None = _metric(PRESERVING, "CLIP-T of the control images (prompts "
                                                      "without the trigger)", baseline=True)
    control_score_stderr: float | None = _metric(PRESERVING, "its standard error over prompts")
    control_per_prompt: tuple[float, ...] | None = _metric(
        PRESERVING, "each control prompt's mean CLIP-T", baseline=True)
    drift: float | None = _metric(PRESERVING, "100 * cos of each control image with the base "
                                              "model's twin image (100: unchanged)")
    drift_per_prompt: tuple[float, ...] | None = _metric(PRESERVING, "drift per control prompt")
    leak: float | None = _metric(PRESERVING, "the brand margin's rise over the base model's, "
                                             "100 * cos difference (> 0: the brand leaks)")
    leak_per_prompt: tuple[float, ...] | None = _metric(PRESERVING, "leak per control prompt")
    preservation: str | None = _metric(PRESERVING, "the training-time preservation method: "
                                                   "none, prior or dop")
    preservation_weight: float | None = _metric(PRESERVING, "its loss weight (None with none)")
    preservation_loss: float | None = _metric(PRESERVING, "mean preservation loss since the "
                                                          "last rung")
    train_loss: float | None = _metric(TRAINING, "mean diffusion loss since the last rung")
    grad_norm: float | None = _metric(TRAINING, "the LoRA gradients' L2 norm before clipping, "
                                                "at the rung's step")
    learning_rate_now: float | None = _metric(TRAINING, "the scheduler's learning rate after "
                                                        "the rung's step")
    accumulation: str | None = _metric(TRAINING, "how the step's micro-batches ran: fused or "
                                                 "sequential (trials.train.accumulate)")
    train_seconds: float = _metric(TOTALS, "seconds training so far", default=0.0)
    eval_seconds: float = _metric(TOTALS, "seconds scoring rungs so far", default=0.0,
                                  baseline=True)
    setup_seconds: float | None = _metric(TOTALS, "seconds before the first step (model, "
                                                  "cache, evaluator, base control images)")
    samples_per_second: float | None = _metric(TOTALS, "training examples per second of "
                                                       "train_seconds")
    peak_memory_mb: float | None = _metric(TOTALS, "peak GPU allocation (CPU: the process's "
                                                   "peak resident memory), MiB")
    device: str | None = _metric(TOTALS, "cuda or cpu")
    precision: str | None = _metric(TOTALS, "the weights' precision that ran: fp16, bf16 or no")
    cache_hit: bool | None = _metric(TOTALS, "whether the training set's encodings came from "
                                             "the shared cache")
    raced: Mapping[str, Any] | None = _metric(
        RACING, "racing's decision that stopped the rung part-way (hpo.verdict.racing), with "
                "prompts_scored and prompts_total; the rung's scores cover the prompts drawn")

    def __post_init__(self) -> None:
        # Lists from JSON or from the evaluator become tuples: a frozen report stays unchanged.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif isinstance(value, Mapping) and not isinstance(value, dict):
                object.__setattr__(self, f.name, dict(value))

    @classmethod
    def names(cls, group: str | None = None) -> tuple[str, ...]:
        """The field names (of one group), in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if group is None or f.metadata["group"] == group)

    @classmethod
    def preservation_fields(cls) -> tuple[str, ...]:
        return cls.names(PRESERVING)

    @classmethod
    def baseline_fields(cls) -> tuple[str, ...]:
        """What the study keeps of the base model's scores (as ``baseline_<name>``)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["baseline"])

    @classmethod
    def doc(cls, name: str) -> str:
        """A field's unit and origin, in words."""
        return next(f.metadata["doc"] for f in dataclasses.fields(cls) if f.name == name)

    @property
    def is_raced(self) -> bool:
        """Stopped part-way by racing: a partial rung, never a candidate for the result."""
        return self.raced is not None

    @property
    def scored_every_prompt(self) -> bool:
        """A full rung: only these are comparable across trials."""
        return not self.prompt_indices and not self.is_raced

    @property
    def may_be_result(self) -> bool:
        """A rung whose LoRA may be the trial's result: a full rung that is no screening one
        (its step is one the sweep may export, and its control prompts were drawn)."""
        return self.scored_every_prompt and not self.screening

    def get(self, name: str) -> Any:
        """A metric by name (a sweep's objective); None for a name that is not a field."""
        return getattr(self, name, None) if name in _FIELDS else None

    def to_dict(self) -> dict[str, Any]:
        """A flat dict of JSON-able values (tuples as lists); absent (None) measures are left
        out, as Tune's schedulers read a key that is there as a number."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = list(value) if isinstance(value, tuple) else \
                dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RungReport:
        """The report of :meth:`to_dict`'s dict; other keys (Ray's own result keys, the node)
        are ignored."""
        return cls(**{k: data[k] for k in _FIELDS if k in data})

    def raced_record(self) -> dict[str, Any]:
        """The study's record of a raced rung: the decision with what the trial did score
        (the prompts drawn, their places and means, the partial score, the images)."""
        return {**(self.raced or {}), CLIP_SCORE: self.clip_score,
                PER_PROMPT: list(self.per_prompt),
                PROMPT_INDICES: None if self.prompt_indices is None else list(
                    self.prompt_indices), N_IMAGES: self.n_images}


_FIELDS: tuple[str, ...] = RungReport.names()
