"""Resuming a trial from its last rung: what a rung checkpoint holds, written atomically.

At every rung :func:`trials.train.loop.fine_tune` saves, beside the LoRA in the rung's folder
(``step-NNNNNN/``), the subfolder ``resume/`` with everything the loop needs to go on as if it
had never stopped:

- ``tensors.pt`` (``torch.save`` of tensors and plain containers, loaded ``weights_only``): the
  LoRA parameters as they train (fp32, by parameter name), the optimizer's, LR scheduler's and
  grad scaler's state, and torch's RNG states (CPU, and each CUDA device's);
- ``state.json``: the step, Python's and numpy's global RNG states and the trial's own
  ``random.Random`` (captions, flips, crops), the batch order (the epoch being drawn and the
  position in it), how accumulation runs (fused, or fallen back to micro-batches at a step), the
  running totals (train, eval and setup seconds) and every rung reported so far
  (:meth:`trials.report.RungReport.to_dict`), and what identifies the trial (its parameters and
  seed), written last.

Preservation keeps no state of its own between steps: prior preservation's class images and
differential output preservation's trigger-less captions are read again from the shared cache
(the same bytes), and their draws come from the RNG states above.

The state is captured after the rung's images are scored, so the scoring's own use of the RNGs
is part of it. It is written into a hidden temporary folder, then renamed into place
(``os.replace``): a process killed mid-write leaves only the temporary folder, which
:func:`load` never reads; a folder named ``resume`` is complete. :func:`latest` picks the
newest complete checkpoint among a trial's rung folders.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trials.config import RESUME_DIR, TrialConfig
from trials.data.order import BatchOrder
from trials.report import RungReport
from trials.train import accumulate

log = logging.getLogger(__name__)

STATE_DIR = RESUME_DIR
TENSORS = "tensors.pt"
STATE = "state.json"
FORMAT = 1


class ResumeError(ValueError):
    """A checkpoint that cannot continue this trial (another trial's, or another format)."""


@dataclass
class TrainState:
    """What :func:`save` writes and :func:`load` returns; see the module docstring.

    ``tensors`` maps ``lora``, ``optimizer``, ``lr_scheduler``, ``scaler`` and ``torch_rng``
    to their state; ``state`` holds the JSON-able rest.
    """

    step: int
    tensors: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def identity(config: TrialConfig) -> dict[str, Any]:
    """What must match for a checkpoint to continue a trial: its parameters and its seed."""
    return json.loads(json.dumps({"params": asdict(config.params), "seed": config.train.seed},
                                 default=str))


def rng_states(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, JSON) parts of every RNG a step draws from: torch's (CPU, CUDA), numpy's and
    Python's global generators and the trial's own ``rng``."""
    tensors: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return tensors, {"python": _listed(random.getstate()), "trial": _listed(rng.getstate()),
                     "numpy": np_state}


def set_rng_states(tensors: dict[str, Any], states: dict[str, Any], rng: random.Random) -> None:
    """Put back what :func:`rng_states` captured."""
    torch.set_rng_state(tensors["cpu"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    np_state = dict(states["numpy"])
    np_state["state"] = {**np_state["state"],
                         "key": np.asarray(np_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(np_state)
    random.setstate(_tupled(states["python"]))
    rng.setstate(_tupled(states["trial"]))


def _listed(state: tuple) -> list:
    """``random.getstate()`` as JSON: ``(version, (625 ints), gauss)`` -> nested lists."""
    return [state[0], list(state[1]), state[2]]


def _tupled(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def save(folder: Path, train_state: TrainState,
         mid_write: Callable[[], None] = lambda: None) -> Path:
    """Write ``train_state`` to ``folder/resume/`` atomically; returns that path.

    ``mid_write`` is called between the two files (fault injection: a process killed there
    leaves a torn checkpoint, which must never be read). A ``resume/`` already there (a rung
    written again by a retried attempt) is replaced.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / STATE_DIR
    tmp = folder / f".{STATE_DIR}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(train_state.tensors, tmp / TENSORS)
    mid_write()
    doc = {"format": FORMAT, "step": train_state.step, **train_state.state}
    (tmp / STATE).write_text(json.dumps(doc), encoding="utf-8")
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _fsync_tree(folder: Path) -> None:
    """Flush the files' bytes before the rename publishes them (a lost machine, not only a
    killed process, then never leaves a complete-looking folder of empty files)."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def step_of(folder: Path) -> int | None:
    """The step of the complete checkpoint in ``folder`` (a rung folder), or None when it holds
    none (no ``resume/``, or one that cannot be read)."""
    try:
        doc = json.loads((Path(folder) / STATE_DIR / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if doc.get("format") != FORMAT or not (Path(folder) / STATE_DIR / TENSORS).is_file():
        return None
    return int(doc["step"])


def latest(path: Path) -> Path | None:
    """The newest complete checkpoint at ``path``: ``path`` itself when it is a rung folder
    with one, else the rung folder under it (``step-*``) with the highest complete step; None
    when there is none."""
    path = Path(path)
    if step_of(path) is not None:
        return path
    found = [(step, child) for child in path.glob("step-*")
             if child.is_dir() and (step := step_of(child)) is not None]
    return max(found)[1] if found else None


def rungs_at(path: Path) -> list[dict[str, Any]]:
    """The rungs (``RungReport.to_dict`` form, oldest first) the newest complete checkpoint at
    ``path`` holds; empty without one."""
    found = latest(Path(path))
    if found is None:
        return []
    doc = json.loads((found / STATE_DIR / STATE).read_text(encoding="utf-8"))
    return list(doc.get("rungs", []))


def load(folder: Path, expected: dict[str, Any]) -> TrainState:
    """Read the complete checkpoint in rung folder ``folder``.

    ``expected`` is :func:`identity` of the trial that resumes; raises :class:`ResumeError`
    when the checkpoint is another trial's, or when ``folder`` holds no complete checkpoint.
    """
    folder = Path(folder)
    step = step_of(folder)
    if step is None:
        raise ResumeError(f"{folder} holds no complete checkpoint to resume from")
    doc = json.loads((folder / STATE_DIR / STATE).read_text(encoding="utf-8"))
    if doc.get("identity") != expected:
        raise ResumeError(f"the checkpoint in {folder} is another trial's: it was written by "
                          f"{doc.get('identity')}, this trial is {expected}")
    tensors = torch.load(folder / STATE_DIR / TENSORS, map_location="cpu", weights_only=True)
    return TrainState(step=step, tensors=tensors, state=doc)


def find(config: TrialConfig, resume_from: Path | None) -> TrainState | None:
    """The newest complete checkpoint at ``resume_from`` (a rung folder or a folder of them),
    read; None when ``resume_from`` is None or holds none (with a warning). Raises
    :class:`ResumeError` for another trial's checkpoint."""
    if resume_from is None:
        return None
    found = latest(Path(resume_from))
    if found is None:
        log.warning("warning: no complete checkpoint in %s; the trial starts from step 0",
                    resume_from)
        return None
    return load(found, identity(config))


@dataclass
class Trainer:
    """What changes from step to step in :func:`trials.train.loop.fine_tune`, gathered to be
    saved at a rung (:meth:`save`) and put back (:meth:`restore`)."""

    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler
    batches: BatchOrder
    accumulator: accumulate.Accumulator
    rng: random.Random

    def lora(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.unet.named_parameters() if p.requires_grad}

    def save(self, folder: Path, step: int, config: TrialConfig, rungs: list[RungReport],
             mid_write: Callable[[], None], **totals: float) -> None:
        """Write the state after the rung at ``step`` (``rungs``: every rung so far, this one
        included; ``totals``: the running seconds) into ``folder`` (see :func:`save`)."""
        rng_tensors, rng_json = rng_states(self.rng)
        tensors = {
            "lora": {n: p.detach().cpu().clone() for n, p in self.lora().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_tensors,
        }
        state = {"identity": identity(config), "rng": rng_json,
                 "batches": self.batches.state(), "totals": totals,
                 "accumulation": {"fused": self.accumulator.fused,
                                  "fell_back_at": self.accumulator.fell_back_at},
                 "rungs": [r.to_dict() for r in rungs]}
        save(folder, TrainState(step, tensors, state), mid_write)

    def restore(self, saved: TrainState) -> dict[str, float]:
        """Put ``saved`` back, the RNGs last; returns its running totals (seconds). Raises
        :class:`ResumeError` when the checkpoint's LoRA has other modules."""
        lora, weights = self.lora(), saved.tensors["lora"]
        if set(lora) != set(weights):
            raise ResumeError(f"the checkpoint's LoRA has other modules: "
                              f"{sorted(set(lora) ^ set(weights))[:3]}")
        with torch.no_grad():
            for name, param in lora.items():
                param.copy_(weights[name])
        self.optimizer.load_state_dict(saved.tensors["optimizer"])
        self.lr_scheduler.load_state_dict(saved.tensors["lr_scheduler"])
        self.scaler.load_state_dict(saved.tensors["scaler"])
        self.batches.restore(saved.state["batches"])
        self.accumulator.fused = saved.state["accumulation"]["fused"]
        self.accumulator.fell_back_at = saved.state["accumulation"]["fell_back_at"]
        set_rng_states(saved.tensors["rng"], saved.state["rng"], self.rng)
        return saved.state["totals"]
