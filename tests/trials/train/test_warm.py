"""Frozen parts kept between trials in one process: same results as loading afresh."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trials.data.folder import DataError
from trials.models.lora import WEIGHTS_NAME
from trials.train import warm
from trials.train.loop import TrialDiverged, run_trial


def scores_and_weights(config) -> tuple[list[float], dict[str, torch.Tensor]]:
    steps: list[tuple[float, Path]] = []

    def report(step: int, metrics: dict, checkpoint: Path) -> bool:
        steps.append((metrics.clip_score, checkpoint))
        return False

    run_trial(config, report)
    return [s for s, _ in steps], load_file(steps[-1][1] / WEIGHTS_NAME)


def assert_same(a, b) -> None:
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        assert torch.equal(a[1][key], b[1][key]), key


@pytest.fixture
def count_loads(monkeypatch) -> list[str]:
    loads: list[str] = []
    real = warm.load_components

    def counting(model, **kw):
        loads.append(model)
        return real(model, **kw)

    monkeypatch.setattr(warm, "load_components", counting)
    warm.forget()
    yield loads
    warm.forget()


def test_the_second_trial_reuses_the_model_and_trains_the_same_lora(
        make_trial_config, tmp_path, count_loads) -> None:
    cold = scores_and_weights(make_trial_config(output_dir=tmp_path / "cold"))
    kept = scores_and_weights(make_trial_config(output_dir=tmp_path / "kept"))
    assert count_loads == ["tiny"]
    assert_same(cold, kept)


def test_a_trial_after_other_adapters_and_a_failure_matches_a_cold_start(
        make_trial_config, tmp_path, count_loads) -> None:
    wanted = make_trial_config(output_dir=tmp_path / "want", rank=2, target_modules="cross_attn")
    cold = scores_and_weights(wanted)
    # Other adapters, gradient checkpointing and v-prediction, then a diverged trial ...
    scores_and_weights(make_trial_config(output_dir=tmp_path / "x", rank=8,
                                         target_modules="attn_ff",
                                         train={"gradient_checkpointing": True,
                                                "prediction_type": "v_prediction"}))
    with pytest.raises(TrialDiverged):
        run_trial(make_trial_config(output_dir=tmp_path / "nan",
                                    extras={"fault": {"kind": "nan", "step": 2}}),
                  lambda *a: False)
    unet = next(iter(warm._components.values())).unet
    assert not any("lora" in name for name, _ in unet.named_modules())
    assert not unet.is_gradient_checkpointing and not unet.training
    assert not any(p.requires_grad for p in unet.parameters())
    # ... leave nothing behind: the same trial again gives the cold result.
    assert_same(cold, scores_and_weights(
        make_trial_config(output_dir=tmp_path / "again", rank=2, target_modules="cross_attn")))
    assert count_loads == ["tiny"]


def test_another_model_replaces_the_kept_one(make_trial_config, tmp_path, count_loads,
                                             tiny_model_dir) -> None:
    scores_and_weights(make_trial_config(output_dir=tmp_path / "a"))
    config = make_trial_config(output_dir=tmp_path / "b")
    from dataclasses import replace

    from trials.config import ModelSpec
    scores_and_weights(replace(config, model=ModelSpec(str(tiny_model_dir))))
    assert count_loads == ["tiny", str(tiny_model_dir)] and len(warm._components) == 1


def test_the_training_folder_is_decoded_again_only_when_a_file_changes(
        make_trial_config, synthetic_dataset, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "data"
    shutil.copytree(synthetic_dataset, folder)
    config = make_trial_config(train_dir=folder)
    decoded: list[Path] = []
    real = warm.load_examples
    monkeypatch.setattr(warm, "load_examples", lambda d, c: decoded.append(d) or real(d, c))
    warm.forget()
    first = warm.kept_examples(config)
    assert warm.kept_examples(config) is first and len(decoded) == 1
    # An edited caption is seen ...
    meta = folder / "metadata.jsonl"
    meta.write_text(meta.read_text().replace('"text": "', '"text": "edited: ', 1))
    edited = warm.kept_examples(config)
    assert len(decoded) == 2 and edited[0].captions[0].startswith("edited: ")
    # ... and so is an image broken after the first trial.
    image = folder / first[1].file_name
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(DataError, match=first[1].file_name):
        warm.kept_examples(config)
    warm.forget()


def test_a_model_that_cannot_be_restored_is_dropped_not_lent_again(
        make_trial_config, tmp_path, count_loads, monkeypatch) -> None:
    def broken(unet) -> None:
        raise RuntimeError("cannot take the LoRA off")

    restore = warm.restore_unet
    monkeypatch.setattr(warm, "restore_unet", broken)
    scores_and_weights(make_trial_config(output_dir=tmp_path / "a"))  # the trial still ends well
    assert not warm._components
    monkeypatch.setattr(warm, "restore_unet", restore)
    scores_and_weights(make_trial_config(output_dir=tmp_path / "b"))
    assert count_loads == ["tiny", "tiny"]
