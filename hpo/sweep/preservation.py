"""What "keeps the base model" means for a sweep: ``preservation.require``.

The trial side of ``preservation`` (the trigger, control prompts, the training remedy) is read
by :func:`trials.config.parse_preservation`; this module reads the requirement the winner must
meet, a constraint on the control prompts' paired difference from the base model
(:mod:`hpo.verdict.preservation` turns it into Optuna constraint values):

```yaml
preservation:
  trigger: Hyundai
  require:
    control: not_worse   # the control score is not significantly below the base model's
    level: 0.05          # ... by the paired t-test over control prompts at this level (two-sided)
    max_drop: 2.0        # optional: and the control Δ is at least -2.0 CLIP-score points
    leak: not_above      # optional: the leak is not significantly above 0 (same test, level)
    max_leak: 1.0        # optional: and the leak is at most 1.0 CLIP-score points
```

``control: not_worse`` is the default once ``require`` is given; ``control: any`` keeps only
``max_drop``; ``leak`` defaults to ``any``. A sweep without ``require`` measures preservation
but does not constrain on it. The control test alone can miss a LoRA that paints the brand on
control images while they still match their prompts (the leak measures exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass

from trials.api import Section

CONTROL_RULES = ("not_worse", "any")
LEAK_RULES = ("not_above", "any")
DEFAULT_LEVEL = 0.05


@dataclass(frozen=True)
class Require:
    """The constraint on a trial's control prompts (see the module docstring)."""

    not_worse: bool = True
    level: float = DEFAULT_LEVEL
    max_drop: float | None = None  # CLIP-score points below the base model, None: no bound
    leak_not_above: bool = False
    max_leak: float | None = None  # CLIP-score points of brand margin gained, None: no bound

    def as_dict(self) -> dict[str, object]:
        return {"control": "not_worse" if self.not_worse else "any", "level": self.level,
                "max_drop": self.max_drop, "leak": "not_above" if self.leak_not_above
                else "any", "max_leak": self.max_leak}

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Require:
        """The inverse of :meth:`as_dict` (a study attr written by an earlier run)."""
        def number(key: str) -> float | None:
            value = raw.get(key)
            return None if value is None else float(value)  # type: ignore[arg-type]

        return cls(not_worse=raw.get("control", "not_worse") == "not_worse",
                   level=number("level") or DEFAULT_LEVEL, max_drop=number("max_drop"),
                   leak_not_above=raw.get("leak") == "not_above", max_leak=number("max_leak"))

    def describe(self) -> str:
        """One line for the dry run and the summary."""
        parts = []
        if self.not_worse:
            parts.append(f"control score not significantly below the base model's (paired "
                         f"t-test, level {self.level:g})")
        if self.max_drop is not None:
            parts.append(f"control Δ >= -{self.max_drop:g}")
        if self.leak_not_above:
            parts.append(f"leak not significantly above 0 (level {self.level:g})")
        if self.max_leak is not None:
            parts.append(f"leak <= {self.max_leak:g}")
        return " and ".join(parts)


def parse_require(root: Section, measured: bool) -> Require | None:
    """``preservation.require``, or None without it. ``measured``: the sweep has control
    prompts (a ``preservation.trigger``); a requirement without them is an error."""
    section = root.sub("preservation")
    if not section.has("require"):
        return None
    if not measured:
        raise section.error("needs preservation.trigger: without control prompts nothing "
                            "can be required", "require")
    req = section.sub("require")
    req.allow_only(("control", "level", "max_drop", "leak", "max_leak"))
    rule = req.string("control", "not_worse", CONTROL_RULES)
    max_drop = req.number("max_drop", None, minimum=0)
    leak = req.string("leak", "any", LEAK_RULES)
    max_leak = req.number("max_leak", None, minimum=0)
    if rule == "any" and max_drop is None and leak == "any" and max_leak is None:
        raise req.error("control: any with no max_drop, leak or max_leak requires nothing; "
                        "give one, or drop require", "control")
    return Require(not_worse=rule == "not_worse",
                   level=req.number("level", DEFAULT_LEVEL, above=0, maximum=0.5),
                   max_drop=max_drop, leak_not_above=leak == "not_above", max_leak=max_leak)
