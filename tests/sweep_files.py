"""Writing sweep files for tests: the shipped tiny sweep, changed at dotted key paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DELETE = object()


def tiny_doc() -> dict[str, Any]:
    """``sweeps/tiny.yaml`` as a dict."""
    return yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text(encoding="utf-8"))


def apply(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Set (or delete, with DELETE) values at dotted key paths."""
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return doc
