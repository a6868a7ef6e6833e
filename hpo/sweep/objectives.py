"""What a sweep optimizes and how it names its winner: ``metric``, ``select`` and ``confirm``.

``metric`` is one objective (``{name: clip_score, goal: maximize}``) or a list of them; with
several, the Optuna study is multi-objective and its Pareto front (``study.best_trials``) is the
set of trials no other trial beats on every objective. ASHA stops trials on the first objective.

``select`` states the rule that picks one winner (``best.yaml``) from the candidates (the
Pareto front, or every COMPLETE trial with one objective):

- ``rule: first`` (default): the best value of the first objective;
- ``rule: weighted``: the largest weighted sum ``sum_i w_i * s_i * v_i`` with ``weights`` w_i
  as given, ``s_i`` = +1 for maximize and -1 for minimize, and ``v_i`` the raw metric values
  (CLIP scores are 100 x cosine, so the metrics share a scale; state weights accordingly).

``confirm`` re-scores the ``top_k`` best candidates (by the rule, on their search scores) on
fresh seeds after the search (``hpo.verdict.confirm``); the winner is then the best *confirmed*
candidate by the same rule. ``top_k: 0`` turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from trials.api import Section, describe, report, setting, settings

GOALS = ("maximize", "minimize")
# clip_i_holdout and dino_holdout need held-out real images (data.holdout or eval.reference_dir);
# control_score, drift and leak need control prompts (preservation.trigger): a Pareto sweep of
# brand (clip_score, maximize) against preservation (e.g. leak, minimize).
# The names are trials.report's: a rung's RungReport field of that name is the objective's value.
FIDELITY_METRICS = (report.CLIP_I_HOLDOUT, report.DINO_HOLDOUT)
PRESERVATION_METRICS = (report.CONTROL_SCORE, report.DRIFT, report.LEAK)
METRICS = (report.CLIP_SCORE, report.CLIP_I, *FIDELITY_METRICS, *PRESERVATION_METRICS)
RULES = ("first", "weighted")
DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class Objective:
    """One metric the search optimizes, and in which direction."""

    name: str = setting(report.CLIP_SCORE, doc="The metric", choices=METRICS)
    goal: str = setting("maximize", doc="Its direction", choices=GOALS)

    @property
    def sign(self) -> float:
        return 1.0 if self.goal == "maximize" else -1.0


@dataclass(frozen=True)
class Select:
    """The rule that picks the winner among the candidates (see the module docstring)."""

    rule: str = setting("first", doc="first: the best first objective; weighted: the largest "
                        "weighted sum of the objectives", choices=RULES)
    weights: tuple[float, ...] = setting(
        (), doc="rule weighted: one weight >= 0 per objective",
        # read by parse_select, which knows the objectives; rule first writes none
        reader=lambda section, key, default: default, writer=lambda w: list(w) or None,
        schema={"type": "array", "items": {"type": "number", "minimum": 0}})

    def score(self, objectives: tuple[Objective, ...], metrics: dict[str, Any]) -> float | None:
        """Higher is better; None when a metric the rule needs is missing."""
        if self.rule == "first":
            value = metrics.get(objectives[0].name)
            return None if value is None else objectives[0].sign * float(value)
        total = 0.0
        for objective, weight in zip(objectives, self.weights, strict=True):
            value = metrics.get(objective.name)
            if value is None:
                return None
            total += weight * objective.sign * float(value)
        return total

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "weights": list(self.weights)}




@dataclass(frozen=True)
class Confirm:
    """Re-scoring of the top candidates on fresh seeds after the search (0 = off)."""

    top_k: int = setting(DEFAULT_TOP_K, doc="Candidates re-scored on fresh seeds (0: off)",
                         minimum=0)
    # None only while reading: the loader fills in eval.seed + 1 and the search's count.
    seed: int | None = setting(None, doc="The first seed of the confirmation images (default "
                               "eval.seed + 1; must differ from eval.seed)", minimum=0)
    images_per_prompt: int | None = setting(
        None, doc="Images per prompt (default: the search's eval.images_per_prompt)",
        minimum=1)
    # The confirmation is the full-size evaluation the winner's claims rest on; the search's
    # rungs may draw with fewer sampler steps (eval.inference_steps), a cheaper fidelity.
    inference_steps: int | None = setting(
        None, doc="Sampler steps of the confirmation's images, the base model's included "
        "(default: the search's eval.inference_steps)", minimum=1)


def parse_objectives(root: Section) -> tuple[Objective, ...]:
    """``metric``: one mapping, or a list of mappings, each with ``name`` and ``goal``."""
    raw = root.data.get("metric")
    if raw is None or isinstance(raw, dict):
        items = [root.sub("metric")]
    elif isinstance(raw, list) and raw:
        items = [Section(root.file, f"metric[{i}]", item) for i, item in enumerate(raw)]
    else:
        raise root.error(f"must be a mapping with name and goal, or a non-empty list of them "
                         f"(got {describe(raw)})", "metric")
    out = [settings.read(Objective, item) for item in items]
    names = [o.name for o in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise items[i].error(f"names {name!r} twice; each objective once", "name")
    return tuple(out)


def parse_select(root: Section, objectives: tuple[Objective, ...]) -> Select:
    section = root.sub("select")
    rule = settings.read(Select, section).rule
    if rule == "first":
        if section.has("weights"):
            raise section.error("only rule weighted takes weights", "weights")
        return Select()
    raw = section.raw("weights")
    if not isinstance(raw, list) or len(raw) != len(objectives):
        raise section.error(f"must list one number per objective ({len(objectives)}) "
                            f"(got {len(raw) if isinstance(raw, list) else describe(raw)})",
                            "weights")
    weights = []
    for i, w in enumerate(raw):
        if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
            raise section.error(f"must be a number >= 0 (got {describe(w)})", f"weights[{i}]")
        weights.append(float(w))
    if not any(weights):
        raise section.error("must not all be 0", "weights")
    return Select(rule, tuple(weights))


def parse_confirm(root: Section, eval_seed: int, images_per_prompt: int,
                  inference_steps: int) -> Confirm:
    """``confirm``: ``top_k`` (default 3, 0 = off), ``seed`` (default ``eval.seed + 1``),
    ``images_per_prompt`` and ``inference_steps`` (default: the search's)."""
    section = root.sub("confirm")
    confirm = settings.read(Confirm, section)
    seed = eval_seed + 1 if confirm.seed is None else confirm.seed
    if seed == eval_seed:
        raise section.error(f"must differ from eval.seed ({eval_seed}): confirmation draws "
                            "fresh images", "seed")
    return replace(confirm, seed=seed, images_per_prompt=confirm.images_per_prompt
                   or images_per_prompt,
                   inference_steps=confirm.inference_steps or inference_steps)
