"""The Pareto front of a multi-objective sweep: one YAML per front trial, and its report part.

A trial is Pareto-optimal when no other COMPLETE trial is at least as good on every objective
and better on one (Optuna's ``study.best_trials``). With several objectives there is no single
best trial: ``runs/<study>/pareto/trial-<n>.yaml`` holds each front trial in the ``best.yaml``
format (so any of them can be reproduced with ``python -m trials.train``), and ``best.yaml``
is the one the sweep's ``select`` rule picks (:mod:`hpo.verdict.winner`).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState

from hpo.outputs.artifacts import rung_step, trial_artifacts
from hpo.sweep.spec import Sweep
from hpo.verdict.winner import objectives, pick

PARETO_DIR = "pareto"


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto-optimal COMPLETE trials, by number; empty for a single-objective study."""
    if len(study.directions) < 2:
        return []
    return sorted((t for t in study.best_trials if t.state == TrialState.COMPLETE),
                  key=lambda t: t.number)


def write_pareto_files(sweep: Sweep, study: optuna.Study, study_dir: Path, storage_label: str,
                       baseline: float | None) -> list[Path]:
    """Write ``pareto/trial-<n>.yaml`` for each front trial and remove files of trials that
    left the front; returns the paths written."""
    from hpo.outputs.export import write_best_yaml

    trials = front(study)
    if not trials:
        return []
    folder = Path(study_dir) / PARETO_DIR
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"trial-{t.number}.yaml" for t in trials}
    for old in folder.glob("trial-*.yaml"):
        if old.name not in wanted:
            old.unlink()
    written = []
    for trial in trials:
        path = write_best_yaml(sweep, study, Path(study_dir), storage_label, baseline,
                               trial=trial, path=folder / f"trial-{trial.number}.yaml")
        if path is not None:
            written.append(path)
    return written


def pareto_figure(study: optuna.Study):
    """Optuna's Pareto-front plot (2 or 3 objectives), front trials highlighted."""
    names = [o.name for o in objectives(study)]
    return optuna.visualization.plot_pareto_front(study, target_names=names)


def _grid(study: optuna.Study, store: FileSystemArtifactStore, trial: FrozenTrial
          ) -> bytes | None:
    """The image grid of the trial's best rung (its artifact)."""
    wanted = trial.user_attrs.get("best_step")
    for meta in trial_artifacts(study, trial):
        if rung_step(meta.filename) == wanted:
            try:
                with store.open_reader(meta.artifact_id) as reader:
                    return reader.read()
            except Exception:  # a deleted artifact file
                return None
    return None


def pareto_section(study: optuna.Study, store: FileSystemArtifactStore,
                   include_plotlyjs: bool) -> str:
    """The report's Pareto part: the plot, then each front trial's values and image grid."""
    trials = front(study)
    if not trials:
        return '<p class="missing">No COMPLETE trial on the Pareto front yet.</p>'
    names = [o.name for o in objectives(study)]
    try:
        fig = pareto_figure(study)
        fig.update_layout(template="plotly_white", margin={"t": 40})
        plot = fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs,
                           config={"displaylogo": False, "responsive": True},
                           div_id="pareto-plot")
    except Exception as err:  # e.g. more than 3 objectives
        plot = f'<p class="missing">Not shown: {html.escape(str(err))}</p>'
    winner = pick(study)
    cells = []
    for t in trials:
        values = ", ".join(f"{n} {v:.4f}" for n, v in zip(names, t.values, strict=False))
        mark = " (best.yaml)" if winner is not None and winner.number == t.number else ""
        data = _grid(study, store, t)
        img = (f'<img alt="trial {t.number} image grid" src="data:image/png;base64,'
               f'{base64.b64encode(data).decode("ascii")}">' if data else
               '<p class="missing">no image grid</p>')
        cells.append(f'<figure class="pareto-trial" data-trial="{t.number}">{img}<figcaption>'
                     f"trial {t.number}{mark}: {html.escape(values)} at step "
                     f"{html.escape(str(t.user_attrs.get('best_step', '?')))}; "
                     f"<code>pareto/trial-{t.number}.yaml</code></figcaption></figure>")
    return (f"{plot}<p>Each Pareto-optimal trial's image grid at its best rung (rows: prompts, "
            f"columns: seeds):</p><div class=\"grids\">{''.join(cells)}</div>")
