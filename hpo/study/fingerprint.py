"""The study fingerprint: everything that defines a trial's score, recorded once per study.

A rerun continues a study only with the sweep it was started with. If any setting that changes
what a score means differs, the rerun is refused before Ray starts, with one line that names
each changed key: otherwise new trials would be ranked against old ones (and the old baseline)
that measured something else, and Optuna itself fails mid-sweep on a changed categorical space.

The fingerprint is derived from the sweep file's definition, not listed here: every setting of
every section (:mod:`trials.settings`) is in it unless its declaration says, in ``free=``, why
it may change between runs (the study name, ``method``, ``early_terminate``, ``resources``,
``racing``, ``select``, ``confirm``, ``eval.batch_size``, and paths whose contents count). So a
key added to the sweep file is fingerprinted from the day it exists;
``tests/hpo/study/test_fingerprint.py`` walks the definition and changes each key in turn.

Besides the settings, what the paths point at (:mod:`hpo.study.contents`): ``data.contents``
(every image's bytes and caption), ``model.contents`` and ``eval.clip_contents`` (local weights).

Studies recorded with format 1 (a hand-kept key list, :mod:`hpo.study.fingerprint_v1`) are
compared as they were recorded and then given the current fingerprint.
"""

from __future__ import annotations

import logging

import optuna

from hpo.study.contents import digest, local_clip, local_contents, local_model, show
from hpo.study.fingerprint_v1 import compute_v1
from hpo.sweep.spec import Parameter, Sweep
from trials.api import settings

log = logging.getLogger("hpo")

ATTR = "fingerprint"
VERSION = 2


class FingerprintMismatch(ValueError):
    """The sweep differs from the one the study was run with; the message is one line."""


def _parameter(p: Parameter) -> str:
    return show({"kind": p.kind, "value": p.value, "values": list(p.values), "min": p.low,
                 "max": p.high, "q": p.q})


def compute(sweep: Sweep, data_contents: str) -> dict[str, str]:
    """The fingerprint: key path -> the value as JSON, or a content hash.

    ``data_contents`` is ``trials.data.folder.folder_fingerprint`` of the training set (every
    image's bytes and every caption), computed by the pre-flight check that reads the folder.
    """
    fp: dict[str, str] = {"format": str(VERSION)}
    for path, s, value in settings.fingerprinted(sweep):
        if path == "parameters":  # one key per parameter, so a change names the parameter
            for p in sorted(value, key=lambda p: p.name):
                fp[f"parameters.{p.name}"] = _parameter(p)
        elif path == "metric":  # metric.goal (one objective), metric[1].name (several)
            for i, objective in enumerate(value):
                where = path if len(value) == 1 else f"{path}[{i}]"
                for key, item in settings.dump(objective).items():
                    fp[f"{where}.{key}"] = show(item)
        elif s.digest:
            fp[path] = digest(settings.plain(value))
        else:
            fp[path] = show(settings.plain(value))
    fp["data.contents"] = "sha256:" + data_contents[:16]
    model_dir = local_model(sweep)
    if model_dir is not None:
        fp["model.contents"] = local_contents(model_dir)
    clip = local_clip(sweep)
    if clip is not None:
        fp["eval.clip_contents"] = local_contents(clip)
    return fp


def changed_keys(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Keys whose value differs, or that only one side has, in a stable order."""
    keys = list(current) + [k for k in recorded if k not in current]
    return [k for k in keys if recorded.get(k) != current.get(k)]


def _differences(recorded: dict[str, str], sweep: Sweep, data_contents: str,
                 current: dict[str, str]) -> list[str]:
    """The changed keys, comparing a format-1 study with what format 1 recorded."""
    if recorded.get("format") == "1":
        return changed_keys(recorded, compute_v1(sweep, data_contents))
    return changed_keys(recorded, current)


def check_or_record(study: optuna.Study, sweep: Sweep, data_contents: str) -> None:
    """Record the fingerprint in a new study; refuse a study recorded with another one.

    Raises :class:`FingerprintMismatch` naming every changed key. A study made before
    fingerprints existed gets one now (with a warning: earlier changes cannot be seen); a
    format-1 study that matches what it recorded gets the current format.
    """
    current = compute(sweep, data_contents)
    recorded = study.user_attrs.get(ATTR)
    goal = sweep.goal
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
    changed = _differences(recorded, sweep, data_contents, current)
    if changed:
        raise mismatch(study.study_name, changed)
    if recorded != current:  # format 1, matching: record what format 2 checks from now on
        log.info("study %s: fingerprint recorded in format %d (was %s)", study.study_name,
                 VERSION, recorded.get("format"))
        study.set_user_attr(ATTR, current)


def check_existing(study: optuna.Study | None, sweep: Sweep, data_contents: str) -> None:
    """Only compare (the dry run writes nothing); a missing study or fingerprint passes."""
    if study is None or ATTR not in study.user_attrs:
        return
    changed = _differences(study.user_attrs[ATTR], sweep, data_contents,
                           compute(sweep, data_contents))
    if changed:
        raise mismatch(study.study_name, changed)


def mismatch(name: str, changed: list[str]) -> FingerprintMismatch:
    return FingerprintMismatch(
        f"study {name!r} was run with a different sweep: changed {', '.join(changed)}. These "
        f"define what a score means, so new trials would not be comparable with its old ones; "
        f"start a new study with --study NEW_NAME (or undo the change). Free to change on a "
        f"rerun: {', '.join(FREE_SUMMARY)}")


# What the mismatch line names as free to change (each setting's declaration says why).
FREE_SUMMARY = ("method", "early_terminate", "resources", "racing", "select", "confirm",
                "eval.batch_size", "eval.rungs", "file paths (their contents count)")
