"""What a sweep leaves behind: ``best.yaml``, ``best_lora/``, and ``trials.csv``.

``best.yaml`` is itself a config that ``python -m trials.train`` accepts: the sweep's fixed
settings with every parameter pinned to the winner's value, plus a ``result`` section and the
closest ``accelerate launch train_text_to_image_lora.py`` command for the reference script.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import optuna
import yaml

from hpo.study.storage import counted_trials
from hpo.sweep.fidelity import exported_steps
from hpo.sweep.spec import Sweep
from hpo.verdict.winner import best_trial
from trials.api import (
    CLIP_SCORE,
    CLIP_SCORE_STDERR,
    RESUME_DIR,
    TARGET_PRESETS,
    WEIGHTS_NAME,
    KohyaExportError,
    settings,
    write_kohya,
)

log = logging.getLogger("hpo")


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the reference command) as readable ``|`` blocks."""


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_block)


def winning_values(sweep: Sweep, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Every parameter's value for ``trial``: sampled ones from Optuna, fixed ones as written."""
    values = {p.name: p.value for p in sweep.parameters if p.is_fixed}
    values.update(trial.params)
    return values


def reference_command(
    sweep: Sweep, values: dict[str, Any], best_step: int
) -> tuple[str, list[str]]:
    """The reference script's command for this config, and what it cannot express."""
    d, t = sweep.data, sweep.train
    config = sweep.trial_config(values, output_dir=Path("."), cache_dir=Path("."))
    p = config.params
    args = [
        f'--pretrained_model_name_or_path="{sweep.model.name}"',
        f'--train_data_dir="{d.train_dir}"',
        f'--caption_column="{d.caption_column}"',
        f"--resolution={d.resolution}",
        f'--image_interpolation_mode="{d.image_interpolation_mode}"',
        *(["--center_crop"] if d.center_crop else []),
        *(["--random_flip"] if d.random_flip else []),
        f"--train_batch_size={t.train_batch_size}",
        f"--gradient_accumulation_steps={t.gradient_accumulation_steps}",
        f"--learning_rate={p.learning_rate:.6g}",
        f'--lr_scheduler="{t.lr_scheduler}"',
        f"--lr_warmup_steps={t.lr_warmup_steps}",
        f"--max_train_steps={best_step}",
        f"--checkpointing_steps={sweep.eval.every_steps}",
        f'--mixed_precision="{t.mixed_precision}"',
        f"--seed={t.seed}",
        f"--rank={p.rank}",
        '--output_dir="./lora_output"',
    ]
    if sweep.model.revision:
        args.append(f'--revision="{sweep.model.revision}"')
    if sweep.model.variant:
        args.append(f'--variant="{sweep.model.variant}"')
    if t.snr_gamma:
        args.append(f"--snr_gamma={t.snr_gamma:g}")
    if t.noise_offset:
        args.append(f"--noise_offset={t.noise_offset:g}")
    if t.prediction_type:
        args.append(f'--prediction_type="{t.prediction_type}"')
    if t.gradient_checkpointing:
        args.append("--gradient_checkpointing")
    notes = []
    if p.target_modules != "attn":
        notes.append(
            f"target_modules {p.target_modules!r} cannot be expressed: the reference script "
            f"always trains {', '.join(TARGET_PRESETS['attn'])} in attn1 and attn2")
    if p.lora_alpha != p.rank:
        notes.append(f"lora_alpha {p.lora_alpha:g} != rank {p.rank} cannot be expressed: the "
                     "reference script sets alpha = rank")
    if p.adapter != "lora":
        notes.append(f"adapter {p.adapter!r} cannot be expressed: the reference script trains "
                     "a plain LoRA")
    if config.caption_dropout:
        notes.append(f"caption_dropout {config.caption_dropout:g} cannot be expressed: the "
                     "reference script always trains on the caption")
    method = config.preservation_method
    if method == "prior":
        notes.append(f"preservation prior (weight {config.preservation_weight:g}) cannot be "
                     "expressed: train_text_to_image_lora.py has no prior preservation "
                     "(diffusers' train_dreambooth_lora.py has --with_prior_preservation "
                     "--prior_loss_weight)")
    elif method == "dop":
        notes.append(f"preservation dop (weight {config.preservation_weight:g}) cannot be "
                     "expressed: differential output preservation is kohya sd-scripts' "
                     "(PR #1710); the diffusers scripts have none")
    if best_step != p.max_train_steps and t.lr_scheduler != "constant":
        notes.append(f"the sweep trained {p.max_train_steps} steps and kept step {best_step}; "
                     f"with the {t.lr_scheduler} schedule a shorter run follows another curve")
    if t.max_grad_norm:
        notes.append(f"max_grad_norm {t.max_grad_norm:g} clips here; in the reference script "
                     "clipping has no effect")
    command = "accelerate launch train_text_to_image_lora.py \\\n  " + " \\\n  ".join(args)
    return command, notes


def write_best_yaml(sweep: Sweep, study: optuna.Study, out_dir: Path, storage_label: str,
                    baseline: float | None, trial: optuna.trial.FrozenTrial | None = None,
                    path: Path | None = None) -> Path | None:
    """Write ``best.yaml`` for the winner (:func:`hpo.verdict.winner.best_trial`); None when there
    is none yet. With ``trial`` and ``path``: the same document for that trial at ``path`` (the
    Pareto files), and ``best_lora/`` is left alone."""
    from hpo.verdict import winner

    is_winner = trial is None
    trial = trial or best_trial(study)
    if trial is None:
        return None
    values = winning_values(sweep, trial)
    attrs = trial.user_attrs
    best_step = int(attrs.get("best_step") or values["max_train_steps"])
    # Where a shorter run is a prefix of the trained one, the best rung IS that run.
    values["max_train_steps"] = exported_steps(sweep, int(values["max_train_steps"]), best_step)
    command, notes = reference_command(sweep, values, best_step)
    ran = attrs.get("precision")  # what the trial's device actually ran (fp32 on a CPU)
    if ran and ran != sweep.train.mixed_precision:
        notes.append(f"mixed_precision {sweep.train.mixed_precision} was asked for, but the "
                     f"trial ran {ran} on {attrs.get('device')}: its score is that run's")
    best_lora = out_dir / "best_lora"
    doc = {
        "name": f"{study.study_name}-best",
        # The sections as the sweep file's definition writes them (trials.settings.dump), so
        # python -m trials.train reads them back as they were (tests/hpo/sweep/test_schema.py).
        "model": settings.dump(sweep.model),
        "data": settings.dump(sweep.data),
        "train": settings.dump(sweep.train),
        "eval": settings.dump(sweep.eval),
        "metric": {"name": sweep.metric, "goal": sweep.goal},
        "parameters": {name: {"value": value} for name, value in values.items()},
        "result": {
            "study": study.study_name,
            "storage": storage_label,
            "trial": trial.number,
            # the search score: the best rung's, on the search seeds
            CLIP_SCORE: attrs.get("score_per_rung", {}).get(str(best_step), trial.value
                                                              if len(trial.values or ()) == 1
                                                              else None),
            CLIP_SCORE_STDERR: attrs.get(CLIP_SCORE_STDERR),
            "baseline_clip_score": baseline,
            "delta_vs_baseline": attrs.get("delta_vs_baseline"),
            # paired by prompt (same seeds): see hpo.verdict.paired
            "delta_vs_baseline_stderr": attrs.get("delta_vs_baseline_stderr"),
            "clip_i": attrs.get("clip_i"),
            "best_step": best_step,
            "precision": ran,
            "lora": str(best_lora / WEIGHTS_NAME),
            "trial_lora": attrs.get("lora_path"),
            "reference_command": command,
            "reference_notes": notes,
        },
    }
    pres = sweep.preservation
    if pres.measured:
        doc["preservation"] = settings.dump(pres)
        # The exported rung's figures on the search seeds (hpo.verdict.preservation).
        doc["result"]["preservation"] = {
            k: attrs.get(k) for k in ("control_score", "control_delta", "control_delta_stderr",
                                      "control_delta_p_value", "drift", "drift_stderr", "leak",
                                      "leak_stderr", "leak_p_value", "constraints")}
    if len(study.directions) > 1:
        doc["result"]["objectives"] = winner.search_metrics(study, trial)
        doc["result"]["pareto_optimal"] = trial.number in {t.number for t in study.best_trials}
    confirmation = winner.confirmation_summary(study) if is_winner else None
    missing = winner.confirmation_missing(study) if is_winner else {}
    if missing:  # a confirmation was asked for and did not (fully) run: say so, never omit it
        confirmation = {**(confirmation or {"confirmed": False}), "missing": missing}
    if confirmation is not None:
        doc["result"]["confirmation"] = confirmation
    path = path or out_dir / "best.yaml"
    kind = "Best" if is_winner else "Pareto-optimal"
    header = (
        f"# {kind} configuration of study {study.study_name!r} (trial {trial.number}).\n"
        "# Reproduce it without Ray:  python -m trials.train " + str(path) + "\n"
        "# result.reference_command is the closest command for diffusers'\n"
        "# train_text_to_image_lora.py; result.reference_notes lists what it cannot express.\n"
    )
    if confirmation is not None and confirmation.get("verdict"):
        header += f"# Confirmation on fresh seeds: {confirmation['verdict']}.\n"
    if missing:
        header += ("# NOT confirmed on fresh seeds" if "verdict" not in (confirmation or {})
                   else "# The confirmation is incomplete") + \
            f": no result for {', '.join(missing)} (result.confirmation.missing).\n"
    tmp = path.with_suffix(".yaml.tmp")
    text = header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    lora = attrs.get("lora_path")
    if is_winner and lora and Path(lora).is_dir():
        staging = out_dir / "best_lora.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        # The LoRA, not the state its trial would resume from (optimizer, RNGs).
        shutil.copytree(lora, staging, ignore=shutil.ignore_patterns(RESUME_DIR))
        write_kohya_beside(staging)
        shutil.rmtree(best_lora, ignore_errors=True)
        staging.rename(best_lora)
    return path


def write_kohya_beside(lora_dir: Path) -> Path | None:
    """The kohya-format file (AUTOMATIC1111, ComfyUI) beside a LoRA; None, with a warning,
    when the adapter cannot be exported in that format (DoRA)."""
    try:
        return write_kohya(lora_dir)
    except KohyaExportError as err:
        log.warning("warning: %s: no kohya file: %s", lora_dir.name, err)
        return None


def write_trials_csv(study: optuna.Study, out_dir: Path) -> Path:
    """One row per trial: number, state, value, parameters, timings and scores."""
    frame = study.trials_dataframe(
        attrs=("number", "state", "value", "datetime_start", "datetime_complete", "duration",
               "params", "user_attrs"))
    counted = {t.number for t in counted_trials(study)}
    if "number" in frame:  # a study stopped before its first trial has no columns at all
        frame["counted"] = frame["number"].isin(counted)
    path = out_dir / "trials.csv"
    frame.to_csv(path, index=False)
    return path
