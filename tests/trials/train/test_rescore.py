"""Rescoring a saved LoRA on other seeds (trials.train.rescore), the confirmation's scoring."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from trials.train.loop import run_trial
from trials.train.rescore import rescore


def test_rescoring_on_the_rung_seed_repeats_the_rung_score_and_fresh_seeds_differ(
        make_trial_config, tmp_path: Path) -> None:
    config = make_trial_config(max_train_steps=3, learning_rate=5e-2, output_dir=tmp_path / "t")
    rungs: list[dict] = []
    run_trial(config, lambda step, metrics, ckpt: rungs.append(metrics) and False)
    lora = tmp_path / "t" / "step-000003"
    again_cfg = replace(config, output_dir=tmp_path / "again")
    # The same seed: the LoRA loaded from disk draws the rung's images again.
    same = rescore(again_cfg, lora, seed=config.eval.seed)
    assert same["clip_score"] == pytest.approx(rungs[-1].clip_score, abs=1e-4)
    assert same["per_prompt"] == pytest.approx(rungs[-1].per_prompt, abs=1e-4)
    # Fresh seeds and more images: another estimate of the same LoRA.
    fresh = rescore(replace(config, output_dir=tmp_path / "fresh"), lora, seed=99,
                    images_per_prompt=3)
    assert fresh["seed"] == 99 and fresh["images_per_prompt"] == 3
    assert fresh["n_images"] == 3 * len(config.eval.prompt_list)
    assert fresh["clip_score"] != pytest.approx(same["clip_score"], abs=1e-6)
    assert (tmp_path / "fresh" / "samples.png").is_file()
    # The base model on the same fresh seeds differs from the LoRA (the LoRA was loaded).
    base = rescore(replace(config, output_dir=tmp_path / "base"), None, seed=99,
                   images_per_prompt=3)
    assert base["per_prompt"] != pytest.approx(fresh["per_prompt"], abs=1e-6)


def test_a_missing_lora_file_is_named(make_trial_config, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        rescore(make_trial_config(), tmp_path / "nothing", seed=1)
