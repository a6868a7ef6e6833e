"""Fixtures shared by the hpo tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import hpo.dispatch.tune
from hpo.run import main
from tests.sweep_files import REPO, apply, tiny_doc


class RayStarted(Exception):
    """Raised instead of starting Ray: reaching it means every check passed."""


@pytest.fixture
def offline_sweep(tmp_path: Path, synthetic_dataset: Path, tiny_model_dir: Path,
          monkeypatch: pytest.MonkeyPatch):
    """A valid tiny sweep with its own data and prompts; ``write``, ``run`` (Ray refused)."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RayStarted

    monkeypatch.setattr(hpo.dispatch.tune, "start_ray", refuse)
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text((REPO / "sweeps/prompts/tiny_heldout.txt").read_text(), encoding="utf-8")

    def write(**changes: Any) -> Path:
        doc = apply(tiny_doc(), {"data.train_dir": str(data), "eval.prompts": str(prompts),
                                 "data.synthetic": None})
        apply(doc, changes)
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    def run(*extra: str, sweep: Path | None = None, out: Path | None = None) -> int:
        out = out or tmp_path / "runs"
        cache = out / "cache"
        if not (cache / "tiny-sd").exists():  # reuse the session's tiny model
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "tiny-sd").symlink_to(tiny_model_dir)
        return main(["--sweep", str(sweep or write()), "--trials", "2", "--out", str(out),
                     *extra])

    return SimpleNamespace(write=write, run=run, data=data, prompts=prompts, out=tmp_path / "runs")
