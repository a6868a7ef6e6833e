"""The ``parameters`` section: what a sweep varies, defined once for the sweep and the trial.

A parameter is fixed (``value``), a list of choices (``values``) or a distribution (``distribution``
with ``min``/``max``, and ``q`` for ``q_uniform``), as in W&B sweeps. The sweep loader
(``hpo.sweep.spec.load_sweep``) searches over them; the trial loader
(``trials.config.load_trial_config``, for ``best.yaml`` and ``python -m trials.train``) reads
the same section with the same parser and needs each one fixed or given with ``--set``.

:func:`make_params` turns one set of values into the :class:`HyperParams` a trial trains with;
``learning_rate`` goes from here to ``torch.optim.AdamW`` in ``trials.train.loop``.

Imports only :mod:`trials.validation` (pure data).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trials.validation import ConfigError, Section, check_int, check_number, closest, describe

# Module-name patterns handed to peft. Plain names match any module whose name ends with them
# (peft's suffix rule); the cross-attention preset needs a regex so attn1 is left alone.
TARGET_PRESETS: dict[str, str | tuple[str, ...]] = {
    "cross_attn": r".*attn2\.(to_q|to_k|to_v|to_out\.0)",
    "attn": ("to_q", "to_k", "to_v", "to_out.0"),
    "attn_ff": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
}
PARAMETER_NAMES = ("rank", "lora_alpha", "learning_rate", "max_train_steps", "target_modules",
                   "adapter", "caption_dropout", "preservation", "preservation_weight")
# Parameters a sweep may leave out: alpha defaults to rank, adapter to lora, caption dropout to
# train.caption_dropout, the preservation remedy and its weight to the preservation section's.
OPTIONAL_PARAMETERS = ("lora_alpha", "adapter", "caption_dropout", "preservation",
                       "preservation_weight")
# Training remedies that keep the base model (trials.train.preserve): none; DreamBooth's prior
# preservation (Ruiz et al. 2022; class images drawn once by the base model); kohya sd-scripts'
# differential output preservation (PR #1710; the base model's own prediction as the target).
PRESERVATION_METHODS = ("none", "prior", "dop")
# peft LoraConfig(use_dora=False/True): LoRA, or DoRA (Liu et al. 2024).
ADAPTERS = ("lora", "dora")
PARAMETER_PATHS = {name: f"parameters.{name}" for name in PARAMETER_NAMES}
PARAMETER_KEYS = ("value", "values", "distribution", "min", "max", "q")
_ALPHA_RULE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*\*\s*)?rank\s*$")

DISTRIBUTIONS = ("uniform", "log_uniform_values", "int_uniform", "q_uniform")
# More values than this in one range is a typo (q: 1e-9), not a plan.
MAX_VALUES = 1_000_000
# Parameters that take whole numbers: a uniform range of them is sampled as integers.
INTEGRAL = ("rank", "max_train_steps")


@dataclass(frozen=True)
class HyperParams:
    """The values a sweep varies. ``target_modules`` is a preset name or comma-joined names."""

    rank: int
    lora_alpha: float
    learning_rate: float
    max_train_steps: int
    target_modules: str
    adapter: str = "lora"
    caption_dropout: float | None = None  # None: train.caption_dropout
    preservation: str | None = None  # None: preservation.method
    preservation_weight: float | None = None  # None: preservation.weight


@dataclass(frozen=True)
class Parameter:
    """One tunable parameter: a fixed value, a list of choices, or a distribution."""

    name: str
    kind: str  # "value", "values", or one of DISTRIBUTIONS
    value: Any = None
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    q: float | None = None

    @property
    def is_fixed(self) -> bool:
        return self.kind == "value"

    def grid(self) -> tuple[Any, ...] | None:
        """Every value this parameter can take, or None for a continuous range."""
        if self.kind == "value":
            return (self.value,)
        if self.kind == "values":
            return self.values
        assert self.low is not None and self.high is not None
        if self.kind == "int_uniform" or (self.kind == "uniform" and self.name in INTEGRAL):
            return tuple(range(int(self.low), int(self.high) + 1))
        if self.kind == "q_uniform" and self.q:
            n = math.floor((self.high - self.low) / self.q + 1e-9) + 1
            return tuple(_tidy(self.low + i * self.q) for i in range(n))
        return None

    def size(self) -> int | None:
        """How many values :meth:`grid` holds, computed without building it; None = continuous."""
        if self.kind == "value":
            return 1
        if self.kind == "values":
            return len(self.values)
        assert self.low is not None and self.high is not None
        if self.kind == "int_uniform" or (self.kind == "uniform" and self.name in INTEGRAL):
            return int(self.high) - int(self.low) + 1
        if self.kind == "q_uniform" and self.q:
            return math.floor((self.high - self.low) / self.q + 1e-9) + 1
        return None

    def describe(self) -> str:
        if self.kind == "value":
            return f"{self.value}"
        if self.kind == "values":
            return "one of [" + ", ".join(str(v) for v in self.values) + "]"
        q = f", q={self.q:g}" if self.q else ""
        return f"{self.kind}({self.low:g}, {self.high:g}{q})"


def parse_target_modules(value: Any, error: Any, key: str) -> str:
    """A preset name, or an explicit list of module names (checked against the UNet later)."""
    if isinstance(value, str) and "," not in value:
        if value not in TARGET_PRESETS:
            raise error(
                f"unknown preset {value!r}; presets: {', '.join(TARGET_PRESETS)}, "
                f"or a list of module names{closest(value, TARGET_PRESETS)}", key)
        return value
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise error(
            f"must be a preset ({', '.join(TARGET_PRESETS)}) or a non-empty list of module "
            f"names (got {describe(value)})", key)
    cleaned = []
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.]+", name.strip()):
            raise error(f"module names must be dotted identifiers (got {describe(name)})", key)
        cleaned.append(name.strip())
    return ",".join(cleaned)


def alpha_rule(value: Any) -> float | None:
    """The factor of an alpha written as ``rank`` or ``2*rank``; None when it is a number."""
    if isinstance(value, str):
        match = _ALPHA_RULE.match(value)
        if match:
            return float(match.group(1) or 1.0)
    return None


def check_param_value(name: str, value: Any, error: Any, key: str) -> Any:
    """Check one concrete value of a tunable parameter; returns it in its canonical type."""
    if name == "rank":
        return check_int(value, error, key, 1, 1024)
    if name == "max_train_steps":
        return check_int(value, error, key, 1, None)
    if name == "learning_rate":
        return check_number(value, error, key, above=0, maximum=1.0)
    if name == "target_modules":
        return parse_target_modules(value, error, key)
    if name == "adapter":
        if value not in ADAPTERS:
            raise error(f"must be one of {', '.join(ADAPTERS)} (got {describe(value)})", key)
        return value
    if name == "caption_dropout":
        return check_number(value, error, key, minimum=0, maximum=1)
    if name == "preservation":
        if value not in PRESERVATION_METHODS:
            raise error(f"must be one of {', '.join(PRESERVATION_METHODS)} "
                        f"(got {describe(value)})", key)
        return value
    if name == "preservation_weight":
        return check_number(value, error, key, minimum=0, maximum=10_000)
    if name == "lora_alpha":
        factor = alpha_rule(value)
        if factor is not None:
            if factor <= 0:
                raise error(f"must be 'rank' or 'N*rank' with N > 0 (got {describe(value)})", key)
            return value.replace(" ", "")
        if isinstance(value, str) and not re.fullmatch(r"[-+0-9.eE]+", value):
            raise error(f"must be a number, 'rank' or 'N*rank' (got {describe(value)})", key)
        return check_number(value, error, key, above=0)
    raise error(f"unknown parameter{closest(name, PARAMETER_NAMES)}; "
                f"tunable: {', '.join(PARAMETER_NAMES)}", key)


def make_params(values: Mapping[str, Any]) -> HyperParams:
    """Build :class:`HyperParams` from checked values, applying an alpha rule such as ``rank``."""
    rank = int(values["rank"])
    alpha = values.get("lora_alpha", "rank")
    factor = alpha_rule(alpha)
    return HyperParams(
        rank=rank,
        lora_alpha=float(rank * factor) if factor is not None else float(alpha),
        learning_rate=float(values["learning_rate"]),
        max_train_steps=int(values["max_train_steps"]),
        target_modules=str(values["target_modules"]),
        adapter=str(values.get("adapter", "lora")),
        caption_dropout=None if values.get("caption_dropout") is None
        else float(values["caption_dropout"]),
        preservation=None if values.get("preservation") is None
        else str(values["preservation"]),
        preservation_weight=None if values.get("preservation_weight") is None
        else float(values["preservation_weight"]),
    )


def _tidy(x: float) -> float | int:
    rounded = round(x, 12)
    return int(rounded) if float(rounded).is_integer() else rounded


def parse_parameter(section: Section, name: str) -> Parameter:
    """One parameter: ``value``, ``values``, or ``distribution`` with ``min``/``max`` (and
    ``q``); ``ConfigError`` naming the key when malformed."""
    section.allow_only(PARAMETER_KEYS)
    given = [k for k in ("value", "values", "distribution") if k in section.data]
    if len(given) != 1:
        raise section.error(
            "needs exactly one of value, values or distribution"
            + (f" (got {', '.join(given)})" if given else ""))
    kind = given[0]
    if kind == "value":
        return Parameter(name, "value", value=check_param_value(
            name, section.raw("value"), section.error, "value"))
    if kind == "values":
        raw = section.raw("values")
        if not isinstance(raw, list) or not raw:
            raise section.error(f"must be a non-empty list (got {describe(raw)})", "values")
        checked = []
        for i, item in enumerate(raw):
            checked.append(check_param_value(name, item, section.error, f"values[{i}]"))
        seen: set[str] = set()
        for i, item in enumerate(checked):
            if str(item) in seen:
                raise section.error(
                    f"must not repeat a value (got {describe(raw[i])} again)", f"values[{i}]")
            seen.add(str(item))
        return Parameter(name, "values", values=tuple(checked))
    dist = section.string("distribution", choices=DISTRIBUTIONS)
    if name in ("target_modules", "adapter"):
        raise section.error(f"{name} takes value or values, not a distribution", "distribution")
    low = section.number("min")
    high = section.number("max")
    if low >= high:
        raise section.error(f"must be > min ({low:g}) (got {high:g})", "max")
    if dist == "log_uniform_values" and low <= 0:
        raise section.error(f"must be > 0 for log_uniform_values (got {low:g})", "min")
    integral = dist == "int_uniform" or name in INTEGRAL
    for key, end in (("min", low), ("max", high)):
        if integral and not end.is_integer():
            what = dist if dist == "int_uniform" else name
            raise section.error(f"must be a whole number for {what} (got {end:g})", key)
    q = None
    if dist == "q_uniform":
        q = section.number("q", above=0)
        if q > high - low:
            raise section.error(f"must be <= max - min ({high - low:g}) (got {q:g})", "q")
        if integral and not q.is_integer():
            raise section.error(f"must be a whole number for {name} (got {q:g})", "q")
        steps = (high - low) / q
        if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
            raise section.error(
                f"must divide max - min ({high - low:g}) into whole steps (got {q:g})", "q")
    elif section.has("q"):
        raise section.error(f"only q_uniform takes q (distribution is {dist})", "q")
    n = Parameter(name, dist, low=low, high=high, q=q).size()
    if n is not None and n > MAX_VALUES:
        raise section.error(
            f"gives {n:,} values; at most {MAX_VALUES:,} (use a larger q, a narrower range, or "
            f"a continuous distribution)", "q" if q else "max")
    # The range ends must themselves be valid values (e.g. learning_rate min > 0).
    check_param_value(name, int(low) if name in INTEGRAL else low, section.error, "min")
    check_param_value(name, int(high) if name in INTEGRAL else high, section.error, "max")
    return Parameter(name, dist, low=low, high=high, q=q)


def parse_parameters(section: Section, given: tuple[str, ...] = (),
                     missing_hint: str = "a value, values or distribution"
                     ) -> tuple[Parameter, ...]:
    """The ``parameters`` section; ``given``: names set elsewhere (``--set``), so not
    required here. ``lora_alpha`` left out is ``rank``. Raises ``ConfigError`` naming the key:
    an unknown parameter, a malformed one, a required one missing (``missing_hint`` says how
    to give it, with ``{name}`` for the parameter's name)."""
    for name in section.data:
        if name not in PARAMETER_NAMES:
            raise section.error(
                f"unknown parameter{closest(str(name), PARAMETER_NAMES)}; "
                f"tunable: {', '.join(PARAMETER_NAMES)}", str(name))
    params = [parse_parameter(section.sub(name), name) for name in section.data]
    missing = [n for n in PARAMETER_NAMES
               if n not in section.data and n not in OPTIONAL_PARAMETERS and n not in given]
    if missing:
        raise section.error(f"is required ({missing_hint.format(name=missing[0])})",
                            missing[0])
    if "lora_alpha" not in section.data:
        params.append(Parameter("lora_alpha", "value", value="rank"))
    return tuple(params)


def fixed_values(parameters: tuple[Parameter, ...], overrides: Mapping[str, Any],
                 section: Section) -> dict[str, Any]:
    """One trial's values: each parameter's fixed ``value``, or its ``--set`` override.

    Raises ``ConfigError``: an override of an unknown parameter or with a bad value (naming
    ``--set NAME``), or a searched parameter with no override.
    """
    for name in overrides:
        if name not in PARAMETER_NAMES:
            raise ConfigError(
                section.file, f"--set {name}", f"unknown parameter"
                f"{closest(str(name), PARAMETER_NAMES)}; tunable: {', '.join(PARAMETER_NAMES)}")

    def override_error(message: str, key: str) -> ConfigError:
        return ConfigError(section.file, f"--set {key}", message)

    values: dict[str, Any] = {}
    for p in parameters:
        if p.name in overrides:
            continue
        if not p.is_fixed:
            raise section.sub(p.name).error(
                f"is searched, not fixed; give it with --set {p.name}=VALUE")
        values[p.name] = p.value
    for name, value in overrides.items():
        values[name] = check_param_value(name, value, override_error, name)
    return values
