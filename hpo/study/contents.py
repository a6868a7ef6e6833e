"""What the study fingerprint holds for values that are files: content hashes, and JSON.

A local model folder (a path, or ``toyworld``: the committed pretrained world) and a local CLIP
weights file are fingerprinted by their contents (each file's relative path and size and a hash
of its first and last MiB, so a multi-GB folder costs milliseconds): rebuilding the toy world, or
retraining into the same folder, changes what a score means without changing the sweep file.
Hub ids are pinned by ``model.revision`` instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hpo.sweep.spec import Sweep
from trials.api import TOYWORLD, TOYWORLD_CLIP_DIR, TOYWORLD_SD_DIR

EDGE_BYTES = 2**20  # hashed at each end of every file of a local model folder


def digest(value: Any) -> str:
    """A short hash of a JSON-able value (the prompts' text)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def show(value: Any) -> str:
    """A value as the fingerprint records it: JSON with sorted keys."""
    return json.dumps(value, sort_keys=True, default=str)


def local_contents(path: Path) -> str:
    """A content hash of a local file or folder: every file's relative path, size, and its
    first and last ``EDGE_BYTES`` (retrained weights change there; a full hash of SD v1.5's
    folder would take tens of seconds at every start)."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(EDGE_BYTES))
            if size > 2 * EDGE_BYTES:
                fh.seek(size - EDGE_BYTES)
                h.update(fh.read(EDGE_BYTES))
    return "sha256:" + h.hexdigest()[:16]


def local_model(sweep: Sweep) -> Path | None:
    """The local folder ``model.name`` names, or None for a hub id."""
    if sweep.model.name == TOYWORLD:
        return TOYWORLD_SD_DIR
    path = Path(sweep.model.name)
    return path if path.is_dir() else None


def local_clip(sweep: Sweep) -> Path | None:
    """The local CLIP weights ``eval.clip_model``/``clip_pretrained`` name, or None."""
    if sweep.eval.clip_model == TOYWORLD:
        return TOYWORLD_CLIP_DIR
    pretrained = sweep.eval.clip_pretrained
    return Path(pretrained) if pretrained and Path(pretrained).is_file() else None
