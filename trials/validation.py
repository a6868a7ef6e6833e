"""Typed reading of YAML mappings with one-line errors that name the file and key path.

Both the trial config (``trials.config``) and the sweep file (``hpo.sweep.spec``) are read through
:class:`Section`, so every mistake reads the same way::

    sweeps/x.yaml: parameters.learning_rate.min: must be > 0 (got -0.0001)
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from trials.errors import TrialError

_MISSING: Any = object()
# Words YAML 1.1 (PyYAML) reads as booleans when they are not quoted.
_YAML_BOOLS = frozenset({"yes", "no", "true", "false", "on", "off"})


class ConfigError(TrialError, ValueError):
    """A mistake in a config or sweep file, as one line: ``file: key.path: what is allowed``.

    A :class:`~trials.errors.TrialError` every trial would share, and a ``ValueError``."""

    every_trial = True

    def __init__(self, file: str | Path, path: str, message: str) -> None:
        self.file = str(file)
        self.path = path
        self.key = path or None
        self.message = message
        where = f"{self.file}: {path}: " if path else f"{self.file}: "
        super().__init__(where + message)

    def __reduce__(self) -> tuple[Any, ...]:
        # A Ray task's error is pickled; the default would call __init__ with the message only.
        return (type(self), (self.file, self.path, self.message))


def describe(value: Any) -> str:
    """Show a value the way a user wrote it, for ``(got ...)`` parts of messages."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return str(value)


def best_match(word: str, options: Iterable[str]) -> str | None:
    """The option ``word`` most likely misspells, or None.

    An option that starts with the word once case, ``_`` and ``-`` are ignored wins
    (``loguniform`` -> ``log_uniform_values``), then the closest by ``difflib``.
    """
    options = list(options)

    def squash(text: str) -> str:
        return re.sub(r"[-_\s]", "", text.lower())

    if len(squash(word)) >= 3:
        prefixed = [o for o in options if squash(o).startswith(squash(word))]
        if prefixed:
            return min(prefixed, key=len)
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return match[0] if match else None


def closest(word: str, options: Iterable[str]) -> str:
    """A ``did you mean`` suffix for a misspelled key or name, or an empty string."""
    match = best_match(word, options)
    return f" (did you mean {match!r}?)" if match else ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override keys
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: construct_mapping reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping with a safe loader (never full load).

    The loader is ``yaml.SafeLoader`` plus one check: a key given twice is an error.
    """
    file = Path(path)
    if file.is_dir():
        raise ConfigError(file, "", "is a directory, not a file")
    if not file.is_file():
        raise ConfigError(file, "", "file not found")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(file, "", f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(file, "", f"{where}invalid YAML ({problem})") from err
    if not isinstance(data, dict):
        raise ConfigError(file, "", f"must be a YAML mapping of sections (got {describe(data)})")
    return data


class Section:
    """One mapping inside a YAML file, remembered with its file and key path for errors."""

    def __init__(self, file: str | Path, path: str, data: Any) -> None:
        self.file = str(file)
        self.path = path
        if data is None:
            # Written but empty (`train:` with every line under it commented out, or `null`):
            # taking every default silently would run something the file does not say.
            raise self.error("is empty (null); give its settings, write {} to take every "
                             "default, or leave the key out")
        if not isinstance(data, Mapping):
            raise self.error(f"must be a mapping (got {describe(data)})")
        self.data: Mapping[str, Any] = data

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, message: str, key: str | None = None) -> ConfigError:
        """An error at this section, or at one of its keys."""
        return ConfigError(self.file, self.key_path(key) if key else self.path, message)

    def allow_only(
        self, allowed: Iterable[str], elsewhere: Mapping[str, str] | None = None
    ) -> None:
        """Reject keys that are not in ``allowed``, suggesting the closest one.

        ``elsewhere`` maps keys that belong in another place to their full path there
        (``learning_rate`` -> ``parameters.learning_rate``), for keys put in the wrong section.
        """
        allowed = list(allowed)
        for key in self.data:
            if key not in allowed:
                hint = closest(str(key), allowed)
                moved = best_match(str(key), elsewhere) if elsewhere and not hint else None
                if moved is not None and elsewhere is not None:
                    hint = f" (did you mean {elsewhere[moved]}?)"
                hint = hint or f" (allowed: {', '.join(allowed)})"
                raise self.error(f"unknown key{hint}", str(key))

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                raise self.error("is required", key)
            return default
        return self.data[key]

    def sub(self, key: str) -> Section:
        """The nested mapping at ``key`` (an empty one when absent; an error when null)."""
        return Section(self.file, self.key_path(key), self.data.get(key, {}))

    def string(
        self, key: str, default: Any = _MISSING, choices: Iterable[str] | None = None
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        choices = list(choices) if choices is not None else None
        if isinstance(value, bool) and choices and any(c in _YAML_BOOLS for c in choices):
            # YAML 1.1 reads a bare no/yes/off/on as a boolean.
            raise self.error(
                f"must be one of {', '.join(choices)} (got {describe(value)}; "
                f"quote words like \"no\", since YAML reads a bare no as false)", key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"must be a non-empty string (got {describe(value)})", key)
        if choices is not None and value not in choices:
            hint = closest(value, choices)
            raise self.error(f"must be one of {', '.join(choices)} (got {value!r}){hint}", key)
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(f"must be true or false (got {describe(value)})", key)
        return value

    def integer(
        self, key: str, default: Any = _MISSING, minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING and value is None:
            return value
        return check_int(value, self.error, key, minimum, maximum)

    def number(
        self, key: str, default: Any = _MISSING, minimum: float | None = None,
        above: float | None = None, maximum: float | None = None,
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING and value is None:
            return value
        return check_number(value, self.error, key, minimum, above, maximum)


def check_int(value: Any, error: Any, key: str, minimum: int | None, maximum: int | None) -> int:
    """An integer in range; ``error(message, key)`` builds the exception."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise error(f"must be an integer (got {describe(value)})", key)
    if minimum is not None and value < minimum:
        raise error(f"must be >= {minimum} (got {value})", key)
    if maximum is not None and value > maximum:
        raise error(f"must be <= {maximum} (got {value})", key)
    return value


def check_number(
    value: Any, error: Any, key: str, minimum: float | None = None, above: float | None = None,
    maximum: float | None = None,
) -> float:
    """A finite number in range; YAML's ``1e-4`` (read as a string by PyYAML) is accepted."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise error(f"must be a number (got {describe(value)})", key) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"must be a number (got {describe(value)})", key)
    value = float(value)
    if not math.isfinite(value):
        raise error(f"must be a finite number (got {value})", key)
    if minimum is not None and value < minimum:
        raise error(f"must be >= {minimum:g} (got {value:g})", key)
    if above is not None and value <= above:
        raise error(f"must be > {above:g} (got {value:g})", key)
    if maximum is not None and value > maximum:
        raise error(f"must be <= {maximum:g} (got {value:g})", key)
    return value
