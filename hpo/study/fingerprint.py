"""The study fingerprint: everything that defines a trial's score, recorded once per study.

A rerun continues a study only with the sweep it was started with. If any setting that changes
what a score means (the model, the training data's contents, the transforms, the fixed training
settings, the eval prompts' contents, seeds, the CLIP model, the metric and its goal, the search
space) differs, the rerun is refused before Ray starts, with one line that names each changed
key: otherwise new trials would be ranked against old ones (and the old baseline) that measured
something else, and Optuna itself fails mid-sweep on a changed categorical space.

A local model folder (a path, or ``toyworld``: the committed pretrained world) and a local CLIP
weights file are fingerprinted by their contents too (``model.contents``, ``eval.clip_contents``:
each file's relative path and size and a hash of its first and last MiB, so a multi-GB folder
costs milliseconds): rebuilding the toy world, or retraining into the same folder, changes what a
score means without changing the sweep file. Hub ids are pinned by ``model.revision`` instead.

Deliberately not fingerprinted, so they may change between runs: the study name and paths of
the data and prompts (their contents are what count), ``method`` (sampler and its seed),
``early_terminate``, ``resources`` and ``eval.batch_size``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from hpo.sweep.spec import Sweep

log = logging.getLogger("hpo")

ATTR = "fingerprint"
VERSION = 1


class FingerprintMismatch(ValueError):
    """The sweep differs from the one the study was run with; the message is one line."""


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


EDGE_BYTES = 2**20  # hashed at each end of every file of a local model folder


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


def _local_model(sweep: Sweep) -> Path | None:
    from trials.toyworld import SD_DIR, TOYWORLD

    if sweep.model.name == TOYWORLD:
        return SD_DIR
    path = Path(sweep.model.name)
    return path if path.is_dir() else None


def _local_clip(sweep: Sweep) -> Path | None:
    from trials.toyworld import CLIP_DIR, TOYWORLD

    if sweep.eval.clip_model == TOYWORLD:
        return CLIP_DIR
    pretrained = sweep.eval.clip_pretrained
    return Path(pretrained) if pretrained and Path(pretrained).is_file() else None


def compute(sweep: Sweep, data_contents: str) -> dict[str, str]:
    """The fingerprint: key path -> the value as JSON, or a content hash.

    ``data_contents`` is ``trials.data.folder.folder_fingerprint`` of the training set (every
    image's bytes and every caption), computed by the pre-flight check that reads the folder.
    """
    d, e = sweep.data, sweep.eval
    fp: dict[str, str] = {"format": str(VERSION)}
    fp["model.name"] = _show(sweep.model.name)
    fp["model.revision"] = _show(sweep.model.revision)
    fp["model.variant"] = _show(sweep.model.variant)
    model_dir = _local_model(sweep)
    if model_dir is not None:
        fp["model.contents"] = local_contents(model_dir)
    fp["data.contents"] = "sha256:" + data_contents[:16]
    for key in ("image_column", "caption_column", "resolution", "center_crop", "random_flip"):
        fp[f"data.{key}"] = _show(getattr(d, key))
    for key, value in asdict(sweep.train).items():
        fp[f"train.{key}"] = _show(value)
    fp["eval.prompts"] = _digest(list(e.prompt_list))  # the prompts themselves, not the path
    for key in ("images_per_prompt", "inference_steps", "guidance_scale", "seed", "clip_model",
                "clip_pretrained", "every_steps"):
        fp[f"eval.{key}"] = _show(getattr(e, key))
    clip = _local_clip(sweep)
    if clip is not None:
        fp["eval.clip_contents"] = local_contents(clip)
    fp["metric.name"] = _show(sweep.metric)
    fp["metric.goal"] = _show(sweep.goal)
    # Held-out images and further objectives, only when used (older fingerprints stay equal).
    if d.holdout:
        fp["data.holdout"] = _show([d.holdout, d.holdout_seed])
    if e.reference_dir is not None or d.holdout:
        fp["eval.dino_model"] = _show(e.dino_model)
    if e.reference_dir is not None:
        fp["eval.reference_dir"] = _show(str(e.reference_dir))
    pres = sweep.preservation
    if pres.measured:  # only when used, so older fingerprints stay equal
        fp["preservation.trigger"] = _show(pres.trigger)
        fp["preservation.control_prompts"] = _digest(list(pres.control_prompt_list))
        fp["preservation.require"] = _show(None if sweep.require is None
                                           else sweep.require.as_dict())
    if pres.measured or pres.method != "none":
        for key in ("method", "weight", "class_images", "class_inference_steps"):
            fp[f"preservation.{key}"] = _show(getattr(pres, key))
    if sweep.multi_objective:
        fp["metric.objectives"] = _show([[o.name, o.goal] for o in sweep.objectives])
    for p in sorted(sweep.parameters, key=lambda p: p.name):
        fp[f"parameters.{p.name}"] = _show(
            {"kind": p.kind, "value": p.value, "values": list(p.values), "min": p.low,
             "max": p.high, "q": p.q})
    return fp


def changed_keys(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Keys whose value differs, or that only one side has, in a stable order."""
    keys = list(current) + [k for k in recorded if k not in current]
    return [k for k in keys if recorded.get(k) != current.get(k)]


def check_or_record(study: optuna.Study, current: dict[str, str]) -> None:
    """Record the fingerprint in a new study; refuse a study recorded with another one.

    Raises :class:`FingerprintMismatch` naming every changed key. A study made before
    fingerprints existed gets one now (with a warning: earlier changes cannot be seen).
    """
    recorded = study.user_attrs.get(ATTR)
    goal = json.loads(current["metric.goal"])
    # The first objective's direction (Study.direction raises on a multi-objective study);
    # the others are in the fingerprint's metric.objectives.
    direction = study.directions[0].name.lower()
    if recorded is None:
        if direction != goal:  # Optuna keeps the study's direction whatever the sweep says
            raise mismatch(study.study_name, ["metric.goal"])
        if study.trials:
            log.warning("warning: study %s has no recorded fingerprint (made by an older "
                        "version); recording the current sweep's", study.study_name)
        study.set_user_attr(ATTR, current)
        return
    changed = changed_keys(recorded, current)
    if changed:
        raise mismatch(study.study_name, changed)


def check_existing(study: optuna.Study | None, current: dict[str, str]) -> None:
    """Only compare (the dry run writes nothing); a missing study or fingerprint passes."""
    if study is None or ATTR not in study.user_attrs:
        return
    changed = changed_keys(study.user_attrs[ATTR], current)
    if changed:
        raise mismatch(study.study_name, changed)


def mismatch(name: str, changed: list[str]) -> FingerprintMismatch:
    return FingerprintMismatch(
        f"study {name!r} was run with a different sweep: changed {', '.join(changed)}. These "
        f"define what a score means, so new trials would not be comparable with its old ones; "
        f"start a new study with --study NEW_NAME (or undo the change). Free to change on a "
        f"rerun: method, early_terminate, resources, eval.batch_size, file paths")
