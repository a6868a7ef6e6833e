"""What the study keeps of a trial's rungs: every field of :class:`trials.report.RungReport`
is recorded in the trial's user attrs (and so in ``trials.csv``) or dropped by a named
decision (:data:`NOT_RECORDED`, with the reason).

:class:`~hpo.dispatch.recorder.StudyRecorder` keeps each rung a trial reports as a :class:`Rung`
(the typed report, the preservation figures the driver adds, the Ray node) and, when the trial
ends, writes the attrs of :func:`trial_attrs`:

- the best full rung's measures (:data:`FROM_BEST`): the trial's result, whose LoRA is exported;
- the last report's running totals (:data:`FROM_LAST`): timings, what it ran on, how it
  accumulated; a raced rung's too (it is the trial's last work);
- a few measures of every rung as ``{step: value}`` (:data:`PER_RUNG`): the score (the
  intermediate value Optuna keeps is the sweep's metric alone) and the training diagnostics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo.sweep.spec import Resources
from trials.api import RungReport
from trials.api import report as r

NODE_ID = "node_id"  # the Ray node a rung was reported from (added at the Ray border)
# A retried attempt's first report, alone: the rung checkpoint it goes on from (its step).
RESUMED_FROM_STEP = "resumed_from_step"
# The config key that hands a re-queued trial's last rung checkpoint (its user attr
# RESUME_CHECKPOINTS, hpo.study.storage) to the trainable (hpo.dispatch.searcher, .tune).
RESUME_FROM = "__resume_from"
# What the trainable reports first when it goes on from another trial's checkpoint: the rungs
# that checkpoint's trial had reported, for the recorder to keep as this trial's.
RESUMED_RUNGS = "resumed_rungs"

# Fields of the best full rung, as user attrs of the same name (``step`` is ``best_step``).
FROM_BEST: tuple[str, ...] = (
    r.CLIP_SCORE_STDERR, r.CLIP_I, r.CLIP_I_HOLDOUT, r.DINO_HOLDOUT, r.N_HOLDOUT_IMAGES,
    r.PER_PROMPT,
    *(name for name in RungReport.preservation_fields()
      if name not in (r.DRIFT_PER_PROMPT, r.LEAK_PER_PROMPT)))

# Fields of the trial's last report (its running totals), as user attrs of the same name
# (``step`` is ``last_step``).
FROM_LAST: tuple[str, ...] = (*RungReport.names(r.TOTALS), r.ACCUMULATION)

# Fields of every scored rung, as ``{str(step): value}`` user attrs.
PER_RUNG: dict[str, str] = {
    r.CLIP_SCORE: "score_per_rung",
    r.TRAIN_LOSS: "train_loss_per_rung",
    r.GRAD_NORM: "grad_norm_per_rung",
    r.LEARNING_RATE_NOW: "learning_rate_per_rung",
}

# The user attr that holds each recorded field, where its name differs from the field's.
RECORDED_AS: dict[str, str] = {
    **PER_RUNG,
    r.STEP: "best_step",  # and last_step
    r.PROMPT_INDICES: "subset_rungs",  # {step: prompts scored} of the prompt-subset rungs
    r.IMAGES_DRAWN: "images_drawn",  # summed over the rungs, a raced rung's included
    r.RACED: "raced",  # RungReport.raced_record: the decision with the partial scores
}

# Measures a rung reports that the study does not keep, and why.
NOT_RECORDED: dict[str, str] = {
    r.MAX_TRAIN_STEPS: "the trial's own parameter (its params or the sweep's fixed config); "
                       "last_step below it is what PRUNED says",
    r.N_IMAGES: "the brand images alone: images_drawn counts them with the control images "
                "(and a raced rung's record keeps its own)",
    r.SAMPLES: "a path in the rung's folder, which is deleted once Tune has copied it; the "
               "grid itself is an artifact of the trial (hpo.outputs.artifacts)",
    r.SCREENING: "the sweep says which rungs screen (eval.subset_rungs, the study attr "
                 "subset_rungs); per trial, score_per_rung has them and best_step never is one",
    r.DRIFT_PER_PROMPT: "summed up by drift and drift_stderr (hpo.verdict.preservation, "
                        "paired over the control prompts); the list would double the attrs "
                        "of a preserving trial for no reader",
    r.LEAK_PER_PROMPT: "summed up by leak, leak_stderr and leak_p_value (as drift's)",
}


def recorded_attr(name: str) -> str | None:
    """The user attr that records field ``name``; None when it is not recorded."""
    if name in NOT_RECORDED:
        return None
    if name in RECORDED_AS:
        return RECORDED_AS[name]
    return name if name in FROM_BEST or name in FROM_LAST else None


@dataclass(frozen=True)
class Rung:
    """A rung as the driver keeps it: the trial's report, the preservation figures computed
    here (:func:`hpo.verdict.preservation.control_stats`, with the constraint values) and the
    Ray node it came from."""

    report: RungReport
    figures: dict[str, Any] = field(default_factory=dict)
    node_id: str | None = None

    @property
    def step(self) -> int:
        return int(self.report.step)

    def get(self, name: str) -> Any:
        """A measure by name: a driver figure (paired drift, control Δ), else the report's."""
        return self.figures[name] if name in self.figures else self.report.get(name)

    def as_dict(self) -> dict[str, Any]:
        """The flat dict the observers (console, artifacts, trackers) are given."""
        node = {NODE_ID: self.node_id} if self.node_id else {}
        return {**self.report.to_dict(), **node, **self.figures}


def totals_attrs(last: Rung, resources: Resources) -> dict[str, Any]:
    """The running totals of the trial's last report, with the GPU and CPU seconds spent."""
    rep = last.report
    busy = rep.train_seconds + rep.eval_seconds + (rep.setup_seconds or 0)
    return {
        **{name: getattr(rep, name) for name in FROM_LAST},
        NODE_ID: last.node_id,  # the Ray node that ran the trial's last rung
        "gpu_seconds": busy * resources.gpu_per_trial if rep.device == "cuda" else 0.0,
        "cpu_seconds": busy * resources.cpu_per_trial,
        "last_step": rep.step,
    }


def per_rung_attrs(rungs: Sequence[Rung], raced: Rung | None) -> dict[str, Any]:
    """Every scored rung's :data:`PER_RUNG` measures, the prompt-subset rungs, and the images
    drawn (a raced rung's too: evaluation compute, whatever racing and subsets spared)."""
    out: dict[str, Any] = {attr: {str(g.step): g.report.get(name) for g in rungs}
                           for name, attr in PER_RUNG.items()}
    subset = {str(g.step): len(g.report.prompt_indices) for g in rungs
              if g.report.prompt_indices}
    if subset:  # rungs that scored a prompt subset (ASHA's alone): prompts scored
        out["subset_rungs"] = subset
    if raced is not None:
        out[r.RACED] = raced.report.raced_record()
    out[r.IMAGES_DRAWN] = sum(g.report.images_drawn for g in rungs) + (
        raced.report.images_drawn if raced is not None else 0)
    return out


def best_attrs(best: Rung) -> dict[str, Any]:
    """The best rung's measures (:data:`FROM_BEST`) and its preservation figures; a
    preservation measure only when the rung has it."""
    preserving = set(RungReport.preservation_fields())
    out: dict[str, Any] = {"best_step": best.step}
    for name in FROM_BEST:
        value = best.get(name)
        if value is not None or name not in preserving:
            out[name] = list(value) if isinstance(value, tuple) else value
    out.update({k: v for k, v in best.figures.items() if v is not None})
    return out
