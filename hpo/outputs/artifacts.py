"""Images and notes in the Optuna study, so optuna-dashboard shows what each LoRA draws.

:class:`ArtifactObserver` is a ``hpo.dispatch.recorder.SweepObserver``. It uploads every scored
rung's labelled image grid (rows = held-out prompts, columns = seeds) as an Optuna artifact of the
trial, and writes a markdown note per trial (parameters, score, per-prompt table against the
baseline). :func:`upload_baseline` puts the base model's grid on the study itself. Artifacts go to
a ``FileSystemArtifactStore`` in ``runs/<study>/artifacts``; start optuna-dashboard with
``--artifact-dir`` pointing there (``python -m hpo.dashboard runs/<study>`` does).

All of this runs in the sweep driver, the study's only writer. A missing image or a failed
upload is logged and skipped: pictures must never stop a sweep.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.trial import TrialState

from hpo.sweep.optuna_private import storage_of
from trials.api import CLIP_SCORE, CLIP_SCORE_STDERR

log = logging.getLogger("hpo")

ARTIFACT_DIR = "artifacts"
SAMPLES_NAME = "samples.png"  # trials.eval.evaluator.SAMPLES_NAME (not imported: it pulls in torch)
BASELINE_NAME = "baseline.png"
CONTROL_NAME = "control.png"  # trials.eval.preservation.CONTROL_NAME (not imported: torch)
BASELINE_CONTROL_NAME = "baseline_control.png"
_RUNG_NAME = re.compile(r"^step-(\d+)(?:_|\.png$)")


def artifact_dir(study_dir: Path) -> Path:
    """Where a study's artifacts live: ``<study_dir>/artifacts``."""
    return Path(study_dir) / ARTIFACT_DIR


def open_store(folder: Path) -> FileSystemArtifactStore:
    """A file-system artifact store in ``folder`` (created if missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder.resolve()))


def rung_filename(step: int, score: float | None) -> str:
    """The artifact name of a rung's grid, e.g. ``step-000020_clip-24.26.png``."""
    tail = "" if score is None or not math.isfinite(score) else f"_clip-{score:.2f}"
    return f"step-{int(step):06d}{tail}.png"


def rung_step(filename: str) -> int | None:
    """The training step a rung artifact's file name carries, or None for other files."""
    match = _RUNG_NAME.match(filename)
    return int(match.group(1)) if match else None


def _upload_as(store: FileSystemArtifactStore, source: Path, name: str,
               target: optuna.Study | optuna.Trial) -> str:
    """Upload ``source`` under the file name ``name`` (the dashboard shows the name)."""
    with tempfile.TemporaryDirectory(prefix="hpo-artifact-") as tmp:
        named = Path(tmp) / name
        shutil.copyfile(source, named)
        return upload_artifact(artifact_store=store, file_path=str(named),
                               study_or_trial=target, mimetype="image/png")


def _fmt(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return "-"


def _cell(text: str) -> str:
    """Text that is safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def per_prompt_table(prompts: Sequence[str], scores: Sequence[float] | None,
                     baseline: Sequence[float] | None) -> list[str]:
    """Markdown rows: prompt, LoRA score, baseline score and their difference."""
    scores = list(scores or [])
    baseline = list(baseline or [])
    n = max(len(scores), len(baseline))
    if n == 0:
        return []
    if not scores:
        return ["| # | prompt | baseline |", "|---:|---|---:|"] + [
            f"| {i + 1} | {_cell(prompts[i] if i < len(prompts) else f'prompt {i + 1}')} "
            f"| {_fmt(b, '.2f')} |" for i, b in enumerate(baseline)]
    rows = ["| # | prompt | LoRA | baseline | Δ |", "|---:|---|---:|---:|---:|"]
    for i in range(n):
        prompt = prompts[i] if i < len(prompts) else f"prompt {i + 1}"
        lora = scores[i] if i < len(scores) else None
        base = baseline[i] if i < len(baseline) else None
        delta = lora - base if lora is not None and base is not None else None
        rows.append(f"| {i + 1} | {_cell(prompt)} | {_fmt(lora, '.2f')} | {_fmt(base, '.2f')} "
                    f"| {_fmt(delta, '+.2f')} |")
    return rows


def _cutoff(raced: dict[str, Any]) -> str:
    """Said of a racing stop whose reference was ASHA's cutoff, not the rung's best."""
    return " (ASHA's cutoff)" if raced.get("against") == "cutoff" else ""


def trial_note(number: int, state: TrialState, params: Mapping[str, Any],
               attrs: Mapping[str, Any], prompts: Sequence[str] = (),
               baseline_score: float | None = None,
               baseline_per_prompt: Sequence[float] | None = None) -> str:
    """The markdown note shown on a trial's page in optuna-dashboard."""
    lines = [f"## Trial {number}: {state.name}", ""]
    if attrs.get("fail_reason"):
        lines += [f"**Failed:** {_cell(attrs['fail_reason'])}", ""]
    score = attrs.get("score_per_rung", {}).get(str(attrs.get("best_step")))
    if score is not None:
        base = (f" (baseline without LoRA {_fmt(baseline_score)}, Δ "
                f"{_fmt(attrs.get('delta_vs_baseline'), '+.4f')} ± "
                f"{_fmt(attrs.get('delta_vs_baseline_stderr'))} paired)"
                if baseline_score is not None else "")
        lines += [f"**clip_score {_fmt(score)} ± {_fmt(attrs.get(CLIP_SCORE_STDERR))}** at "
                  f"step {attrs.get('best_step')}{base}; CLIP-I {_fmt(attrs.get('clip_i'))}", ""]
    if params:
        lines += ["| parameter | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(_fmt(v, '.3g') if isinstance(v, float) else v)} |"
                  for k, v in params.items()]
        lines.append("")
    rungs = attrs.get("score_per_rung") or {}
    subset = attrs.get("subset_rungs") or {}  # ASHA-only rungs that scored a prompt subset
    if rungs:
        lines += ["Score per rung: " + ", ".join(
            f"step {s}: {_fmt(v, '.2f')}" + (f" ({subset[s]} prompts)" if s in subset else "")
            for s, v in rungs.items()), ""]
    raced = attrs.get("raced")
    if raced:
        lines += [f"**Stopped by racing** at step {raced.get('step')} after "
                  f"{raced.get('n')} of {raced.get('prompts_total')} prompts: Δ "
                  f"{_fmt(raced.get('delta'), '+.4f')} ± {_fmt(raced.get('stderr'))} against "
                  f"trial {raced.get('reference_trial')}'s rung{_cutoff(raced)} on the same "
                  f"prompts (one-sided "
                  f"{raced.get('test')}, p {_fmt(raced.get('p_value'), '.3g')} < "
                  f"{raced.get('level')}); partial score {_fmt(raced.get(CLIP_SCORE))}.", ""]
    if attrs.get("control_score") is not None:
        feasible = attrs.get("constraints")
        verdict = "" if not feasible else (
            " **Keeps the base model.**" if all(v <= 0 for v in feasible.values())
            else " **Breaks the base model (infeasible).**")
        lines += [f"Control prompts (no trigger): score {_fmt(attrs.get('control_score'))}, "
                  f"Δ vs base {_fmt(attrs.get('control_delta'), '+.4f')} ± "
                  f"{_fmt(attrs.get('control_delta_stderr'))} (p "
                  f"{_fmt(attrs.get('control_delta_p_value'), '.3g')}); drift "
                  f"{_fmt(attrs.get('drift'), '.2f')}/100; leak "
                  f"{_fmt(attrs.get('leak'), '+.4f')} ± {_fmt(attrs.get('leak_stderr'))}; "
                  f"remedy {attrs.get('preservation', 'none')}.{verdict}", ""]
    table = per_prompt_table(prompts, attrs.get("per_prompt"), baseline_per_prompt)
    if table:
        lines += [f"### Per prompt (at step {attrs.get('best_step')})", "", *table, ""]
    keys = ("train_seconds", "eval_seconds", "gpu_seconds", "cpu_seconds", "peak_memory_mb")
    cost = [f"{k.replace('_', ' ')} {_fmt(attrs.get(k), '.1f')}" for k in keys
            if attrs.get(k) is not None and (k != "gpu_seconds" or attrs.get("device") == "cuda")]
    if cost:
        lines += ["Cost: " + ", ".join(cost) + f" (device {attrs.get('device', '-')})", ""]
    lines.append("The image grids of this trial's rungs (prompts × seeds) are its artifacts.")
    return "\n".join(lines)


class ArtifactObserver:
    """Uploads each rung's image grid and writes each trial's note (a ``SweepObserver``)."""

    def __init__(self, folder: Path, prompts: Sequence[str] = (),
                 study_attrs: Mapping[str, Any] | None = None) -> None:
        """``folder``: the artifact directory; ``study_attrs``: the study's user attrs, read
        for the baseline's score and per-prompt scores."""
        self.store = open_store(folder)
        self.prompts = list(prompts)
        attrs = study_attrs or {}
        self.baseline_score = attrs.get("baseline_clip_score")
        self.baseline_per_prompt = attrs.get("baseline_per_prompt")

    def rung_saved(self, ot_trial: optuna.Trial, rung: dict[str, Any],
                   checkpoint_dir: str) -> None:
        """Upload ``checkpoint_dir/samples.png`` as ``step-NNNNNN_clip-S.png``."""
        source = Path(checkpoint_dir) / SAMPLES_NAME
        try:
            if not source.is_file():
                log.warning("trial %d: no image grid at %s; not uploaded", ot_trial.number,
                            source)
                return
            name = rung_filename(rung.get("step", 0), rung.get(CLIP_SCORE))
            _upload_as(self.store, source, name, ot_trial)
            control = Path(checkpoint_dir) / CONTROL_NAME
            if control.is_file():  # the control prompts' grid (preservation), same rung
                _upload_as(self.store, control, f"control_{name}", ot_trial)
        except Exception as err:  # an image must never stop the sweep
            log.warning("trial %d: could not upload %s: %s", ot_trial.number, source, err)

    def trial_finished(self, ot_trial: optuna.Trial, state: TrialState,
                       attrs: dict[str, Any]) -> None:
        """Write the trial's markdown note (before Optuna is told its final state)."""
        from optuna_dashboard import save_note

        try:
            save_note(ot_trial, trial_note(
                ot_trial.number, state, ot_trial.params, attrs, self.prompts,
                self.baseline_score, self.baseline_per_prompt))
        except Exception as err:
            log.warning("trial %d: could not save its note: %s", ot_trial.number, err)


def study_artifacts(study: optuna.Study) -> list[Any]:
    """The artifact metas (artifact_id, filename, mimetype) attached to the study itself."""
    return get_all_artifact_meta(study)


def trial_artifacts(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[Any]:
    """The artifact metas attached to one trial (Optuna needs the study's storage for a
    frozen trial's; a study loaded by URL gives it only through a private name)."""
    return get_all_artifact_meta(trial, storage=storage_of(study))


def name_objective(study: optuna.Study) -> None:
    """Call the objective by the sweep's metric (``clip_score``) in the dashboard and plots."""
    with warnings.catch_warnings():  # set_metric_names is marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names is None:
            names = [str(o["name"]) for o in study.user_attrs.get("objectives") or ()]
            study.set_metric_names(names or [str(study.user_attrs.get("metric", CLIP_SCORE))])


def upload_baseline(study: optuna.Study, study_dir: Path,
                    prompts: Sequence[str] = ()) -> str | None:
    """Attach ``<study_dir>/baseline/samples.png`` to the study as ``baseline.png``, once.

    Also writes the study note (baseline score and per-prompt table) and names the objective
    after the metric. Returns the artifact id, or None when the grid is missing (e.g. written
    on another node) or already uploaded.
    """
    from optuna_dashboard import save_note

    source = Path(study_dir) / "baseline" / SAMPLES_NAME
    try:
        name_objective(study)
        if any(m.filename == BASELINE_NAME for m in study_artifacts(study)):
            return None
        if not source.is_file():
            log.warning("no baseline image grid at %s; the dashboard will not show it", source)
            return None
        store = open_store(artifact_dir(study_dir))
        artifact_id = _upload_as(store, source, BASELINE_NAME, study)
        control = Path(study_dir) / "baseline" / CONTROL_NAME
        if control.is_file():
            _upload_as(store, control, BASELINE_CONTROL_NAME, study)
        save_note(study, study_note(study, prompts))
        return artifact_id
    except Exception as err:
        log.warning("could not upload the baseline image grid %s: %s", source, err)
        return None


def study_note(study: optuna.Study, prompts: Sequence[str] = ()) -> str:
    """The study's markdown note: the winner (once there is one) and the baseline.

    optuna-dashboard's "Best Trial" badge follows the search scores; after a confirmation on
    fresh seeds the exported winner can be another trial, so the note names it first.
    """
    from hpo.verdict.winner import confirmation_summary, pick

    attrs = study.user_attrs
    lines = [f"## {study.study_name}", ""]
    winner = pick(study)
    if winner is not None:
        conf = confirmation_summary(study)
        if conf is not None:
            lines += [f"**Winner: trial {winner.number}**, confirmed on fresh seeds "
                      f"(seed {conf['seed']}): {conf.get('verdict', '')}", ""]
        else:
            lines += [f"**Winner: trial {winner.number}** (best search score; no "
                      f"confirmation ran).", ""]
        lines += ["The dashboard's *Best Trial* badge marks the best search score; "
                  "`best.yaml` exports the winner named here.", ""]
    lines += [f"Baseline (base model without LoRA): clip_score "
              f"{_fmt(attrs.get('baseline_clip_score'))} ± "
              f"{_fmt(attrs.get('baseline_clip_score_stderr'))}, same prompts and seeds as "
              f"every trial. Its image grid is the study artifact `{BASELINE_NAME}`.", ""]
    lines += per_prompt_table(prompts, None, attrs.get("baseline_per_prompt"))
    return "\n".join(lines)


def write_study_note(study: optuna.Study, prompts: Sequence[str] = ()) -> None:
    """Rewrite the study note (after the search and confirmation: it then names the winner)."""
    from optuna_dashboard import save_note

    try:
        save_note(study, study_note(study, prompts))
    except Exception as err:  # a note must never stop the export
        log.warning("could not write the study note: %s", err)
