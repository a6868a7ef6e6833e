"""``runs/<study>/report.html``: one self-contained page (plotly) that shows a whole sweep.

Written at the end of every sweep by ``hpo.run`` and on demand by
``python -m hpo.report runs/<study>``. The page holds plotly.js, every figure and the images
(base64 PNG), so it opens offline and can be mailed around. It shows the optimization
history, parameter importances, parallel coordinates, the score at every rung of every trial,
the score against compute cost, a per-prompt heatmap against the no-LoRA baseline, the best
trial's image grid beside the baseline's, and a table of all trials.
"""

from __future__ import annotations

import argparse
import base64
import html
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import yaml
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState

from hpo.outputs.artifacts import (
    BASELINE_NAME,
    SAMPLES_NAME,
    artifact_dir,
    open_store,
    rung_step,
    study_artifacts,
    trial_artifacts,
)
from hpo.outputs.dashboard import DashboardError, find_study, storage_url
from hpo.verdict import preservation
from hpo.verdict.preservation import trial_feasible
from hpo.verdict.winner import best_trial, confirmation_summary, require_of
from trials.api import CLIP_SCORE, CLIP_SCORE_STDERR

log = logging.getLogger("hpo")

REPORT_NAME = "report.html"
SHOWN = (TrialState.COMPLETE, TrialState.PRUNED)
STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728"}


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def trial_score(study: optuna.Study, trial: FrozenTrial) -> float | None:
    """A COMPLETE trial's value, or a PRUNED trial's best rung (its intermediate values)."""
    if trial.values:  # with several objectives: the first (the one ASHA stops on)
        return float(trial.values[0])
    values = [v for v in trial.intermediate_values.values() if v is not None and math.isfinite(v)]
    subset = {int(s) for s in trial.user_attrs.get("subset_rungs") or {}}
    full = [v for s, v in trial.intermediate_values.items()
            if s not in subset and v is not None and math.isfinite(v)]
    values = full or values  # a prompt subset's score only when the trial has nothing else
    if not values:
        return None
    return max(values) if _maximize(study) else min(values)


def study_prompts(study: optuna.Study) -> list[str]:
    """The held-out prompts: study attr ``prompts``, else the sweep file's prompts file."""
    attrs = study.user_attrs
    if attrs.get("prompts"):
        return [str(p) for p in attrs["prompts"]]
    try:
        path = Path((yaml.safe_load(attrs.get("sweep_yaml") or "") or {})["eval"]["prompts"])
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return [ln for ln in lines if ln and not ln.startswith("#")]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []


def _baseline_line(fig: go.Figure, study: optuna.Study) -> go.Figure:
    base = study.user_attrs.get("baseline_clip_score")
    if base is not None:
        fig.add_hline(y=base, line_dash="dash", line_color="grey",
                      annotation_text=f"baseline without LoRA {base:.3f}",
                      annotation_position="bottom right")
    return fig


def _first(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """Optuna's plots need a target with several objectives: the first one."""
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def history_figure(study: optuna.Study) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(study, target=_first(study),
                                                         target_name=_metric(study))
    return _winner_marker(_baseline_line(fig, study), study)


def _winner_marker(fig: go.Figure, study: optuna.Study) -> go.Figure:
    """Mark the sweep's winner on the history plot.

    Optuna's "Best Value" line follows the search scores, so after a confirmation on fresh
    seeds it can point at a trial that lost: the star says which trial best.yaml exports.
    """
    winner = best_trial(study)
    score = None if winner is None else trial_score(study, winner)
    if winner is None or score is None:
        return fig
    confirmed = confirmation_summary(study) is not None
    label = f"winner: trial {winner.number}" + (" (confirmed on fresh seeds)" if confirmed
                                                 else "")
    # The label grows away from the nearer edge, so it is never cut off by the plot area.
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    middle = (min(numbers) + max(numbers)) / 2 if numbers else winner.number
    side = "top right" if winner.number <= middle else "top left"
    fig.add_trace(go.Scatter(x=[winner.number], y=[score], mode="markers+text", name=label,
                             text=[label], textposition=side,
                             marker={"symbol": "star", "size": 16, "color": "#2ca02c",
                                     "line": {"width": 1, "color": "black"}}))
    return fig


def importance_figure(study: optuna.Study) -> go.Figure:
    """Importances of the parameters for the first objective.

    With several objectives Optuna needs a ``target``, and its default evaluator (PED-ANOVA)
    then takes low values as good whatever the study's direction; a maximized objective is
    negated so the importances explain what makes the score high."""
    target = _first(study)
    if target is not None and study.directions[0] == optuna.study.StudyDirection.MAXIMIZE:
        target = lambda t: -t.values[0]  # noqa: E731
    return optuna.visualization.plot_param_importances(study, target=target,
                                                       target_name=_metric(study))


def parallel_figure(study: optuna.Study) -> go.Figure:
    return optuna.visualization.plot_parallel_coordinate(study, target=_first(study),
                                                         target_name=_metric(study))


def steps_figure(study: optuna.Study) -> go.Figure:
    """Score at every rung of every trial (its intermediate values), by state."""
    fig = go.Figure()
    for t in study.get_trials(deepcopy=False, states=(*SHOWN, TrialState.FAIL)):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        fig.add_trace(go.Scatter(
            x=steps, y=[t.intermediate_values[s] for s in steps], mode="lines+markers",
            name=f"trial {t.number} ({t.state.name})",
            line={"color": STATE_COLOURS.get(t.state.name)},
            hovertemplate=f"trial {t.number}<br>step %{{x}}<br>score %{{y:.4f}}<extra></extra>"))
    fig.update_layout(xaxis_title="training step", yaxis_title=_metric(study))
    return _baseline_line(fig, study)


def cost_axis(trials: list[FrozenTrial]) -> tuple[str, str]:
    """The user attr to plot cost with and its honest label: GPU-seconds when any trial used a
    GPU, otherwise CPU-seconds (a CPU run has no GPU time)."""
    if any((t.user_attrs.get("gpu_seconds") or 0) > 0 for t in trials):
        return "gpu_seconds", "GPU-seconds (busy seconds × GPUs per trial)"
    return "cpu_seconds", "CPU-seconds (busy seconds × CPUs per trial; no GPU in this sweep)"


def cost_figure(study: optuna.Study) -> go.Figure:
    """Each trial's score against what it cost."""
    trials = [t for t in study.get_trials(deepcopy=False, states=SHOWN)
              if trial_score(study, t) is not None]
    key, label = cost_axis(trials)
    fig = go.Figure()
    for state in SHOWN:
        chosen = [t for t in trials if t.state == state and t.user_attrs.get(key) is not None]
        if not chosen:
            continue
        fig.add_trace(go.Scatter(
            x=[t.user_attrs[key] for t in chosen], y=[trial_score(study, t) for t in chosen],
            mode="markers", name=state.name, marker={"size": 10,
                                                     "color": STATE_COLOURS[state.name]},
            text=[f"trial {t.number}<br>" + "<br>".join(f"{k}={v}" for k, v in t.params.items())
                  for t in chosen],
            hovertemplate="%{text}<br>cost %{x:.1f}<br>score %{y:.4f}<extra></extra>"))
    fig.update_layout(xaxis_title=label, yaxis_title=f"{_metric(study)} (best rung)")
    return _baseline_line(fig, study)


def heatmap_figure(study: optuna.Study) -> go.Figure:
    """Per-prompt score minus the baseline's, trials as rows (best first), prompts as columns."""
    base = study.user_attrs.get("baseline_per_prompt")
    trials = [t for t in study.get_trials(deepcopy=False, states=SHOWN)
              if t.user_attrs.get("per_prompt")]
    if not trials:
        raise ValueError("no trial has per-prompt scores yet")
    trials.sort(key=lambda t: trial_score(study, t) or 0.0, reverse=_maximize(study))
    n = max(len(t.user_attrs["per_prompt"]) for t in trials)
    prompts = study_prompts(study)
    names = [prompts[i] if i < len(prompts) else f"prompt {i + 1}" for i in range(n)]
    short = [f"{i + 1}: {p[:28]}…" if len(p) > 29 else f"{i + 1}: {p}" for i, p in enumerate(names)]

    def row(t: FrozenTrial) -> list[float | None]:
        scores = list(t.user_attrs["per_prompt"]) + [None] * n
        return [None if scores[i] is None else
                scores[i] - (base[i] if base and i < len(base) and base[i] is not None else 0.0)
                for i in range(n)]

    z = [row(t) for t in trials]
    fig = go.Figure(go.Heatmap(
        z=z, x=short, y=[f"trial {t.number} ({t.state.name})" for t in trials],
        colorscale="RdBu", zmid=0 if base else None, colorbar={"title": "Δ" if base else "score"},
        customdata=[names for _ in trials],
        hovertemplate="%{y}<br>%{customdata}<br>" + ("Δ vs baseline" if base else "score")
                      + " %{z:+.3f}<extra></extra>"))
    fig.update_layout(
        xaxis_title="held-out prompt", yaxis={"autorange": "reversed"},
        height=max(350, 40 + 28 * len(trials)),
        title_text=None if base else "no baseline per-prompt scores: absolute scores shown")
    return fig


def _metric(study: optuna.Study) -> str:
    return str(study.user_attrs.get("metric", CLIP_SCORE))


FIGURES: list[tuple[str, str, Callable[[optuna.Study], go.Figure]]] = [
    ("Optimization history", "Each COMPLETE trial's score and the best so far.", history_figure),
    ("Parameter importances", "How much each parameter explains the score (PED-ANOVA over "
     "COMPLETE trials).", importance_figure),
    ("Parallel coordinates", "Parameters of every COMPLETE trial, coloured by score.",
     parallel_figure),
    ("Score vs step", "Every trial's score at each rung (intermediate values); PRUNED trials "
     "were stopped early by ASHA or by racing (a raced rung's partial score is not shown).",
     steps_figure),
    ("Score vs cost", "Each trial's best score against its compute cost.", cost_figure),
    ("Per-prompt score vs baseline", "Which held-out prompts each LoRA helps (blue) or hurts "
     "(red) against the base model without LoRA, same seeds.", heatmap_figure),
]


def preservation_figure(study: optuna.Study) -> go.Figure:
    """Brand score (y) against the control prompts' Δ vs the base model (x), per finished
    trial; feasible trials (they keep the base model) in blue, infeasible in red."""
    trials = [t for t in study.get_trials(deepcopy=False, states=SHOWN)
              if t.user_attrs.get("control_delta") is not None]
    if not trials:
        raise ValueError("no trial has control-prompt scores")
    fig = go.Figure()
    groups = {"keeps the base model": [], "breaks it (infeasible)": [], "nothing required": []}
    for t in trials:
        ok = trial_feasible(t)
        key = ("nothing required" if ok is None else
               "keeps the base model" if ok else "breaks it (infeasible)")
        groups[key].append(t)
    colours = {"keeps the base model": "#2a6fdb", "breaks it (infeasible)": "#d62728",
               "nothing required": "#777"}
    for name, group in groups.items():
        if not group:
            continue
        fig.add_trace(go.Scatter(
            x=[t.user_attrs["control_delta"] for t in group],
            y=[trial_score(study, t) for t in group], mode="markers", name=name,
            marker={"color": colours[name], "size": 10},
            error_x={"type": "data", "array": [t.user_attrs.get("control_delta_stderr") or 0
                                               for t in group]},
            text=[f"trial {t.number}: drift {t.user_attrs.get('drift', float('nan')):.1f}, "
                  f"leak {t.user_attrs.get('leak', float('nan')):+.2f}" for t in group]))
    fig.add_vline(x=0, line_dash="dot", annotation_text="base model")
    fig.update_layout(xaxis_title="control prompts: Δ vs base model (paired, ± stderr)",
                      yaxis_title=f"brand prompts: {_metric(study)}")
    return fig


def control_grids(study: optuna.Study, study_dir: Path) -> str:
    """The winner's control-prompt grid beside the base model's (same seeds), or ''."""
    winner = study_dir / "best_lora" / "control.png"
    base = study_dir / "baseline" / "control.png"
    if not (winner.is_file() and base.is_file()):
        return ""
    best = best_trial(study)
    label = f"winner: trial {best.number}" if best is not None else "winner"
    return ('<p>The control prompts: the held-out prompts without the trigger. The brand design '
            'should not appear here.</p><div class="grids">'
            f'<figure><img id="winner-control-grid" alt="winner control grid" '
            f'src="{_png_data_uri(winner.read_bytes())}"><figcaption>{_esc(label)}, control '
            'prompts</figcaption></figure>'
            f'<figure><img id="baseline-control-grid" alt="base model control grid" '
            f'src="{_png_data_uri(base.read_bytes())}"><figcaption>base model, control '
            'prompts</figcaption></figure></div>')


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _read_artifact(store: FileSystemArtifactStore, artifact_id: str) -> bytes:
    with store.open_reader(artifact_id) as reader:
        return reader.read()


def best_grid(study: optuna.Study, store: FileSystemArtifactStore,
              study_dir: Path) -> tuple[FrozenTrial, bytes] | None:
    """The best trial and the image grid of its best rung (from its artifacts, else
    ``best_lora/samples.png``)."""
    best = best_trial(study)
    if best is None:
        return None
    metas = [m for m in trial_artifacts(study, best) if rung_step(m.filename) is not None]
    wanted = best.user_attrs.get("best_step")
    metas.sort(key=lambda m: (rung_step(m.filename) == wanted, rung_step(m.filename)))
    for meta in reversed(metas):
        try:
            return best, _read_artifact(store, meta.artifact_id)
        except Exception:  # a deleted artifact file: try the next one
            continue
    fallback = study_dir / "best_lora" / SAMPLES_NAME
    return (best, fallback.read_bytes()) if fallback.is_file() else None


def baseline_grid(study: optuna.Study, store: FileSystemArtifactStore,
                  study_dir: Path) -> bytes | None:
    """The baseline's image grid: the study artifact, else ``baseline/samples.png``."""
    for meta in study_artifacts(study):
        if meta.filename == BASELINE_NAME:
            try:
                return _read_artifact(store, meta.artifact_id)
            except Exception:
                break
    path = study_dir / "baseline" / SAMPLES_NAME
    return path.read_bytes() if path.is_file() else None


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return ""


def trials_table(study: optuna.Study) -> str:
    """An HTML table of every finished trial, best first."""
    trials = study.get_trials(deepcopy=False, states=(*SHOWN, TrialState.FAIL))
    params = sorted({k for t in trials for k in t.params})
    key, label = cost_axis(trials)
    sign = -1 if _maximize(study) else 1
    trials = sorted(trials, key=lambda t: (trial_score(study, t) is None,
                                           sign * (trial_score(study, t) or 0.0)))
    control = any(t.user_attrs.get("control_delta") is not None for t in trials)
    head = ["trial", "state", _metric(study), "± stderr", "Δ vs baseline", "± paired",
            "best step", *(["control Δ", "± paired", "drift", "leak", "keeps base"]
                           if control else []), *params,
            label.split(" (")[0], "note"]
    rows = []
    for t in trials:
        a = t.user_attrs
        cells = [t.number, t.state.name, _num(trial_score(study, t)),
                 _num(a.get(CLIP_SCORE_STDERR)), _num(a.get("delta_vs_baseline"), "+.4f"),
                 _num(a.get("delta_vs_baseline_stderr")), a.get("best_step", ""),
                 *([_num(a.get("control_delta"), "+.4f"), _num(a.get("control_delta_stderr")),
                    _num(a.get("drift"), ".1f"), _num(a.get("leak"), "+.3f"),
                    {True: "yes", False: "NO", None: ""}[trial_feasible(t)]]
                   if control else []),
                 *[_num(t.params[p], ".3g") if isinstance(t.params.get(p), float)
                   else t.params.get(p, "") for p in params],
                 _num(a.get(key), ".1f"), a.get("fail_reason", "")]
        rows.append(f'<tr class="{_esc(t.state.name.lower())}">'
                    + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    return ('<table class="trials"><thead><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _summary(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    parts = [f"{n} {name}" for name, n in counts.items() if n]
    attrs = study.user_attrs
    best = best_trial(study)
    base = attrs.get("baseline_clip_score")
    lines = [f"<b>{len(trials)} trial(s)</b>: {_esc(', '.join(parts) or 'none')}."]
    if best is not None:
        lines.append(f"Best: trial {best.number}, {_esc(_metric(study))} "
                     f"{_num(trial_score(study, best))} ± "
                     f"{_num(best.user_attrs.get(CLIP_SCORE_STDERR))} at step "
                     f"{_esc(best.user_attrs.get('best_step', '?'))}, params "
                     f"<code>{_esc(best.params)}</code>.")
        delta = best.user_attrs.get("delta_vs_baseline")
        if delta is not None:
            lines.append(f"Best vs baseline: Δ {delta:+.4f} ± "
                         f"{_num(best.user_attrs.get('delta_vs_baseline_stderr'))} (paired "
                         f"standard error over prompts: the same seeds on both sides).")
    conf = confirmation_summary(study) or {}
    if conf.get("verdict"):
        lines.append(f"Confirmation on fresh seeds: {_esc(conf['verdict'])}.")
    if conf.get("preservation"):
        lines.append(f"Preservation on fresh seeds: {_esc(conf['preservation']['verdict'])}.")
    elif best is not None and best.user_attrs.get("control_delta") is not None:
        lines.append("Preservation: " + _esc(preservation.verdict(
            best.user_attrs, require_of(study), f"trial {best.number}")) + ".")
    elif best is None and require_of(study) is not None:
        lines.append("No trial keeps the base model, so there is no winner.")
    if base is not None:
        lines.append(f"Baseline without LoRA: {base:.4f} ± "
                     f"{_num(attrs.get('baseline_clip_score_stderr'))} (same prompts, same "
                     f"seeds).")
    lines.append(f"CLIP model {_esc(attrs.get('clip_model', '?'))}; sweep file "
                 f"<code>{_esc(attrs.get('sweep_file', '?'))}</code>; "
                 f"{_esc(attrs.get('n_prompts', '?'))} prompts × "
                 f"{_esc(attrs.get('images_per_prompt', '?'))} images.")
    return "<p>" + "<br>".join(lines) + "</p>"


def _images(study: optuna.Study, store: FileSystemArtifactStore, study_dir: Path) -> str:
    cells = []
    best = best_grid(study, store, study_dir)
    base = baseline_grid(study, store, study_dir)
    if best is not None:
        trial, data = best
        cells.append(f'<figure><img id="best-grid" alt="best trial image grid" '
                     f'src="{_png_data_uri(data)}"><figcaption>best: trial {trial.number}, '
                     f'step {_esc(trial.user_attrs.get("best_step", "?"))}, score '
                     f'{_num(trial_score(study, trial))}</figcaption></figure>')
    if base is not None:
        cells.append(f'<figure><img id="baseline-grid" alt="baseline image grid" '
                     f'src="{_png_data_uri(base)}"><figcaption>baseline without LoRA'
                     f'</figcaption></figure>')
    if not cells:
        return '<p class="missing">No image grids found (no COMPLETE trial yet, or the ' \
               'artifacts folder is missing).</p>'
    return ('<p>Rows are the held-out prompts, columns the seeds (the same seeds in both).</p>'
            '<div class="grids">' + "".join(cells) + "</div>")


STYLE = """
body { font-family: Liberation Sans, Arial, sans-serif; margin: 24px; color: #222; }
section { margin: 28px 0; } h2 { margin-bottom: 2px; } .why { color: #555; margin-top: 0; }
.missing { color: #a33; } .grids { display: flex; gap: 24px; flex-wrap: wrap; }
figure { margin: 0; } figure img { max-width: min(640px, 45vw); image-rendering: pixelated;
  border: 1px solid #ccc; min-width: 256px; }
table.trials { border-collapse: collapse; font-size: 13px; }
table.trials td, table.trials th { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
tr.pruned { color: #a60; } tr.fail { color: #b22; }
"""


def _figure_html(make: Callable[[optuna.Study], go.Figure], study: optuna.Study,
                 with_js: bool) -> tuple[str, bool]:
    """A figure as HTML (with plotly.js when ``with_js``), and whether it was drawn."""
    try:
        fig = make(study)
        fig.update_layout(template="plotly_white", margin={"t": 40})
        return fig.to_html(full_html=False, include_plotlyjs=with_js,
                           config={"displaylogo": False, "responsive": True}), True
    except Exception as err:  # too few trials for this figure, or none with the data
        return f'<p class="missing">Not shown: {_esc(err)}</p>', False


def build_report(study: optuna.Study, store: FileSystemArtifactStore, study_dir: Path) -> str:
    """The whole page as one HTML string (plotly.js inlined once)."""
    sections = []
    js_included = False
    for title, why, make in FIGURES:
        body, drawn = _figure_html(make, study, not js_included)
        js_included = js_included or drawn
        sections.append(f'<section class="figure" data-title="{_esc(title)}"><h2>{_esc(title)}'
                        f'</h2><p class="why">{_esc(why)}</p>{body}</section>')
    if len(study.directions) > 1:
        from hpo.outputs.pareto import pareto_section

        sections.append('<section class="figure" data-title="Pareto front"><h2>Pareto front'
                        '</h2><p class="why">Trials no other trial beats on every objective; '
                        "best.yaml is the one the sweep's select rule picks.</p>"
                        + pareto_section(study, store, not js_included) + "</section>")
    if study.user_attrs.get("preservation"):
        body, drawn = _figure_html(preservation_figure, study, not js_included)
        js_included = js_included or drawn
        body += control_grids(study, study_dir)
        sections.append('<section class="figure" data-title="Brand vs control"><h2>Brand vs '
                        'control</h2><p class="why">Does a LoRA learn the brand without '
                        'breaking the base model? Right of the dotted line the control prompts '
                        '(no trigger) score as well as the base model.</p>' + body + "</section>")
    for title, make_part in (("Best trial vs baseline", lambda: _images(study, store, study_dir)),
                             ("All trials", lambda: trials_table(study))):
        try:
            body = make_part()
        except Exception as err:  # a report must never fail the sweep that writes it
            body = f'<p class="missing">Not shown: {_esc(err)}</p>'
        sections.append(f"<section><h2>{title}</h2>{body}</section>")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{_esc(study.study_name)}: sweep report</title><style>{STYLE}</style></head><body>"
            f"<h1>Sweep report: {_esc(study.study_name)}</h1>{_summary(study)}"
            f'<p class="why">Written {stamp}. Scores are {_esc(_metric(study))} (higher is '
            f"better) on held-out prompts; scores from different CLIP models are not "
            f"comparable.</p>{''.join(sections)}</body></html>")


def write_report(study: optuna.Study, study_dir: Path, artifacts: Path | None = None,
                 out: Path | None = None) -> Path:
    """Write ``<study_dir>/report.html`` (atomically) and return its path."""
    study_dir = Path(study_dir)
    out = Path(out) if out else study_dir / REPORT_NAME
    store = open_store(artifacts or artifact_dir(study_dir))
    page = build_report(study, store, study_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.report",
                                description="Write a sweep's self-contained report.html.")
    p.add_argument("study_dir", type=Path, help="the sweep's output folder, e.g. runs/tiny-demo")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///STUDY_DIR/optuna.db)")
    p.add_argument("--study", default=None, help="study name (default: the folder's name)")
    p.add_argument("--artifact-dir", type=Path, default=None,
                   help="artifact directory (default: STUDY_DIR/artifacts)")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="output file (default: STUDY_DIR/report.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        url = storage_url(args.study_dir, args.storage)
        study = find_study(url, args.study_dir, args.study)
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_report(study, args.study_dir, args.artifact_dir, args.out)
    print(f"report: {path.resolve()}")
    return 0

