"""Before and after a sweep: the dry-run plan, the pre-flight checks, the closing summary."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import forecast
from hpo.study.folders import check_writable, folders_to_write
from hpo.study.storage import clip_name, counted_trials, default_storage_url, redact
from hpo.sweep.fidelity import StepsPlan, subset_rungs
from hpo.sweep.spec import PreflightError, Sweep
from hpo.verdict import precision, preservation
from hpo.verdict.winner import best_trial, require_of
from trials.api import (
    CLIP_SCORE,
    CLIP_SCORE_STDERR,
    TrialError,
    bucket_lines,
    check_data,
    check_model,
    check_prompt_triggers,
    check_scorer,
    check_target_modules,
    long_prompts,
)

log = logging.getLogger("hpo")


def describe(sweep: Sweep, name: str, study_dir: Path, args: argparse.Namespace,
             steps: StepsPlan | None = None, measured: Sequence[str] = ()) -> str:
    """The resolved sweep, as ``--dry-run`` prints it; ``measured``: lines on what the study
    measured so far (:func:`hpo.verdict.precision.lines`), after the forecast."""
    d, t, e, r = sweep.data, sweep.train, sweep.eval, sweep.resources
    lines = [
        f"sweep {sweep.source}",
        f"  study          {name} ({sweep.method}, seed {sweep.seed}; {sweep.goal} {sweep.metric})",
        f"  model          {sweep.model.name}"
        + (f" @ {sweep.model.revision}" if sweep.model.revision else "")
        + (f" ({sweep.model.variant})" if sweep.model.variant else ""),
        f"  data           {d.train_dir} (caption column {d.caption_column!r}, "
        f"{d.resolution}px, {d.image_interpolation_mode} resize, "
        f"{'center' if d.center_crop else 'random'} crop"
        f"{', random flip' if d.random_flip else ''}"
        f"{', generated if missing' if d.synthetic else ''})",
        *([f"  buckets        {line}" for line in bucket_lines(d, sweep.model.name)]
          if d.aspect_buckets else []),
        f"  train          batch {t.train_batch_size} x accumulation "
        f"{t.gradient_accumulation_steps}, {t.lr_scheduler} LR (warmup {t.lr_warmup_steps}), "
        f"mixed precision {t.mixed_precision}, seed {t.seed}, max_grad_norm {t.max_grad_norm}, "
        f"snr_gamma {t.snr_gamma}, noise_offset {t.noise_offset}",
        f"  eval           {len(e.prompt_list)} prompts from {e.prompts} x "
        f"{e.images_per_prompt} image(s) of {e.width or d.resolution}x"
        f"{e.height or d.resolution}px, {e.inference_steps} steps, guidance "
        f"{e.guidance_scale:g}, seed {e.seed}; CLIP {clip_name(e.clip_model, e.clip_pretrained)}"
        " (the search's rungs and their baseline)",
        f"  held out       {d.holdout} training image(s) (seed {d.holdout_seed}), reference "
        f"folder {e.reference_dir}; DINOv2 {e.dino_model}" if d.holdout or e.reference_dir
        else "  held out       none (no clip_i_holdout / dino_holdout)",
        f"  objectives     {', '.join(f'{o.name} ({o.goal})' for o in sweep.objectives)}; "
        f"winner rule {sweep.select.rule}"
        + (f" {list(sweep.select.weights)}" if sweep.select.weights else ""),
        f"  confirmation   top {sweep.confirm.top_k} and the base model on seed "
        f"{sweep.confirm.seed}, {sweep.confirm.images_per_prompt} image(s) per prompt, "
        f"{sweep.confirm.inference_steps} steps" + _fidelity_note(sweep) if sweep.confirm.top_k
        else "  confirmation   off",
        *_preservation_lines(sweep),
        "  search space:",
    ]
    for p in sweep.parameters:
        n = p.size()
        size = f"{n:,} value(s)" if n is not None else "continuous"
        lines.append(f"    {p.name:<16} {p.describe():<44} {size}")
    grid_size = sweep.grid_size()
    lines.append(f"  configurations "
                 f"{f'{grid_size:,}' if grid_size else 'infinite (continuous ranges)'}")
    if steps is not None and steps.fidelity:
        lines += rung_lines(sweep, steps)
    else:
        lines.append(f"  rungs          every {e.every_steps} steps: "
                     f"{', '.join(map(str, sweep.rungs(sweep.max_steps)))}")
    if steps is not None:
        lines.append(f"  steps          max_train_steps is {steps.describe()}")
    if sweep.early_terminate:
        et = sweep.early_terminate
        lines.append(f"  early stop     ASHA, grace {et.grace_steps} steps, reduction factor "
                     f"{et.reduction_factor}, max {sweep.max_steps} steps")
    else:
        lines.append("  early stop     none")
    subset = subset_rungs(sweep, steps) if steps is not None else ()
    if not subset and sweep.early_terminate and sweep.early_terminate.rung_prompts:
        lines.append("  prompt subset  none: every rung compares candidate step counts "
                     "(early_terminate.rung_prompts applies where steps are a fidelity)")
    if sweep.racing is not None:
        lines.append(f"  {sweep.racing.describe(len(e.prompt_list))}")
    lines += [
        f"  resources      {r.gpu_per_trial:g} GPU + {r.cpu_per_trial:g} CPU per trial, "
        f"max concurrent {r.max_concurrent or args.concurrency or 'all slots'}, "
        f"retries {r.max_retries}",
        f"  trials         {args.trials} finished trials in total, counting earlier runs",
        *forecast.dry_run_lines(sweep, steps, args),
        *measured,
        f"  cluster        {args.address or 'a local Ray on this machine'}",
        f"  outputs        {study_dir}/ (optuna.db, best.yaml, best_lora/, trials.csv, ray/)",
        f"  storage        {redact(args.storage or default_storage_url(study_dir))}",
        "nothing was run (--dry-run)",
    ]
    return "\n".join(lines)


def _fidelity_note(sweep: Sweep) -> str:
    """How the confirmation's images compare with the rungs' (the search's fidelity)."""
    c, e = sweep.confirm, sweep.eval
    if (c.images_per_prompt, c.inference_steps) == (e.images_per_prompt, e.inference_steps):
        return " (as the rungs)"
    return (f" (full size; the rungs draw {e.images_per_prompt} at {e.inference_steps} steps, "
            "a cheaper fidelity)")


def rung_lines(sweep: Sweep, steps: StepsPlan) -> list[str]:
    """What each rung of a fidelity plan measures, and why: a screening rung (ASHA's alone)
    draws the brand prompts only (a subset with ``rung_prompts``), a candidate step count
    brand and control prompts (its LoRA may be exported, so the requirement is decided there).
    """
    e, pres = sweep.eval, sweep.preservation
    subset = set(subset_rungs(sweep, steps))
    n = len(e.prompt_list)
    budget = sweep.early_terminate.rung_prompts if sweep.early_terminate else None
    brand = f"{min(budget or n, n)} brand prompt(s)"
    both = f"{n} brand" + (f" + {len(pres.control_prompt_list)} control prompts"
                           if pres.measured else " prompts")
    screening = [str(step) for step in steps.rungs if step in subset]
    candidates = [str(step) for step in steps.rungs if step not in subset]
    lines = [f"  rungs          {', '.join(candidates)}: candidate step counts, {both} x "
             f"{e.images_per_prompt} image(s) (the requirement is decided here, and the LoRA "
             "may be exported)"]
    if screening:
        lines.append(f"                 {', '.join(screening)}: screening, {brand} x "
                     f"{e.images_per_prompt} image(s), no control images (ASHA's decision "
                     "alone; never a trial's result)")
    return lines


def _preservation_lines(sweep: Sweep) -> list[str]:
    """The dry run's view of ``preservation``: what is measured, required and trained."""
    pres = sweep.preservation
    if not pres.measured:
        return ["  preservation   not measured (no preservation.trigger)"]
    source = pres.control_prompts or "the held-out prompts without it"
    param = sweep.parameter("preservation")
    remedy = (f"searched over {list(param.grid() or ())}" if param is not None and not
              param.is_fixed else f"{pres.method if param is None else param.value}")
    weight = sweep.parameter("preservation_weight")
    return [
        f"  preservation   trigger {pres.trigger!r}; {len(pres.control_prompt_list)} control "
        f"prompts from {source}, e.g. {pres.control_prompt_list[0]!r}",
        "                 required of the winner: "
        + (sweep.require.describe() if sweep.require else "nothing (measured only)"),
        f"                 training remedy {remedy}"
        + ("" if weight is None else f", weight {'searched' if not weight.is_fixed else ''}"
           f"{weight.value if weight.is_fixed else ''}")]


def _trigger_to_check(sweep: Sweep) -> str | None:
    """The trigger every training caption must hold: a remedy other than ``none`` (searched
    or fixed) removes it to make the control caption."""
    param = sweep.parameter("preservation")
    methods = set(param.grid() or ()) if param is not None else {sweep.preservation.method}
    return sweep.preservation.trigger if methods - {"none"} else None


def preflight(sweep: Sweep, study_dir: Path, cache_dir: Path, dry_run: bool = False,
              storage_path: str | None = None, storage_url: str | None = None) -> str | None:
    """Check output folders, data, prompts, model and CLIP model before Ray starts.

    The data, model and scorer are checked by ``trials`` as a trial would read them
    (:mod:`trials.api`). Nothing here makes the study or cache folder
    (:func:`hpo.study.folders.make_folders` does, once everything passed: a refused run leaves none
    behind); the folders, Tune's ``storage_path`` (when local) and a SQLite ``storage_url``'s
    folder are checked for write access. The dry run writes nothing at all: a synthetic
    dataset is not generated, the tiny model is not built. Returns the training data's
    content hash (for the study fingerprint), or None when a dry run found the synthetic
    dataset not generated yet. Raises :class:`PreflightError` naming the sweep file and key
    (or the flag), or ``ConfigError``.
    """
    for folder, label in folders_to_write(study_dir, cache_dir, storage_path, storage_url):
        check_writable(folder, label)
    check_scorer(sweep.eval, sweep.source)  # before anything is built or generated
    try:
        data = check_data(sweep.data, sweep.eval.prompt_list,
                          reference_dir=sweep.eval.reference_dir,
                          trigger=_trigger_to_check(sweep), generate=not dry_run,
                          reach=sweep.preservation.trigger)
        if sweep.preservation.trigger:
            check_prompt_triggers(sweep.eval, sweep.preservation.brand_prompt_list,
                                  sweep.preservation.trigger)
        targets = sweep.parameter("target_modules")
        if targets is not None:
            check_target_modules(sweep.model.name, list(targets.grid() or ()))
        check_model(sweep.model.name, cache_dir, build=not dry_run)
    except TrialError as err:
        key = f"{err.key}: " if err.key else ""
        raise PreflightError(f"{sweep.source}: {key}{err}") from None
    if data is None:
        log.info("%s: data.train_dir: %s does not exist yet; the run generates it (synthetic)",
                 sweep.source, sweep.data.train_dir)
    elif data.long_captions:
        log.warning("%s", data.long_captions)
    if data is not None and data.overlap:
        log.warning("warning: %d held-out prompt(s) equal a training caption, e.g. %r; they "
                    "measure memorization, not generalisation", len(data.overlap),
                    data.overlap[0])
    for line in long_prompts(sweep.eval):
        log.warning("%s", line)
    return None if data is None else data.fingerprint


def connect_storage(url: str) -> optuna.storages.RDBStorage:
    """Open the study storage, turning connection failures into one line."""
    from hpo.study.storage import open_storage

    try:
        return open_storage(url)
    except Exception as err:  # SQLAlchemy raises many kinds; all mean "cannot use this"
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise PreflightError(f"--storage {redact(url)}: cannot open the study storage "
                             f"({redact(reason)})") from None


def local_node_resources() -> dict[str, float]:
    """What a Ray started on this machine would offer: its CPUs (those this process may run
    on) and CUDA GPUs, for the dry run's :func:`check_resources` without starting Ray."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"CPU": float(cpus or 1), "GPU": float(torch.cuda.device_count())}


def check_resources(sweep: Sweep, nodes: list[dict[str, float]]) -> None:
    """Every trial must fit on some node (``nodes``: each live node's total resources)."""
    res = sweep.resources
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if gpus and res.gpu_per_trial > gpus:
        raise PreflightError(
            f"{sweep.source}: resources.gpu_per_trial: {res.gpu_per_trial:g} GPUs per trial, "
            f"but the largest node has {gpus:g}")
    if res.cpu_per_trial > cpus:
        raise PreflightError(
            f"{sweep.source}: resources.cpu_per_trial: {res.cpu_per_trial:g} CPUs per trial, "
            f"but the largest node has {cpus:g}")
    if not gpus:
        log.info("no GPU in the Ray cluster: trials run on CPU")
        if sweep.train.mixed_precision != "no":
            log.warning("warning: train.mixed_precision is %s, but on a CPU trials run fp32; "
                        "the study and best.yaml record the precision that ran",
                        sweep.train.mixed_precision)


def _delta_line(label: str, delta: float | None, stderr: float | None) -> str:
    """``label: Δ +0.1234 ± 0.0123 (paired over prompts, same seeds)``."""
    if delta is None:
        return f"{label}: no baseline score"
    spread = f" ± {stderr:.4f}" if stderr is not None else ""
    return f"{label}: Δ {delta:+.4f}{spread} (paired stderr over prompts, same seeds)"


def confirmation_lines(study: optuna.Study) -> list[str]:
    """The winner's confirmed score and paired differences, for the summary."""
    from hpo.verdict.winner import breaks_on_fresh_seeds, confirmation_summary

    conf = confirmation_summary(study)
    if conf is None:
        return []
    stderr = conf.get(CLIP_SCORE_STDERR)
    broken = breaks_on_fresh_seeds(study)
    lines = [f"NOT confirmed: trial {broken} (and every confirmed candidate) fails the "
             "preservation requirement on fresh seeds; no configuration is confirmed"] \
        if broken is not None else []
    lines += [f"{'scored' if broken is not None else 'confirmed'} on fresh seeds "
             f"(seed {conf['seed']}, {conf['images_per_prompt']} "
             f"image(s) per prompt, trials {conf['trials']}): trial {conf['winner']} "
             f"clip_score {conf[CLIP_SCORE]:.4f}"
             + (f" ± {stderr:.4f}" if stderr is not None else "")
             + (f" (search score {conf['search_clip_score']:.4f})"
                if conf.get("search_clip_score") is not None else "")]
    if "delta_vs_baseline" in conf:
        lines.append(_delta_line("  vs baseline, fresh seeds", conf["delta_vs_baseline"],
                                 conf.get("delta_vs_baseline_stderr")))
    if "preservation" in conf:
        lines.append(f"  {conf['preservation']['verdict']}")
    if "delta_vs_runner_up" in conf:
        lines.append(_delta_line(f"  vs runner-up trial {conf['runner_up']}",
                                 conf["delta_vs_runner_up"],
                                 conf.get("delta_vs_runner_up_stderr")))
    lines.append(f"  {conf['verdict']}")
    return lines


def fail_reason_lines(trials: list[FrozenTrial], most: int = 3) -> list[str]:
    """Why the failed trials failed: each distinct reason once (its first line, at most 300
    characters), with the trials that gave it; ``most`` reasons, then a count of the rest."""
    by_reason: dict[str, list[int]] = {}
    for t in trials:
        if t.state.name == "FAIL":
            reason = str(t.user_attrs.get("fail_reason") or "no reason recorded").strip()
            first = (reason.splitlines() or ["no reason recorded"])[0][:300]
            by_reason.setdefault(first, []).append(t.number)
    lines = [f"  failed: trial(s) {', '.join(map(str, numbers))}: {reason}"
             for reason, numbers in list(by_reason.items())[:most]]
    if len(by_reason) > most:
        lines.append(f"  ... and {len(by_reason) - most} other reason(s): see trials.csv")
    return lines


def _state_counts(trials: list[FrozenTrial]) -> str:
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items()))


def finished_line(study: optuna.Study, seconds: float, started: float | None) -> str:
    """How many trials this run finished (those finished since ``started``, epoch seconds; all
    of them when None), and the study's total when earlier runs finished some."""
    trials = counted_trials(study)
    mine = counted_trials(study, since=started)
    ran = f"{len(mine)} trial(s) finished ({_state_counts(mine)})" if mine \
        else "no trial finished"
    line = f"sweep {study.study_name}: {ran} in {seconds:.0f} s this run"
    raced = sum(1 for t in mine if t.state == TrialState.PRUNED and t.user_attrs.get("raced"))
    if raced:
        line += f"; racing stopped {raced} of the PRUNED part-way through a rung"
    if len(mine) < len(trials):
        line += f"; {len(trials)} in the study ({_state_counts(trials)})"
    return line


def interrupted_summary(study: optuna.Study, study_dir: Path, seconds: float,
                        started: float | None = None) -> str:
    """The closing lines of a run stopped by Ctrl-C: what it finished, and that the outputs
    (``best.yaml``, ``trials.csv``, ``report.html``) are left as they were until a rerun."""
    return "\n".join([
        "", finished_line(study, seconds, started),
        f"interrupted: the study has every finished trial; the outputs in {study_dir} are "
        "written when a run ends, so rerun the same command to continue (or to write them)"])


def summary(study: optuna.Study, study_dir: Path, best_yaml: Path | None, csv: Path,
            storage_url: str, seconds: float, started: float | None = None) -> str:
    """The closing lines: best score, where the outputs are, how to open the dashboard.

    ``started``: when this run began (epoch seconds), so the count is this run's trials."""
    from hpo.verdict.confirm import missing_lines
    from hpo.verdict.winner import confirmation_missing

    trials = counted_trials(study)
    best = best_trial(study)
    baseline = study.user_attrs.get("baseline_clip_score")
    lines = ["", finished_line(study, seconds, started)]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if best is None and complete and require_of(study) is not None:
        lines.append(f"no trial preserves the base model: all {len(complete)} COMPLETE "
                     f"trial(s) break the requirement ({require_of(study).describe()}), so "
                     "there is no best configuration; see report.html for brand vs control")
    elif best is None:
        lines.append("no trial completed, so there is no best configuration yet")
        lines += fail_reason_lines(trials)
    else:
        stderr = best.user_attrs.get(CLIP_SCORE_STDERR)
        # The best rung's clip_score on the search seeds (with several objectives, too).
        score = best.user_attrs.get("score_per_rung", {}).get(
            str(best.user_attrs.get("best_step")), float("nan"))
        lines.append(
            f"best: trial {best.number}, clip_score {score:.4f}"
            + (f" ± {stderr:.4f}" if stderr is not None else "")
            + (f" (baseline without LoRA {baseline:.4f})" if baseline is not None else "")
            + f" at step {best.user_attrs.get('best_step')}, params {best.params}")
        lines.append(_delta_line("  vs baseline", best.user_attrs.get("delta_vs_baseline"),
                                 best.user_attrs.get("delta_vs_baseline_stderr")))
        if best.user_attrs.get("control_score") is not None:
            lines.append("  " + preservation.verdict(best.user_attrs, require_of(study),
                                                     "on the control prompts, it"))
        confirmed = confirmation_lines(study)
        missing = confirmation_missing(study)
        if missing and not confirmed:
            lines.append(f"NOT confirmed on fresh seeds: trial {best.number} is the best search "
                         "score only (its winner's curse is unmeasured); the confirmation lacks")
        elif missing:
            lines += confirmed
            lines.append("  the confirmation is incomplete; it lacks")
        else:
            lines += confirmed
        if missing:
            lines += missing_lines(missing)
    lines += forecast.summary_lines(study, trials)
    lines += precision.lines(study)
    if best_yaml:
        lines.append(f"best config:  {best_yaml}")
        lines.append(f"best LoRA:    {study_dir / 'best_lora'}")
    lines.append(f"all trials:   {csv}")
    lines.append(f"report:       {study_dir / 'report.html'}")
    lines.append(f"dashboard:    python -m hpo.dashboard {shlex.quote(str(study_dir))}")
    lines.append(f"  (or: optuna-dashboard {shlex.quote(redact(storage_url))} --artifact-dir "
                 f"{shlex.quote(str(study_dir / 'artifacts'))})")
    return "\n".join(lines)
