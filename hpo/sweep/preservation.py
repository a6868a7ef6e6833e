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

from trials.api import Section, setting, settings

CONTROL_RULES = ("not_worse", "any")
LEAK_RULES = ("not_above", "any")
DEFAULT_LEVEL = 0.05


@dataclass(frozen=True)
class Require:
    """The constraint on a trial's control prompts (see the module docstring)."""

    control: str = setting("not_worse", doc="not_worse: the control score is not "
                           "significantly below the base model's; any: only max_drop",
                           choices=CONTROL_RULES)
    level: float = setting(DEFAULT_LEVEL, doc="The paired t-test's level (two-sided)", above=0,
                           maximum=0.5)
    max_drop: float | None = setting(None, doc="CLIP-score points the control Δ may fall "
                                     "below the base model (none: no bound)", minimum=0)
    leak: str = setting("any", doc="not_above: the leak is not significantly above 0",
                        choices=LEAK_RULES)
    max_leak: float | None = setting(None, doc="CLIP-score points of brand margin gained at "
                                     "most (none: no bound)", minimum=0)

    @property
    def not_worse(self) -> bool:
        return self.control == "not_worse"

    @property
    def leak_not_above(self) -> bool:
        return self.leak == "not_above"

    def as_dict(self) -> dict[str, object]:
        return {"control": self.control, "level": self.level, "max_drop": self.max_drop,
                "leak": self.leak, "max_leak": self.max_leak}

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Require:
        """The inverse of :meth:`as_dict` (a study attr written by an earlier run)."""
        def number(key: str) -> float | None:
            value = raw.get(key)
            return None if value is None else float(value)  # type: ignore[arg-type]

        return cls(control=str(raw.get("control") or "not_worse"),
                   level=number("level") or DEFAULT_LEVEL, max_drop=number("max_drop"),
                   leak=str(raw.get("leak") or "any"), max_leak=number("max_leak"))

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
    if not section.has("require"):  # null: nothing required, as when left out
        return None
    if not measured:
        raise section.error("needs preservation.trigger: without control prompts nothing "
                            "can be required", "require")
    req = section.sub("require")
    require = settings.read(Require, req)
    if (require.control == "any" and require.max_drop is None and require.leak == "any"
            and require.max_leak is None):
        raise req.error("control: any with no max_drop, leak or max_leak requires nothing; "
                        "give one, or drop require", "control")
    return require
