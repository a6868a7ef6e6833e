"""Timing a trial's optimizer step and rung image in a few seconds (the CPU cost forecast)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from trials.config import ModelSpec
from trials.eval.score import TINY_CLIP, ClipScorer
from trials.train import probe


def test_not_local_names_what_would_need_a_download_or_a_build(make_trial_config,
                                                                tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-sd").symlink_to(tiny_model_dir)
    config = make_trial_config(cache_dir=cache)
    assert "tiny CLIP" in probe.not_local(config)  # not built in this cache yet
    ClipScorer(TINY_CLIP, None, cache_dir=cache)  # builds it, as a first trial does
    assert probe.not_local(config) is None
    empty = replace(config, cache_dir=tmp_path / "empty")
    assert "tiny model is built by the first trial" in probe.not_local(empty)
    hub = replace(config, model=ModelSpec("sd-legacy/stable-diffusion-v1-5"))
    assert "not a local folder" in probe.not_local(hub)
    clip = replace(config, model=ModelSpec("toyworld"),
                   eval=replace(config.eval, clip_model="ViT-H-14",
                                clip_pretrained="laion2b_s32b_b79k"))
    assert "ViT-H-14/laion2b_s32b_b79k is not a local file" in probe.not_local(clip)
    random_clip = replace(clip, eval=replace(clip.eval, clip_pretrained=None))
    assert probe.not_local(random_clip) is None  # random weights: nothing to fetch


def test_measure_times_a_step_and_an_image_and_leaves_the_process_as_it_was(
        make_trial_config, tmp_path: Path) -> None:
    from transformers.utils import logging as transformers_logging

    config = make_trial_config(output_dir=tmp_path / "trial",
                               train={"gradient_accumulation_steps": 2},
                               eval={"batch_size": 4})
    ClipScorer(TINY_CLIP, None, cache_dir=config.cache_dir)
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    times = probe.measure(config, torch.device("cpu"), threads=1, budget=0.2)
    assert times.seconds_per_step > 0 and times.seconds_per_image > 0
    assert times.steps >= 1 and times.images >= 4 and times.images % 4 == 0
    assert (times.threads, times.device) == (1, "cpu")
    assert times.seconds >= times.seconds_per_step * times.steps
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    assert transformers_logging.is_progress_bar_enabled()
    assert not (tmp_path / "trial").exists()  # wrote nothing of its own


def test_the_timed_step_carries_its_preservation_remedys_twins(make_trial_config,
                                                                 tmp_path: Path) -> None:
    from trials.models.components import load_components

    config = make_trial_config(output_dir=tmp_path / "trial",
                               train={"gradient_accumulation_steps": 2})
    def parts():  # a fresh model each: a step attaches its LoRA
        return load_components(config.model.name, cache_dir=config.cache_dir,
                               device=torch.device("cpu"), weight_dtype=torch.float32)

    plain = probe.TrainStep(parts(), config, torch.device("cpu"), torch.float32).batches()
    assert len(plain) == 2 and not any(b.preservation for b in plain)
    for method in ("dop", "prior"):
        remedied = replace(config, params=replace(config.params, preservation=method,
                                                  preservation_weight=3.0))
        step = probe.TrainStep(parts(), remedied, torch.device("cpu"), torch.float32)
        batches = step.batches()  # each instance micro-batch and its twin, as the loop adds
        assert [b.preservation for b in batches] == [False, True, False, True]
        assert all(b.weight == 3.0 for b in batches[1::2])
        assert batches[1].noisy.shape == batches[0].noisy.shape
        if method == "dop":  # the same noisy latents, the base model's prediction as target
            assert torch.equal(batches[1].noisy, batches[0].noisy)
        step()  # a whole optimizer step with the twins
