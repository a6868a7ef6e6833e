"""Writing sweep files for tests: the shipped tiny sweep, changed at dotted key paths."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
DELETE = object()


# The shipped tiny sweep's preservation (a trigger every prompt must name, a searched remedy).
PRESERVATION_KEYS = ("preservation", "parameters.preservation", "parameters.preservation_weight")


def tiny_doc(preservation: bool = False) -> dict[str, Any]:
    """``sweeps/tiny.yaml`` as a dict; without its ``preservation`` section and parameters
    unless ``preservation`` (tests write their own prompts, and preservation doubles a rung's
    images; tests/hpo/test_preservation_sweep.py and tests/trials/test_trigger.py use it)."""
    doc = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text(encoding="utf-8"))
    return doc if preservation else apply(doc, dict.fromkeys(PRESERVATION_KEYS, DELETE))


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


# A tiny sweep that runs in seconds a trial: few images, few steps, aggressive ASHA.
FAST = {
    "name": "e2e",
    "data.synthetic.n_images": 6,
    "eval.images_per_prompt": 1,
    "eval.inference_steps": 2,
    "eval.every_steps": 4,
    "parameters.max_train_steps": {"values": [8, 12]},
    "parameters.learning_rate": {"distribution": "log_uniform_values", "min": 1e-4,
                                 "max": 1e-2},
    "early_terminate.grace_steps": 4,
    "early_terminate.reduction_factor": 3,
    "confirm.top_k": 2,
    "confirm.images_per_prompt": 1,
}


# End-to-end sweeps score this many of the demo's 48 held-out prompts: evaluation is most of
# a trial, and these tests check the plumbing, not the statistics.
TEST_PROMPTS = 10


def short_prompts(folder: Path, n: int = TEST_PROMPTS) -> Path:
    """The first ``n`` prompts of ``sweeps/prompts/tiny_heldout.txt`` in ``folder/prompts.txt``."""
    lines = [ln for ln in (REPO / "sweeps/prompts/tiny_heldout.txt").read_text(
        encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.txt"
    path.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    return path


def write_sweep(folder: Path, **changes: Any) -> Path:
    """Write a FAST tiny sweep to ``folder/sweep.yaml`` (data generated in ``folder/data``)."""
    doc = apply(tiny_doc(), {**FAST, "data.train_dir": str(folder / "data"),
                             "eval.prompts": str(short_prompts(folder))})
    apply(doc, changes)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def trials_so_far(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or none while the driver has not created it yet."""
    if not (out / name / "optuna.db").exists():
        return []
    try:
        return optuna.load_study(
            study_name=name, storage=f"sqlite:///{out / name / 'optuna.db'}").trials
    except KeyError:  # the database exists, the study not yet
        return []


def wait_for_trials(out: Path, name: str,
                    ready: Callable[[list[optuna.trial.FrozenTrial]], bool],
                    timeout: float = 300) -> bool:
    """Poll a running sweep's study until ``ready(trials)``; False when ``timeout`` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready(trials_so_far(out, name)):
            return True
        time.sleep(0.5)
    return False
