"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic car dataset (8 PNGs of 64x64 under images/, metadata.jsonl, seed 0).

    Session-scoped and shared: tests must not modify it (copy it with shutil.copytree first).
    """
    from trials.data.synthetic import make_car_dataset

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
    from trials.models.components import TINY_MODEL, resolve_model_path

    return Path(resolve_model_path(TINY_MODEL, tmp_path_factory.mktemp("model_cache")))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A ``trials.eval.score.ClipScorer`` for the tiny random-weight open_clip model (offline)."""
    from trials.eval.score import TINY_CLIP, ClipScorer

    return ClipScorer(TINY_CLIP, None, cache_dir=tmp_path_factory.mktemp("clip_cache"))


@pytest.fixture(scope="session")
def tiny_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A held-out prompts file for the synthetic cars (3 prompts)."""
    from trials.data.synthetic import make_heldout_prompts

    path = tmp_path_factory.mktemp("prompts") / "heldout.txt"
    path.write_text("\n".join(make_heldout_prompts(3)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def make_trial_config(tiny_model_dir: Path, synthetic_dataset: Path, tiny_prompts: Path,
                      tmp_path: Path):
    """Build a ``TrialConfig`` for the tiny model on the synthetic cars; keywords override.

    Keywords name HyperParams fields (rank, learning_rate, ...), or ``train``/``eval``/``data``
    dicts of field overrides, or ``extras``/``output_dir``/``cache_dir``/``preservation``.
    """
    from dataclasses import replace

    from trials.config import (
        DataSpec,
        EvalSpec,
        ModelSpec,
        PreservationSpec,
        TrainSpec,
        TrialConfig,
        read_prompts,
    )
    from trials.parameters import HyperParams

    def build(**kw) -> TrialConfig:
        params = {"rank": 4, "lora_alpha": 4.0, "learning_rate": 1e-3, "max_train_steps": 6,
                  "target_modules": "attn", "adapter": "lora", "preservation": None,
                  "preservation_weight": None}
        params.update({k: kw.pop(k) for k in list(kw) if k in params})
        return TrialConfig(
            model=ModelSpec("tiny"),
            data=replace(DataSpec(train_dir=kw.pop("train_dir", synthetic_dataset),
                                  resolution=32, center_crop=True, random_flip=True),
                         **kw.pop("data", {})),
            train=replace(TrainSpec(train_batch_size=2, seed=7), **kw.pop("train", {})),
            eval=replace(EvalSpec(prompts=tiny_prompts,
                                  prompt_list=read_prompts(tiny_prompts, "test", "prompts"),
                                  images_per_prompt=2, inference_steps=3, guidance_scale=5.0,
                                  clip_model="tiny", clip_pretrained=None, every_steps=3),
                         **kw.pop("eval", {})),
            params=HyperParams(**params),
            output_dir=kw.pop("output_dir", tmp_path / "trial"),
            cache_dir=kw.pop("cache_dir", tiny_model_dir.parent),
            extras=kw.pop("extras", {}),
            preservation=kw.pop("preservation", PreservationSpec()),
        )

    return build


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray for the whole session (2 CPUs, like this machine); yields its address.

    In-process sweeps reuse it; sweep drivers started as subprocesses join it by address.
    """
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
