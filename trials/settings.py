"""The sweep file's keys, each declared once: a dataclass field with a :class:`Setting`.

Every section of a sweep file (``model``, ``data``, ``train``, ``eval``, ``preservation``, and the
sweep-only ``early_terminate``, ``resources``, ``racing``, ``confirm``...) is a frozen dataclass.
A field declared with :func:`setting` is a key of the file; its type hint, default, bounds,
allowed values and doc are stated there and nowhere else. Everything else follows from them:

- :func:`read`: parse and validate a section, with one-line errors (``file: key: what is
  allowed``, did-you-mean) through :class:`trials.validation.Section`;
- :func:`dump`: the section as the file writes it (``best.yaml``); ``read(dump(x)) == x``;
- :func:`json_schema`: the section's JSON Schema (``sweeps/sweep.schema.json``);
- :func:`fingerprinted`: the fields a study fingerprint holds. Every setting counts unless its
  declaration says, in ``free=``, why it may change between runs of one study
  (``hpo.study.fingerprint``).

A field whose value is not a key of the file (the prompts' text, read from the prompts file;
what a racing sweep sets on its trials) is declared ``derived=True``: it is fingerprinted like
any other, never read or written.

This module imports only :mod:`trials.validation` (pure data, no torch).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from trials.validation import ConfigError, Section

# read(section, key, default) -> value: a key whose rule is more than a type and bounds.
Reader = Callable[[Section, str, Any], Any]
METADATA = "setting"


@dataclass(frozen=True)
class Setting:
    """How one key of a sweep file is read, written, documented and fingerprinted.

    ``minimum``/``above``/``maximum`` bound numbers (``above``: strictly), ``choices`` strings;
    ``free`` says why the key may change between runs of one study (None: it changes what a
    score means, so it is fingerprinted); ``derived``: not a key of the file; ``reader`` and
    ``writer`` replace the type's own rule (their JSON Schema is ``schema``); ``digest``: the
    fingerprint holds a hash of the value, not the value (the prompts' text); ``key``: the
    key a derived field stands for in the file, for messages (``prompts`` for the prompts'
    text); ``path``: a path key must name a ``"file"`` or a ``"folder"`` (where the path
    exists: whether it must exist is its reader's and the pre-flight's business).
    """

    doc: str
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    free: str | None = None
    derived: bool = False
    reader: Reader | None = None
    writer: Callable[[Any], Any] | None = None
    schema: dict[str, Any] | None = None
    digest: bool = False
    key: str | None = None  # the key in the file, where it is not the field's own
    path: str | None = None  # a Path key: "file" or "folder", what it must name if it exists


def setting(default: Any = MISSING, *, doc: str, factory: Callable[[], Any] | None = None,
            **rules: Any) -> Any:
    """A dataclass field that is a key of the sweep file (see :class:`Setting` for ``rules``).

    ``default`` is the key's one default; leave it out for a required key.
    """
    meta = {METADATA: Setting(doc=doc, **rules)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def setting_of(f: dataclasses.Field[Any]) -> Setting | None:
    return f.metadata.get(METADATA)


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Setting, Any]]:
    """Each field of ``cls`` with its :class:`Setting` and resolved type hint.

    Raises ``TypeError`` for a field declared without :func:`setting` (every field of a section
    must say how it is read and whether it is fingerprinted).
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        s = setting_of(f)
        if s is None:
            raise TypeError(f"{cls.__name__}.{f.name} is declared without setting(): say how "
                            "it is read and whether it is fingerprinted")
        yield f, s, hints[f.name]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Resolving string annotations costs a module lookup per field: once per section type.
    return typing.get_type_hints(cls)


def file_keys(cls: type) -> tuple[str, ...]:
    """The keys a section of type ``cls`` accepts in a file."""
    return tuple(f.name for f, s, _ in declared(cls) if not s.derived)


def _base(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) < len(args)
    return hint, False


def read(cls: type, section: Section, base_dir: Path | None = None,
         elsewhere: dict[str, str] | None = None, also: tuple[str, ...] = (),
         **given: Any) -> Any:
    """Parse ``section`` into a ``cls``: unknown keys, types, bounds and choices are checked
    and reported as :class:`~trials.validation.ConfigError` naming the key.

    ``base_dir`` resolves relative paths (default: the current directory); ``elsewhere`` maps
    keys that belong to another section to their place there (for the did-you-mean hint);
    ``also``: keys of this section that a layer above reads (``preservation.require``);
    ``given`` are values of derived fields (or overrides), used as they are.
    """
    section.allow_only((*file_keys(cls), *also), elsewhere)
    values: dict[str, Any] = {}
    for f, s, hint in declared(cls):
        if f.name in given:
            values[f.name] = given[f.name]
            continue
        if s.derived:
            continue
        value = read_key(section, f.name, s, hint, default_of(f), base_dir or Path.cwd())
        if value is not MISSING:
            values[f.name] = value
    return cls(**values)


def read_key(section: Section, key: str, s: Setting, hint: Any, default: Any,
             base_dir: Path) -> Any:
    """One key by its declared rule (its reader, or its type's)."""
    if key in section.data and section.data[key] is None and default not in (None, MISSING):
        # YAML's null (or a bare `key:`) would silently read as the default: say so instead.
        raise section.error(f"is null; give a value, or leave the key out for its default "
                            f"({_shown(default)})", key)
    if s.reader is not None:
        return s.reader(section, key, default)
    kind, _ = _base(hint)
    # A required key (no default) is read without one: Section says "is required".
    d = () if default is MISSING else (default,)
    if dataclasses.is_dataclass(kind):
        return read(kind, section.sub(key), base_dir) if section.has(key) else default
    if kind is bool:
        return section.boolean(key, *d)
    if kind is int:
        return section.integer(key, *d, minimum=_int(s.minimum), maximum=_int(s.maximum))
    if kind is float:
        return section.number(key, *d, minimum=s.minimum, above=s.above, maximum=s.maximum)
    if kind is str:
        return section.string(key, *d, choices=s.choices)
    if kind is Path:
        if d and not section.has(key):
            return default
        path = resolve_path(section.string(key), base_dir)
        # "not found" or a read error later would hide the mistake: a folder given for a file
        if s.path == "file" and path.is_dir():
            raise section.error(f"{path} is a directory, not a file", key)
        if s.path == "folder" and path.exists() and not path.is_dir():
            raise section.error(f"{path} is a file, not a directory", key)
        return path
    raise TypeError(f"{section.key_path(key)}: type {hint} needs a reader")


def _shown(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return "its defaults"
    text = plain(value)
    return f"{text!r}" if isinstance(text, str) else str(text)


def _int(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def resolve_path(value: str, base_dir: Path) -> Path:
    """Paths in YAML are relative to the current directory, like the reference script's flags."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def plain(value: Any) -> Any:
    """A value as YAML and JSON write it: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def dump(obj: Any) -> dict[str, Any]:
    """The section as a file writes it, keys in declaration order; the inverse of :func:`read`.

    A key whose value is None is left out, so it reads back as its default; that must then be
    None too (else its declaration needs a ``writer``: ``ValueError``). A writer that returns
    None leaves the key out too.
    """
    out: dict[str, Any] = {}
    for f, s, _ in declared(type(obj)):
        if s.derived:
            continue
        value = getattr(obj, f.name)
        if s.writer is not None:
            value = s.writer(value)
            if value is None:  # the writer says: leave the key out
                continue
        if value is None:
            if default_of(f) not in (None, MISSING):
                raise ValueError(f"{type(obj).__name__}.{f.name}: None would read back as "
                                 f"{default_of(f)!r}; declare a writer")
            continue
        out[f.name] = plain(value)
    return out


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string"}


def json_schema(cls: type, title: str | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a section of type ``cls``: its keys, types, bounds,
    allowed values, defaults and docs; no other key is allowed."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for f, s, hint in declared(cls):
        if s.derived:
            continue
        default = default_of(f)
        if default is MISSING:
            required.append(f.name)
        props[f.name] = key_schema(s, hint, default)
    schema: dict[str, Any] = {"type": "object", "properties": props,
                              "additionalProperties": False}
    if title:
        schema["title"] = title
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    if doc:
        schema["description"] = " ".join(doc.split())
    if required:
        schema["required"] = required
    return schema


def key_schema(s: Setting, hint: Any, default: Any) -> dict[str, Any]:
    """One key's JSON Schema from its declaration."""
    kind, optional = _base(hint)
    if s.schema is not None:
        out = dict(s.schema)
    elif dataclasses.is_dataclass(kind):
        out = json_schema(kind)
    elif kind in _JSON_TYPES:
        out = {"type": _JSON_TYPES[kind]}
        if kind is float:
            # PyYAML reads 1e-4 (no dot) as a string; the reader accepts it as a number.
            out = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": _FLOAT_TEXT}]}
        if s.choices:
            out = {"enum": list(s.choices)}
        if s.minimum is not None:
            out["minimum"] = s.minimum
        if s.above is not None:
            out["exclusiveMinimum"] = s.above
        if s.maximum is not None:
            out["maximum"] = s.maximum
    else:
        raise TypeError(f"type {hint} needs a schema")
    if optional or default is None:
        out = {"anyOf": [out, {"type": "null"}]} if "anyOf" not in out else \
            {"anyOf": [*out["anyOf"], {"type": "null"}]}
    out["description"] = s.doc
    if default not in (MISSING, None) and not dataclasses.is_dataclass(default):
        out["default"] = plain(default)
    return out


_FLOAT_TEXT = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


def walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, Setting, Any]]:
    """Every setting below ``obj`` as (key path, setting, value), nested sections flattened
    (``data.synthetic.n_images``); a free setting is yielded without its subkeys."""
    for f, s, hint in declared(type(obj)):
        value = getattr(obj, f.name)
        path = prefix + (s.key or f.name)
        kind, _ = _base(hint)
        if dataclasses.is_dataclass(kind) and s.free is None and value is not None:
            yield from walk(value, path + ".")
        else:
            yield path, s, value


def fingerprinted(obj: Any, prefix: str = "") -> Iterator[tuple[str, Setting, Any]]:
    """The settings below ``obj`` that change what a score means (those without ``free``)."""
    return ((path, s, v) for path, s, v in walk(obj, prefix) if s.free is None)


__all__ = ["ConfigError", "Setting", "declared", "dump", "file_keys", "fingerprinted",
           "json_schema", "plain", "read", "resolve_path", "setting", "walk"]
