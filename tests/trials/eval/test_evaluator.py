"""The rung evaluator's racing path: prompts drawn in chunks in the shared order, the callback
asked after each chunk, partial rungs, and prompt subsets (tiny model, tiny CLIP)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trials.config import PreservationSpec
from trials.data.folder import load_examples
from trials.eval.evaluator import Evaluator, prompt_order
from trials.models.components import load_components
from trials.trigger import remove_trigger

CPU = torch.device("cpu")
PROMPTS = tuple(f"a Hyundai {colour} car, side view" for colour in
                ("red", "blue", "green", "yellow", "black", "white", "orange"))


@pytest.fixture
def evaluator(make_trial_config, tiny_model_dir: Path, tmp_path: Path):
    def build(**eval_fields) -> Evaluator:
        config = make_trial_config(cache_dir=tmp_path / "cache")
        config = replace(config, eval=replace(config.eval, prompt_list=PROMPTS, **eval_fields),
                         preservation=PreservationSpec(
                             trigger="Hyundai", brand_prompt_list=PROMPTS,
                             control_prompt_list=tuple(remove_trigger(p, "Hyundai")
                                                       for p in PROMPTS)))
        components = load_components("tiny", cache_dir=tiny_model_dir.parent)
        examples = load_examples(config.data.train_dir, config.data.caption_column)
        ev = Evaluator(config, components, examples, CPU, torch.float32)
        ev.set_base_control(ev.control_features())
        return ev
    return build


def test_prompt_order_is_a_fixed_shuffle() -> None:
    order = prompt_order(48, 1234)
    assert sorted(order) == list(range(48)) and order != list(range(48))
    assert prompt_order(48, 1234) == order  # every trial, every process
    assert prompt_order(48, 1235) != order


def test_a_rung_drawn_in_chunks_scores_what_a_whole_rung_does(evaluator, tmp_path) -> None:
    whole = evaluator().score(tmp_path / "whole")
    asked: list[list[int]] = []

    def race(places: list[int], scores: list[float]) -> None:
        asked.append(list(places))
        assert len(scores) == len(places)

    chunked = evaluator(chunk_prompts=3).score(tmp_path / "chunked", step=6, race=race)
    assert "prompt_indices" not in chunked and "raced" not in chunked
    # same images (each seed follows the prompt's place), so the same scores, in held-out order
    assert chunked["per_prompt"] == pytest.approx(whole["per_prompt"], abs=1e-3)
    assert chunked["clip_score"] == pytest.approx(whole["clip_score"], abs=1e-3)
    assert chunked["clip_i"] == pytest.approx(whole["clip_i"], abs=1e-3)
    assert chunked["control_per_prompt"] == pytest.approx(whole["control_per_prompt"], abs=1e-3)
    assert chunked["leak"] == pytest.approx(whole["leak"], abs=1e-3)
    # asked after each chunk but the last, with the prompts drawn so far in the shared order
    order = prompt_order(len(PROMPTS), 1234)
    assert asked == [order[:3], order[:6]]


def test_a_raced_rung_stops_drawing_and_says_what_it_scored(evaluator, tmp_path) -> None:
    whole = evaluator().score(tmp_path / "whole")
    calls = []

    def race(places, scores):
        calls.append(len(places))
        return {"p_value": 0.001, "reference_trial": 3}

    out = evaluator(chunk_prompts=2).score(tmp_path / "raced", step=6, race=race)
    order = prompt_order(len(PROMPTS), 1234)
    assert calls == [2]
    assert out["raced"] == {"p_value": 0.001, "reference_trial": 3, "prompts_scored": 2,
                            "prompts_total": len(PROMPTS)}
    assert out["prompt_indices"] == sorted(order[:2]) and out["n_images"] == 4
    assert out["images_drawn"] == 4 and whole["images_drawn"] == 2 * len(PROMPTS) * 2
    assert out["per_prompt"] == pytest.approx([whole["per_prompt"][i]
                                               for i in sorted(order[:2])], abs=1e-3)
    assert "control_per_prompt" not in out  # a raced rung draws no control images


def test_an_asha_only_rung_screens_its_prompt_subset_without_control_images(
        evaluator, tmp_path) -> None:
    whole = evaluator().score(tmp_path / "whole")
    ev = evaluator(subset_rungs=(3,), subset_prompts=4)
    out = ev.score(tmp_path / "subset", step=3)
    places = sorted(prompt_order(len(PROMPTS), 1234)[:4])
    assert out["prompt_indices"] == places and "raced" not in out
    # a screening rung feeds ASHA alone: brand prompts only, 2 images each, no control images
    assert out["screening"] is True and out["images_drawn"] == 4 * 2
    assert "control_per_prompt" not in out and "drift" not in out
    assert out["per_prompt"] == pytest.approx([whole["per_prompt"][i] for i in places],
                                              abs=1e-3)
    # without a prompt budget it screens on every brand prompt, still without control images
    every = evaluator(subset_rungs=(3,)).score(tmp_path / "every", step=3)
    assert every["screening"] is True and "prompt_indices" not in every
    assert every["images_drawn"] == len(PROMPTS) * 2 and "control_per_prompt" not in every
    assert every["per_prompt"] == pytest.approx(whole["per_prompt"], abs=1e-3)
    # any other rung scores all of them, control prompts included
    other = ev.score(tmp_path / "full", step=6)
    assert "prompt_indices" not in other and "screening" not in other
    assert other["control_per_prompt"] == pytest.approx(whole["control_per_prompt"], abs=1e-3)
