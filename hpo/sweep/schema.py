"""The sweep file as a whole, derived from its one definition: the document, the JSON Schema,
the reference page.

Each section is declared once (:mod:`trials.settings`: the trial's sections in
:mod:`trials.config`, the sweep's own in :mod:`hpo.sweep.spec`, :mod:`~hpo.sweep.objectives`,
:mod:`~hpo.sweep.racing`, :mod:`~hpo.sweep.preservation`). This module only lays them out:

- :func:`document`: a loaded :class:`~hpo.sweep.spec.Sweep` written back as a sweep file
  (``load_sweep(document(x)) == x``, tested over every shipped sweep);
- :func:`json_schema`: ``sweeps/sweep.schema.json``, for editors (the shipped sweeps name it in
  a ``# yaml-language-server: $schema=sweep.schema.json`` line) and CI;
- :func:`reference`: the sweep file's reference page (Markdown), every key with its type,
  default, what is allowed and whether a change makes a rerun another study.

``python -m hpo.sweep.schema`` rewrites both files; ``tests/hpo/sweep/test_schema.py`` fails
when they are stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from hpo.sweep.objectives import Confirm, Objective, Select
from hpo.sweep.preservation import Require
from hpo.sweep.racing import Racing
from hpo.sweep.spec import (
    DISTRIBUTIONS,
    EarlyTerminate,
    Method,
    Parameter,
    Resources,
    Sweep,
)
from trials.api import (
    OPTIONAL_PARAMETERS,
    PARAMETER_NAMES,
    DataSpec,
    EvalSpec,
    ModelSpec,
    PreservationSpec,
    TrainSpec,
    settings,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "sweeps" / "sweep.schema.json"
REFERENCE_FILE = REPO / "docs" / "sweep-file.md"
SCHEMA_ID = "sweep.schema.json"

# The sections of a sweep file in the order they are written, each with its definition and
# what it is for (the reference page's headings). ``metric`` and ``parameters`` have shapes
# of their own (a list of objectives; a mapping of parameters) laid out below.
SECTIONS: tuple[tuple[str, type | None, str], ...] = (
    ("model", ModelSpec, "The base model"),
    ("data", DataSpec, "The training data"),
    ("train", TrainSpec, "Settings every trial shares"),
    ("eval", EvalSpec, "How a rung scores a LoRA"),
    ("metric", Objective, "What the search optimizes: one objective, or a list"),
    ("method", Method, "How trials are proposed"),
    ("preservation", PreservationSpec, "Keeping the base model"),
    ("parameters", None, "The search space"),
    ("early_terminate", EarlyTerminate, "ASHA: stopping trials early"),
    ("resources", Resources, "What a trial asks Ray for"),
    ("select", Select, "The rule that picks the winner"),
    ("confirm", Confirm, "Re-scoring the top candidates on fresh seeds"),
    ("racing", Racing, "Racing: stopping a rung's drawing early"),
)


def _parameter_document(p: Parameter) -> dict[str, Any]:
    if p.kind == "value":
        return {"value": settings.plain(p.value)}
    if p.kind == "values":
        return {"values": settings.plain(p.values)}
    out: dict[str, Any] = {"distribution": p.kind, "min": p.low, "max": p.high}
    if p.q is not None:
        out["q"] = p.q
    return out


def document(sweep: Sweep) -> dict[str, Any]:
    """``sweep`` as a sweep file writes it (paths absolute, every default explicit)."""
    doc: dict[str, Any] = {"name": sweep.name}
    for key in ("model", "data", "train", "eval"):
        doc[key] = settings.dump(getattr(sweep, key))
    objectives = [settings.dump(o) for o in sweep.objectives]
    doc["metric"] = objectives[0] if len(objectives) == 1 else objectives
    doc["method"] = {"type": sweep.method, "seed": sweep.seed}
    doc["preservation"] = settings.dump(sweep.preservation)
    if sweep.require is not None:
        doc["preservation"]["require"] = settings.dump(sweep.require)
    doc["parameters"] = {p.name: _parameter_document(p) for p in sweep.parameters}
    for key in ("early_terminate", "resources", "select", "confirm", "racing"):
        value = getattr(sweep, key)
        if value is not None:
            doc[key] = settings.dump(value)
    return doc


def _parameter_schema(name: str) -> dict[str, Any]:
    number = {"anyOf": [{"type": "number"}, {"type": "string"}]}  # 1e-4 is a string in YAML
    return {
        "type": "object",
        "description": f"parameters.{name}: a fixed value, a list of values, or a distribution",
        "properties": {
            "value": {"description": "A fixed value"},
            "values": {"type": "array", "minItems": 1, "description": "Values to choose from"},
            "distribution": {"enum": list(DISTRIBUTIONS)},
            "min": number, "max": number,
            "q": {**number, "description": "q_uniform's step"},
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["value"]}, {"required": ["values"]},
                  {"required": ["distribution", "min", "max"]}],
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a sweep file; ``best.yaml`` adds ``result``."""
    props: dict[str, Any] = {"name": {
        "type": "string", "minLength": 1, "description": "The study name (a folder name)",
        "pattern": r"^[^/\\\s:*?\"<>|]+$"}}
    for key, cls, about in SECTIONS:
        if key == "parameters":
            props[key] = {
                "type": "object", "description": about,
                "properties": {n: _parameter_schema(n) for n in PARAMETER_NAMES},
                "additionalProperties": False,
                "required": [n for n in PARAMETER_NAMES if n not in OPTIONAL_PARAMETERS]}
            continue
        assert cls is not None
        section = settings.json_schema(cls, title=key)
        section["description"] = about
        if key == "metric":
            section = {"description": about,
                       "anyOf": [section, {"type": "array", "items": section, "minItems": 1}]}
        elif key == "method":
            section = {"description": about,
                       "anyOf": [section["properties"]["type"] | {"type": "string"}, section]}
        elif key == "preservation":
            section["properties"]["require"] = settings.json_schema(
                Require, title="require") | {"description": "What the winner must keep"}
        props[key] = section
    props["result"] = {"type": "object", "description": "best.yaml only: what the sweep found "
                       "(written by the sweep, never read)"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Sweep file of sd-lora-sweep",
        "description": "A Ray Tune + Optuna sweep of LoRA fine-tuning for Stable Diffusion "
                       "v1.5 (python -m hpo.run --sweep FILE); generated by python -m "
                       "hpo.sweep.schema from the sweep file's definition",
        "type": "object",
        "properties": props,
        "required": ["name", "eval", "data", "parameters"],
        "additionalProperties": False,
    }


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _type_name(s: settings.Setting, hint: Any) -> str:
    if s.choices:
        return " \\| ".join(f"`{c}`" for c in s.choices)
    if s.schema is not None and s.schema.get("multipleOf"):
        return f"int ({s.schema['minimum']}-{s.schema['maximum']}, a multiple of " \
            f"{s.schema['multipleOf']})"
    if s.schema is not None and s.schema.get("type") == "array":
        return f"list of {_JSON_NAMES[s.schema['items']['type']]}"
    text = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    text = text.replace("pathlib.", "").replace("Path", "path").replace(" | None", "")
    return _cell("list of " + text.split("[")[1].split(",")[0] if text.startswith("tuple")
                 else text)


_JSON_NAMES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}


def _rerun(s: settings.Setting, free: str | None) -> str:
    """The rerun column: a key that changes what a score means makes another study."""
    if s.free or free:
        return f"same study ({s.free})" if s.free and "contents count" in s.free else \
            "same study"
    return "**new study**"


def _bounds(s: settings.Setting) -> str:
    parts = []
    if s.minimum is not None:
        parts.append(f">= {s.minimum:g}")
    if s.above is not None:
        parts.append(f"> {s.above:g}")
    if s.maximum is not None:
        parts.append(f"<= {s.maximum:g}")
    return ", ".join(parts)


def _section_free(key: str) -> str | None:
    """Why a whole section may change between runs (its field on :class:`Sweep`), or None."""
    for f, s, _ in settings.declared(Sweep):
        if (s.key or f.name) == key:
            return s.free
    return None


def _rows(cls: type, prefix: str, free: str | None = None) -> list[str]:
    """One table row a key; ``free``: the enclosing section's reason to be free."""
    rows = []
    for f, s, hint in settings.declared(cls):
        if s.derived:
            continue
        nested = next((a for a in (hint, *getattr(hint, "__args__", ()))
                       if dataclasses.is_dataclass(a)), None)
        if nested is not None:  # a subsection: its own rows (data.synthetic.n_images)
            study = _rerun(s, free)
            rows.append(f"| `{prefix}{f.name}` | mapping | none | {_cell(s.doc)} | {study} |")
            rows += _rows(nested, f"{prefix}{f.name}.", s.free or free)
            continue
        default = settings.default_of(f)
        shown = "required" if default is dataclasses.MISSING else (
            "none" if default is None or dataclasses.is_dataclass(default)
            else f"`{json.dumps(settings.plain(default))}`")
        study = _rerun(s, free)
        kind = _type_name(s, hint)
        bounds = _bounds(s)
        rows.append(f"| `{prefix}{f.name}` | {kind}{' (' + bounds + ')' if bounds else ''} | "
                    f"{shown} | {_cell(s.doc)} | {study} |")
    return rows


def reference() -> str:
    """The sweep file's reference page: one table a section, from the definition."""
    lines = [
        "# The sweep file", "",
        "<!-- Generated by `python -m hpo.sweep.schema` from the sweep file's definition "
        "(trials/config.py, hpo/sweep/); do not edit by hand. -->", "",
        "A sweep file is YAML. Editors that read JSON Schema (VS Code's YAML extension, "
        "JetBrains) validate and complete it from `sweeps/sweep.schema.json`: put "
        "`# yaml-language-server: $schema=sweep.schema.json` at its top. `python -m hpo.run "
        "--dry-run` checks it with one line per mistake (file, key, what is allowed).", "",
        "*Rerun* says what changing a key does to a study that has run: **new study** keys "
        "change what a score means, so a rerun with another value is refused (start a new "
        "study with `--study NEW_NAME`); *same study* keys may change between runs. Besides "
        "the keys, a study is bound to what paths point at: the training images and captions "
        "(`data.contents`), the prompts' text (`eval.prompts`, "
        "`preservation.control_prompts`), and a local model folder or CLIP weights file "
        "(`model.contents`, `eval.clip_contents`).", "",
        "| key | type | default | meaning | rerun |", "|---|---|---|---|---|",
        "| `name` | str | required | The study name (letters, digits, `-_.`) | same study |",
        "",
    ]
    for key, cls, about in SECTIONS:
        lines += [f"## `{key}`", "", about + ".", ""]
        if key == "method":
            lines += ["`method: tpe` (a name alone) is short for `method: {type: tpe}`.", ""]
        if key == "parameters":
            lines += [
                "Each parameter is `{value: V}` (fixed), `{values: [...]}` (choices) or "
                "`{distribution: D, min: A, max: B}` with D one of "
                + ", ".join(f"`{d}`" for d in DISTRIBUTIONS) + " (`q_uniform` takes `q`). "
                "Every parameter is part of the study (**new study**).", "",
                "| parameter | required |", "|---|---|",
                *[f"| `{n}` | {'no' if n in OPTIONAL_PARAMETERS else 'yes'} |"
                  for n in PARAMETER_NAMES], ""]
            continue
        assert cls is not None
        lines += ["| key | type | default | meaning | rerun |", "|---|---|---|---|---|",
                  *_rows(cls, f"{key}.", _section_free(key)), ""]
        if key == "preservation":
            lines += ["### `preservation.require`", "",
                      "| key | type | default | meaning | rerun |", "|---|---|---|---|---|",
                      *_rows(Require, "preservation.require."), ""]
    return "\n".join(lines).rstrip() + "\n"


def render_schema() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpo.sweep.schema",
        description="Write sweeps/sweep.schema.json and docs/sweep-file.md from the sweep "
                    "file's definition.")
    parser.parse_args(argv)
    SCHEMA_FILE.write_text(render_schema(), encoding="utf-8")
    REFERENCE_FILE.parent.mkdir(exist_ok=True)
    REFERENCE_FILE.write_text(reference(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE.relative_to(REPO)} and {REFERENCE_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
