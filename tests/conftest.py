"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic car dataset (8 PNGs of 64x64 under images/, metadata.jsonl, seed 0).

    Session-scoped and shared: tests must not modify it (copy it with shutil.copytree first).
    """
    from trials.synthetic import make_car_dataset

    return make_car_dataset(tmp_path_factory.mktemp("synthetic_cars"), n_images=8, size=64, seed=0)


# Nothing here may reach a model hub: force huggingface_hub offline before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the deterministic tiny SD model (diffusers layout), built once per session.

    Pass its parent as ``cache_dir`` with ``model="tiny"`` to reuse it, or the folder itself as
    a local model path. Shared: tests must not modify it.
    """
    from trials.models import TINY_MODEL, resolve_model_path

    return Path(resolve_model_path(TINY_MODEL, tmp_path_factory.mktemp("model_cache")))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A ``trials.score.ClipScorer`` for the tiny random-weight open_clip model (offline)."""
    from trials.score import TINY_CLIP, ClipScorer

    return ClipScorer(TINY_CLIP, None, cache_dir=tmp_path_factory.mktemp("clip_cache"))
