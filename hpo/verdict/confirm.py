"""Confirmation on fresh seeds: re-score the top-k candidates after the search.

The search score of the winner is the maximum of noisy estimates, so it is biased upward (the
winner's curse), and the search seeds are the ones the selection has seen. After the search,
the ``confirm.top_k`` best candidates (by the sweep's ``select`` rule, :mod:`hpo.verdict.winner`)
have their best rung's LoRA scored again on ``confirm.seed`` (optionally with more images per
prompt), together with the base model on the same seeds. The winner is then the best
*confirmed* candidate (:func:`hpo.verdict.winner.pick`).

This module decides what to score and records what came back. The scoring runs wherever the
caller's ``score`` sends it (the sweep passes :func:`hpo.dispatch.tune.confirmation_scorer`:
parallel Ray tasks with a trial's resources), so the verdict never imports Ray.

Each result is written to the study as soon as its task ends (study attrs
``confirm_trial_<number>``, ``confirm_baseline``, with the seed and image count used), so a
rerun after a crash or a kill re-scores only what is missing, and a confirmation with other
settings is not mistaken for this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from hpo.study.storage import jsonable
from hpo.sweep.space import baseline_values
from hpo.sweep.spec import Sweep
from hpo.verdict import winner
from trials.api import CLIP_SCORE, CLIP_SCORE_STDERR, TrialConfig

log = logging.getLogger("hpo")

# key -> (the trial's config, its LoRA folder or None for the base model)
Jobs = dict[str, tuple[TrialConfig, str | None]]
# (jobs, seed, images per prompt) -> (key, scores) pairs as each job ends; a failed job's scores
# are {"error": "..."}.
ScoreJobs = Callable[[Jobs, int, int], Iterable[tuple[str, dict[str, Any]]]]


def settings_of(sweep: Sweep) -> dict[str, int]:
    """What a stored confirmation must have been drawn with to count: top_k, seed, images per
    prompt, and its sampler steps where they differ from the search's rungs (a study confirmed
    before the confirmation had steps of its own recorded none, and matches while equal)."""
    c = sweep.confirm
    out = {"top_k": c.top_k, "seed": c.seed, "images_per_prompt": c.images_per_prompt}
    if c.inference_steps != sweep.eval.inference_steps:
        out["inference_steps"] = c.inference_steps
    return out


def full_size(sweep: Sweep, config: TrialConfig) -> TrialConfig:
    """``config`` drawing as the confirmation does: its sampler steps (the image count and
    seed are the scorer's arguments)."""
    steps = sweep.confirm.inference_steps or config.eval.inference_steps
    return replace(config, eval=replace(config.eval, inference_steps=steps))


def pending_jobs(sweep: Sweep, study: optuna.Study, study_dir: Path, cache_dir: Path) -> Jobs:
    """What still needs scoring: each top-k candidate (and the baseline) without a result on
    these seeds. A stored error counts as missing, so a rerun tries it again."""
    settings = settings_of(sweep)
    attrs = study.user_attrs
    jobs: Jobs = {}

    def missing(key: str) -> bool:
        record = attrs.get(key)
        return not (isinstance(record, dict) and winner.matches(record, settings)
                    and "error" not in record)

    top = winner.candidates(study)[: sweep.confirm.top_k]
    for trial in top:
        key = winner.trial_key(trial.number)
        if not missing(key):
            continue
        values = {p.name: p.value for p in sweep.parameters if p.is_fixed}
        values.update(trial.params)
        config = sweep.trial_config(values, output_dir=study_dir / "confirm" /
                                    f"trial-{trial.number}", cache_dir=cache_dir)
        jobs[key] = (full_size(sweep, config), trial.user_attrs.get("lora_path"))
    if top and missing(winner.BASELINE_KEY):
        config = sweep.trial_config(baseline_values(sweep),
                                    output_dir=study_dir / "confirm" / "baseline",
                                    cache_dir=cache_dir)
        jobs[winner.BASELINE_KEY] = (full_size(sweep, config), None)
    return jobs


def confirm(sweep: Sweep, study: optuna.Study, study_dir: Path, cache_dir: Path,
            score: ScoreJobs) -> dict[str, Any] | None:
    """Score what is missing of the top-k on the fresh seeds with ``score`` (called once, and
    only when something is missing); returns best.yaml's ``result.confirmation`` (None when
    ``top_k`` is 0 or nothing is COMPLETE)."""
    settings = settings_of(sweep)
    if study.user_attrs.get(winner.SETTINGS_KEY) != settings:
        # Recorded with top_k 0 too: a study confirmed before must not look unconfirmed now.
        study.set_user_attr(winner.SETTINGS_KEY, settings)
    if sweep.confirm.top_k == 0:
        return None
    jobs = pending_jobs(sweep, study, study_dir, cache_dir)
    for key, (_, lora) in list(jobs.items()):
        if key != winner.BASELINE_KEY and not lora:
            study.set_user_attr(key, {**settings, "error": "the trial recorded no LoRA path"})
            del jobs[key]
    if jobs:
        log.info("confirming on fresh seeds (seed %d, %d image(s) per prompt, %d sampler steps):"
                 " %s", settings["seed"], settings["images_per_prompt"],
                 sweep.confirm.inference_steps or sweep.eval.inference_steps,
                 ", ".join(sorted(jobs)))
        for key, scores in score(jobs, settings["seed"], settings["images_per_prompt"]):
            record = {**jsonable(scores), "seed": settings["seed"],
                      "images_per_prompt": settings["images_per_prompt"]}
            if "inference_steps" in settings:
                record["inference_steps"] = settings["inference_steps"]
            study.set_user_attr(key, record)  # at once: a rerun after a kill keeps it
            if "error" in record:
                log.warning("confirmation %s failed: %s", key, record["error"])
            else:
                log.info("confirmation %s: %s %.4f ± %.4f", key, CLIP_SCORE, record[CLIP_SCORE],
                         record.get(CLIP_SCORE_STDERR) or float("nan"))
    return winner.confirmation_summary(study)


def missing_lines(missing: dict[str, str]) -> list[str]:
    """The summary's lines on what the confirmation on fresh seeds lacks (``missing``: from
    :func:`hpo.verdict.winner.confirmation_missing`): each reason once with what it hit, and
    what to do."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in missing.items():
        who = "the base model" if key == winner.BASELINE_KEY else f"trial {key.rsplit('_', 1)[1]}"
        first = (reason.strip().splitlines() or ["not scored"])[0][:300]
        by_reason.setdefault(first, []).append(who)
    return [f"  {', '.join(who)}: {reason}" for reason, who in by_reason.items()] + [
        "  fix the cause and rerun the same command: only the missing confirmation runs"]
