"""Which trial is the winner, read from the study alone (so every reader agrees).

The study holds everything needed: its objectives and ``select`` rule (study attrs written by
:func:`hpo.study.storage.record_study_attrs`), every trial's values, and the confirmation scores on
fresh seeds (study attrs written by :mod:`hpo.verdict.confirm`). Candidates are the Pareto front
with several objectives (``study.best_trials``), else every COMPLETE trial; they are ranked by the
rule on their search values. When every one of the ``top_k`` best candidates has been
confirmed, the winner is the best of them by the same rule on its *confirmed* values;
otherwise it is the best candidate by its search values.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.sweep.objectives import Objective, Select
from hpo.sweep.preservation import Require
from hpo.verdict import preservation
from hpo.verdict.paired import DEFAULT_LEVEL, paired_or_none
from trials.api import CLIP_SCORE, CLIP_SCORE_STDERR, CONTROL_PER_PROMPT, PER_PROMPT

SETTINGS_KEY = "confirm_settings"  # {top_k, seed, images_per_prompt} of the last confirmation
BASELINE_KEY = "confirm_baseline"  # the base model on the confirmation seeds


def trial_key(number: int) -> str:
    """The study attr holding trial ``number``'s confirmation."""
    return f"confirm_trial_{number}"


def objectives(study: optuna.Study) -> tuple[Objective, ...]:
    raw = study.user_attrs.get("objectives")
    if raw:
        return tuple(Objective(str(d["name"]), str(d["goal"])) for d in raw)
    goal = "maximize" if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE \
        else "minimize"
    return (Objective(str(study.user_attrs.get("metric", CLIP_SCORE)), goal),)


def select_rule(study: optuna.Study) -> Select:
    raw = study.user_attrs.get("select") or {}
    return Select(str(raw.get("rule", "first")), tuple(float(w) for w in raw.get("weights", ())))


def search_metrics(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """The trial's objective values by name (its best rung's, on the search seeds)."""
    names = [o.name for o in objectives(study)]
    values = trial.values or []
    return dict(zip(names, values, strict=False))


def rule_score(study: optuna.Study, metrics: dict[str, Any]) -> float | None:
    return select_rule(study).score(objectives(study), metrics)


def require_of(study: optuna.Study) -> Require | None:
    """The sweep's preservation requirement as the study recorded it (None: none)."""
    raw = (study.user_attrs.get("preservation") or {}).get("require")
    return Require.from_dict(raw) if raw else None


def candidates(study: optuna.Study) -> list[FrozenTrial]:
    """The trials a winner is chosen from, best first by the rule on their search values.

    With a preservation requirement only feasible trials are candidates (those whose exported
    rung met it, :func:`hpo.verdict.preservation.trial_feasible`): a LoRA that breaks the base
    model cannot win, however high its brand score."""
    if len(study.directions) > 1:
        pool = [t for t in study.best_trials if t.state == TrialState.COMPLETE]
    else:
        pool = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if require_of(study) is not None:
        pool = [t for t in pool if preservation.trial_feasible(t) is True]
    scored = [(rule_score(study, search_metrics(study, t)), t) for t in pool]
    scored.sort(key=lambda st: (st[0] is None, -(st[0] or 0.0), st[1].number))
    return [t for _, t in scored]


def confirmations(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Confirmation scores by trial number, made with the current confirmation settings."""
    settings = study.user_attrs.get(SETTINGS_KEY)
    if not settings:
        return {}
    out = {}
    for key, value in study.user_attrs.items():
        if key.startswith("confirm_trial_") and isinstance(value, dict) and \
                matches(value, settings) and "error" not in value:
            out[int(key.rsplit("_", 1)[1])] = value
    return out


def matches(record: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether a stored confirmation was drawn with these seeds (and so can be reused)."""
    return all(record.get(key) == settings.get(key)
               for key in ("seed", "images_per_prompt", "inference_steps"))


def confirmed_ranking(study: optuna.Study) -> list[FrozenTrial] | None:
    """The top-k candidates ranked by their confirmed values; None unless all are confirmed."""
    settings = study.user_attrs.get(SETTINGS_KEY) or {}
    top = candidates(study)[: int(settings.get("top_k") or 0)]
    done = confirmations(study)
    if not top or any(t.number not in done for t in top):
        return None
    require = require_of(study)
    # With a requirement, candidates that keep the base model on the fresh seeds rank first.
    kept = {t.number: require is None or preservation.is_feasible(
        preservation.constraint_values(require, confirmed_preservation(study, done[t.number])))
        is not False for t in top}
    scored = [(rule_score(study, done[t.number]), t) for t in top]
    scored.sort(key=lambda st: (not kept[st[1].number], st[0] is None, -(st[0] or 0.0),
                                st[1].number))
    return [t for _, t in scored]


def confirmed_preservation(study: optuna.Study, record: dict[str, Any]) -> dict[str, Any]:
    """A confirmation record's control Δ, drift and leak, paired with the base model's control
    scores on the same fresh seeds (empty without control prompts)."""
    base = study.user_attrs.get(BASELINE_KEY)
    base_control = base.get(CONTROL_PER_PROMPT) if isinstance(base, dict) else None
    return preservation.control_stats(record, base_control)


def confirmation_missing(study: optuna.Study) -> dict[str, str]:
    """What the confirmation asked for (its recorded settings: the top-k candidates and the
    base model on the fresh seeds) has no result, each with why: the error its task recorded,
    or that it was not scored. Empty when nothing is missing, when no confirmation is asked
    for (``top_k`` 0), and while no trial is COMPLETE (there is nothing to confirm)."""
    settings = study.user_attrs.get(SETTINGS_KEY) or {}
    top = candidates(study)[: int(settings.get("top_k") or 0)]
    if not top:
        return {}
    missing = {}
    for key in [*(trial_key(t.number) for t in top), BASELINE_KEY]:
        record = study.user_attrs.get(key)
        if isinstance(record, dict) and matches(record, settings) and "error" not in record:
            continue
        error = record.get("error") if isinstance(record, dict) and matches(record, settings) \
            else None
        missing[key] = str(error) if error else "not scored"
    return missing


def pick(study: optuna.Study) -> FrozenTrial | None:
    """The winner (see the module docstring), or None while no trial is COMPLETE."""
    ranking = confirmed_ranking(study)
    if ranking:
        return ranking[0]
    pool = candidates(study)
    return pool[0] if pool else None


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The winner, or None while no trial is COMPLETE.

    The winner is the best confirmed trial when a confirmation ran (:mod:`hpo.verdict.confirm`),
    else the best candidate by the sweep's ``select`` rule: the best COMPLETE trial with one
    objective, the rule's pick from the Pareto front with several (:func:`pick`).
    """
    return pick(study)


def breaks_on_fresh_seeds(study: optuna.Study) -> int | None:
    """The winner's number when the confirmation ran and the winner fails the sweep's
    preservation requirement on the fresh seeds (then every confirmed candidate does: those
    that keep the base model rank first); None otherwise. Such a winner is not confirmed."""
    summary = confirmation_summary(study)
    if summary is None or require_of(study) is None:
        return None
    kept = (summary.get("preservation") or {}).get("preserves")
    return int(summary["winner"]) if kept is False else None


def confirmation_summary(study: optuna.Study) -> dict[str, Any] | None:
    """``result.confirmation`` of best.yaml: the winner's confirmed score beside its search
    score, and its paired difference from the runner-up and from the base model, all on the
    confirmation seeds. None when no complete confirmation exists."""
    ranking = confirmed_ranking(study)
    if not ranking:
        return None
    settings = study.user_attrs[SETTINGS_KEY]
    done = confirmations(study)
    winner = ranking[0]
    mine = done[winner.number]
    search = winner.user_attrs.get("score_per_rung", {}).get(str(winner.user_attrs.get(
        "best_step")))
    out: dict[str, Any] = {
        "winner": winner.number,
        "trials": [t.number for t in ranking],
        "seed": settings["seed"],
        "images_per_prompt": settings["images_per_prompt"],
        **({"inference_steps": settings["inference_steps"]}
           if "inference_steps" in settings else {}),
        "rule": select_rule(study).as_dict(),
        CLIP_SCORE: mine.get(CLIP_SCORE),
        CLIP_SCORE_STDERR: mine.get(CLIP_SCORE_STDERR),
        "search_clip_score": search,
        # The winner's curse: how much the maximum over noisy search scores flattered it (with
        # cheaper rungs than the confirmation, the fidelity's own offset is in it too).
        "search_minus_confirmed": None if search is None or mine.get(CLIP_SCORE) is None
        else float(search) - float(mine[CLIP_SCORE]),
        "scores": {t.number: {"search": t.user_attrs.get("score_per_rung", {}).get(
            str(t.user_attrs.get("best_step"))), "confirmed": done[t.number].get(CLIP_SCORE),
            "confirmed_stderr": done[t.number].get(CLIP_SCORE_STDERR),
            **{o.name: done[t.number].get(o.name) for o in objectives(study)}}
            for t in ranking},
    }
    base = study.user_attrs.get(BASELINE_KEY)
    if isinstance(base, dict) and matches(base, settings):
        vs_base = paired_or_none(mine.get(PER_PROMPT), base.get(PER_PROMPT))
        out["baseline_clip_score"] = base.get(CLIP_SCORE)
        if vs_base is not None:
            out["delta_vs_baseline"] = vs_base.delta
            out["delta_vs_baseline_stderr"] = vs_base.as_dict()["stderr"]
    figures = confirmed_preservation(study, mine)
    if figures:
        require = require_of(study)
        values = None if require is None else preservation.constraint_values(require, figures)
        out["preservation"] = {
            **{k: v for k, v in figures.items() if k != "control_n"},
            "preserves": preservation.is_feasible(values),
            "verdict": preservation.verdict(figures, require,
                                            f"trial {winner.number} on fresh seeds")}
    if len(ranking) < 2:
        out["verdict"] = f"trial {winner.number} was the only trial confirmed"
        return out
    runner = ranking[1]
    paired = paired_or_none(mine.get(PER_PROMPT), done[runner.number].get(PER_PROMPT))
    out["runner_up"] = runner.number
    if paired is not None:
        clear = paired.distinguishable()
        out.update(delta_vs_runner_up=paired.delta,
                   delta_vs_runner_up_stderr=paired.as_dict()["stderr"],
                   p_value_vs_runner_up=paired.as_dict()["p_value"],
                   distinguishable_from_runner_up=clear)
        pval = "n/a" if paired.as_dict()["p_value"] is None else f"{paired.p_value:.3g}"
        require = require_of(study)
        runner_breaks = require is not None and preservation.is_feasible(
            preservation.constraint_values(require, confirmed_preservation(
                study, done[runner.number]))) is False
        out["verdict"] = (
            # Ranked first for keeping the base model on the fresh seeds, not for its score.
            f"trial {winner.number} wins because the runner-up by score, trial {runner.number}, "
            f"does not keep the base model on fresh seeds (clip_score Δ {paired.delta:+.4f} ± "
            f"{paired.stderr:.4f} paired, p = {pval})"
            if runner_breaks and paired.delta < 0 else
            f"trial {winner.number} beats the runner-up, trial {runner.number}, on fresh seeds "
            f"(clip_score Δ {paired.delta:+.4f} ± {paired.stderr:.4f} paired, p = {pval})"
            if clear else
            f"trial {winner.number} is NOT distinguishable from the runner-up, trial "
            f"{runner.number}, on fresh seeds (clip_score Δ {paired.delta:+.4f} ± "
            f"{paired.stderr:.4f} paired, p = {pval} >= {DEFAULT_LEVEL}): either is as good")
    return out
