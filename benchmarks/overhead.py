"""Orchestration overhead of a sweep: the time not spent training or scoring.

Read from the study a sweep leaves (the 20-trial demo sweep's, see :mod:`benchmarks.demo`) and
the wall time of its process, measured from outside:

- each trial's *span* is Optuna's ``datetime_complete - datetime_start``: from the moment the
  searcher was asked for its parameters to the moment its result was written;
- within a trial, ``train_seconds`` and ``eval_seconds`` (user attrs, the trial's own timers)
  are the useful work: the training steps, and drawing plus CLIP-scoring the rung images
  (with the rung's LoRA save);
- per-trial overhead = span - train - eval: scheduling, the worker picking the trial up, model
  loading, the cache read and the evaluator build (``setup_seconds``, also shown on its own),
  reporting, and Tune copying the rung checkpoint;
- start-up = process start -> the first trial's start (imports, checks, ``ray.init``, the
  baseline's model load, cache build and scoring); the tail = the last trial's end -> process
  exit (Ray shutdown, best.yaml, trials.csv);
- the share of wall time not spent training or scoring counts ``slots`` trial slots for the
  whole wall time: ``1 - (sum of train + eval, baseline scoring included) / (slots * wall)``.
  The same share after start-up uses the time from the first trial's start to the last one's
  end instead, and the amortised per-trial overhead is that slot-time minus the useful work,
  divided by the number of trials (it includes slots left idle between trials).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.common import SweepRun, TrialRecord, median


@dataclass(frozen=True)
class Overhead:
    trials: int
    slots: int
    wall_seconds: float
    startup_seconds: float
    tail_seconds: float
    useful_seconds: float  # train + eval of every trial, plus the baseline's scoring
    share: float  # of slots * wall, not training or scoring
    share_after_startup: float
    per_trial_median: float  # span - train - eval
    per_trial_setup_median: float  # setup_seconds: model load, cache read, evaluator build
    per_trial_rest_median: float  # span - train - eval - setup
    amortised_per_trial: float  # (slots * (last end - first start) - useful) / trials
    first_trial_overhead: float  # the first trial pays for starting the worker processes


def overhead(records: list[TrialRecord], *, started_at: float, ended_at: float, slots: int,
             baseline_eval_seconds: float = 0.0) -> Overhead:
    """The overhead figures from a study's finished trials and its process's start and end."""
    timed = sorted((r for r in records if r.span is not None), key=lambda r: r.start or 0.0)
    if not timed:
        raise ValueError("no finished trial with start and end times in the study")
    work = [r.attr("train_seconds") + r.attr("eval_seconds") for r in timed]
    per_trial = [r.span - w for r, w in zip(timed, work, strict=True)]  # type: ignore[operator]
    setup = [r.attr("setup_seconds") for r in timed]
    first_start = min(r.start for r in timed)  # type: ignore[type-var]
    last_end = max(r.end for r in timed)  # type: ignore[type-var]
    wall = ended_at - started_at
    useful = sum(work)
    active = last_end - first_start
    return Overhead(
        trials=len(timed),
        slots=slots,
        wall_seconds=wall,
        startup_seconds=first_start - started_at,
        tail_seconds=ended_at - last_end,
        useful_seconds=useful + baseline_eval_seconds,
        share=1 - (useful + baseline_eval_seconds) / (slots * wall),
        share_after_startup=1 - useful / (slots * active),
        per_trial_median=median(per_trial),
        per_trial_setup_median=median(setup),
        per_trial_rest_median=median([p - s for p, s in zip(per_trial, setup, strict=True)]),
        amortised_per_trial=(slots * active - useful) / len(timed),
        first_trial_overhead=per_trial[0],
    )


def from_run(run: SweepRun) -> Overhead:
    return overhead(run.records, started_at=run.started_at, ended_at=run.ended_at,
                    slots=run.slots,
                    baseline_eval_seconds=float(run.study_attrs.get("baseline_eval_seconds")
                                                or 0.0))
