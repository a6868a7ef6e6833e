"""Before and after a sweep: the dry-run plan, the pre-flight checks, the closing summary."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path
from typing import Any

import optuna

from hpo.spec import Sweep
from hpo.study import best_trial, counted_trials, default_storage_url, redact

log = logging.getLogger("hpo")


class PreflightError(ValueError):
    """Something that would fail a trial, found before any trial starts."""


def baseline_values(sweep: Sweep) -> dict[str, Any]:
    """Any valid parameter values: the baseline trains nothing, but needs a full config."""
    values: dict[str, Any] = {}
    for p in sweep.parameters:
        grid = p.grid()
        values[p.name] = p.value if p.is_fixed else (grid[0] if grid else p.low)
    return values


def describe(sweep: Sweep, name: str, study_dir: Path, args: argparse.Namespace) -> str:
    """The resolved sweep, as ``--dry-run`` prints it."""
    d, t, e, r = sweep.data, sweep.train, sweep.eval, sweep.resources
    lines = [
        f"sweep {sweep.source}",
        f"  study          {name} ({sweep.method}, seed {sweep.seed}; {sweep.goal} {sweep.metric})",
        f"  model          {sweep.model.name}"
        + (f" @ {sweep.model.revision}" if sweep.model.revision else "")
        + (f" ({sweep.model.variant})" if sweep.model.variant else ""),
        f"  data           {d.train_dir} (caption column {d.caption_column!r}, "
        f"{d.resolution}px, {'center' if d.center_crop else 'random'} crop"
        f"{', random flip' if d.random_flip else ''}"
        f"{', generated if missing' if d.synthetic else ''})",
        f"  train          batch {t.train_batch_size} x accumulation "
        f"{t.gradient_accumulation_steps}, {t.lr_scheduler} LR (warmup {t.lr_warmup_steps}), "
        f"mixed precision {t.mixed_precision}, seed {t.seed}, max_grad_norm {t.max_grad_norm}, "
        f"snr_gamma {t.snr_gamma}, noise_offset {t.noise_offset}",
        f"  eval           {len(e.prompt_list)} prompts from {e.prompts} x "
        f"{e.images_per_prompt} images, {e.inference_steps} steps, guidance "
        f"{e.guidance_scale:g}, seed {e.seed}; CLIP {e.clip_model}/{e.clip_pretrained}",
        "  search space:",
    ]
    for p in sweep.parameters:
        grid = p.grid()
        size = f"{len(grid)} value(s)" if grid else "continuous"
        lines.append(f"    {p.name:<16} {p.describe():<44} {size}")
    grid_size = sweep.grid_size()
    lines.append(f"  configurations {grid_size if grid_size else 'infinite (continuous ranges)'}")
    lines.append(f"  rungs          every {e.every_steps} steps: "
                 f"{', '.join(map(str, sweep.rungs(sweep.max_steps)))}")
    if sweep.early_terminate:
        et = sweep.early_terminate
        lines.append(f"  early stop     ASHA, grace {et.grace_steps} steps, reduction factor "
                     f"{et.reduction_factor}, max {sweep.max_steps} steps")
    else:
        lines.append("  early stop     none")
    lines += [
        f"  resources      {r.gpu_per_trial:g} GPU + {r.cpu_per_trial:g} CPU per trial, "
        f"max concurrent {r.max_concurrent or args.concurrency or 'all slots'}, "
        f"retries {r.max_retries}",
        f"  trials         {args.trials} finished trials in total, counting earlier runs",
        f"  cluster        {args.address or 'a local Ray on this machine'}",
        f"  outputs        {study_dir}/ (optuna.db, best.yaml, best_lora/, trials.csv, ray/)",
        f"  storage        {redact(args.storage or default_storage_url(study_dir))}",
        "nothing was run (--dry-run)",
    ]
    return "\n".join(lines)


def preflight(sweep: Sweep, study_dir: Path, cache_dir: Path) -> None:
    """Check output folders, data, prompts and model before Ray starts or a GPU is touched."""
    from trials.data import heldout_overlap, load_examples
    from trials.models import check_model_source, resolve_model_path
    from trials.synthetic import ensure_dataset

    for folder in (study_dir, cache_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise PreflightError(f"{folder}: output folder is not writable ({err.strerror})") \
                from None
    ensure_dataset(sweep.data)
    examples = load_examples(sweep.data.train_dir, sweep.data.caption_column)
    overlap = heldout_overlap(list(sweep.eval.prompt_list), examples)
    if overlap:
        log.warning("warning: %d held-out prompt(s) equal a training caption, e.g. %r; they "
                    "measure memorization, not generalisation", len(overlap), overlap[0])
    name = sweep.model.name
    if name in ("tiny", "toyworld") or os.path.exists(name) or name.startswith((".", "/", "~")):
        try:
            check_model_source(resolve_model_path(name, cache_dir))
        except ValueError as err:
            raise PreflightError(f"{sweep.source}: model.name: {err}") from None


def connect_storage(url: str) -> optuna.storages.RDBStorage:
    """Open the study storage, turning connection failures into one line."""
    from hpo.study import open_storage

    try:
        return open_storage(url)
    except Exception as err:  # SQLAlchemy raises many kinds; all mean "cannot use this"
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise PreflightError(f"--storage {redact(url)}: cannot open the study storage "
                             f"({redact(reason)})") from None


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


def paired_gain(scores: list[float] | None, baseline: list[float] | None
                ) -> tuple[float, float, int] | None:
    """Mean per-prompt gain over the baseline, its paired standard error, and the prompt count.

    Trials and baseline share prompts and image seeds (common random numbers), so the
    per-prompt differences are the independent units: SE = sd(diffs) / sqrt(n). None when
    either side is missing, their lengths differ, or fewer than two prompts exist.
    """
    if not scores or not baseline or len(scores) != len(baseline) or len(scores) < 2:
        return None
    diffs = [float(a) - float(b) for a, b in zip(scores, baseline, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5
    return mean, se, n


def summary(study: optuna.Study, study_dir: Path, best_yaml: Path | None, csv: Path,
            storage_url: str, seconds: float) -> str:
    """The closing lines: best score, where the outputs are, how to open the dashboard."""
    trials = counted_trials(study)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    best = best_trial(study)
    baseline = study.user_attrs.get("baseline_clip_score")
    lines = ["", f"sweep {study.study_name}: {len(trials)} trial(s) finished ({counts}) "
             f"in {seconds:.0f} s this run"]
    if best is None:
        lines.append("no trial completed, so there is no best configuration yet")
    else:
        stderr = best.user_attrs.get("clip_score_stderr")
        lines.append(
            f"best: trial {best.number}, clip_score {best.value:.4f}"
            + (f" ± {stderr:.4f}" if stderr is not None else "")
            + (f" (baseline without LoRA {baseline:.4f})" if baseline is not None else "")
            + f" at step {best.user_attrs.get('best_step')}, params {best.params}")
        paired = paired_gain(best.user_attrs.get("per_prompt"),
                             study.user_attrs.get("baseline_per_prompt"))
        if paired is not None:
            gain, se, n = paired
            lines.append(f"best vs baseline: {gain:+.4f} ± {se:.4f} (paired by prompt over {n} "
                         f"prompts, same seeds; {gain / se:+.1f} standard errors)"
                         if se > 0 else f"best vs baseline: {gain:+.4f} over {n} prompts")
    if best_yaml:
        lines.append(f"best config:  {best_yaml}")
        lines.append(f"best LoRA:    {study_dir / 'best_lora'}")
    lines.append(f"all trials:   {csv}")
    lines.append(f"report:       {study_dir / 'report.html'}")
    lines.append(f"dashboard:    python -m hpo.dashboard {shlex.quote(str(study_dir))}")
    lines.append(f"  (or: optuna-dashboard {shlex.quote(redact(storage_url))} --artifact-dir "
                 f"{shlex.quote(str(study_dir / 'artifacts'))})")
    return "\n".join(lines)
