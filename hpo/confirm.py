"""Confirmation on fresh seeds: re-score the top-k candidates after the search.

The search score of the winner is the maximum of noisy estimates, so it is biased upward (the
winner's curse), and the search seeds are the ones the selection has seen. After the search,
the ``confirm.top_k`` best candidates (by the sweep's ``select`` rule, :mod:`hpo.winner`) have
their best rung's LoRA scored again on ``confirm.seed`` (optionally with more images per
prompt), together with the base model on the same seeds, in parallel Ray tasks with a
trial's resources. The winner is then the best *confirmed* candidate (:func:`hpo.winner.pick`).

Each result is written to the study as soon as its task ends (study attrs
``confirm_trial_<number>``, ``confirm_baseline``, with the seed and image count used), so a
rerun after a crash or a kill re-scores only what is missing, and a confirmation with other
settings is not mistaken for this one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from hpo import winner
from hpo.spec import Sweep
from trials.config import TrialConfig

log = logging.getLogger("hpo")


def settings_of(sweep: Sweep) -> dict[str, int]:
    c = sweep.confirm
    return {"top_k": c.top_k, "seed": c.seed, "images_per_prompt": c.images_per_prompt}


def pending_jobs(sweep: Sweep, study: optuna.Study, study_dir: Path, cache_dir: Path
                 ) -> dict[str, tuple[TrialConfig, str | None]]:
    """What still needs scoring: each top-k candidate (and the baseline) without a result on
    these seeds. A stored error counts as missing, so a rerun tries it again."""
    from hpo.plan import baseline_values

    settings = settings_of(sweep)
    attrs = study.user_attrs
    jobs: dict[str, tuple[TrialConfig, str | None]] = {}

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
        jobs[key] = (config, trial.user_attrs.get("lora_path"))
    if top and missing(winner.BASELINE_KEY):
        config = sweep.trial_config(baseline_values(sweep),
                                    output_dir=study_dir / "confirm" / "baseline",
                                    cache_dir=cache_dir)
        jobs[winner.BASELINE_KEY] = (config, None)
    return jobs


def confirm(sweep: Sweep, study: optuna.Study, study_dir: Path, cache_dir: Path,
            address: str | None) -> dict[str, Any] | None:
    """Score what is missing of the top-k on the fresh seeds; returns best.yaml's
    ``result.confirmation`` (None when ``top_k`` is 0 or nothing is COMPLETE)."""
    from hpo import tune as tuning
    from hpo.tune import _jsonable

    if sweep.confirm.top_k == 0:
        return None
    settings = settings_of(sweep)
    if study.user_attrs.get(winner.SETTINGS_KEY) != settings:
        study.set_user_attr(winner.SETTINGS_KEY, settings)
    jobs = pending_jobs(sweep, study, study_dir, cache_dir)
    for key, (_, lora) in list(jobs.items()):
        if key != winner.BASELINE_KEY and not lora:
            study.set_user_attr(key, {**settings, "error": "the trial recorded no LoRA path"})
            del jobs[key]
    if jobs:
        log.info("confirming on fresh seeds (seed %d, %d image(s) per prompt): %s",
                 settings["seed"], settings["images_per_prompt"], ", ".join(sorted(jobs)))
        cluster = tuning.start_ray(address)
        for key, scores in tuning.rescore_tasks(sweep, cluster, jobs, settings["seed"],
                                                settings["images_per_prompt"]):
            record = {**_jsonable(scores), "seed": settings["seed"],
                      "images_per_prompt": settings["images_per_prompt"]}
            study.set_user_attr(key, record)  # at once: a rerun after a kill keeps it
            if "error" in record:
                log.warning("confirmation %s failed: %s", key, record["error"])
            else:
                log.info("confirmation %s: clip_score %.4f ± %.4f", key, record["clip_score"],
                         record.get("clip_score_stderr") or float("nan"))
    return winner.confirmation_summary(study)
