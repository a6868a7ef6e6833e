"""The held-out split (trials.data.holdout): deterministic, disjoint from training, stable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trials.data.folder import load_examples
from trials.data.holdout import reference_examples, split, training_examples
from trials.train import warm


def test_the_held_out_split_never_overlaps_the_training_images(synthetic_dataset) -> None:
    examples = load_examples(synthetic_dataset)
    for seed in range(5):
        train, held = split(examples, 3, seed)
        assert len(held) == 3 and len(train) == len(examples) - 3
        assert not {e.path for e in train} & {e.path for e in held}
        assert {e.path for e in train} | {e.path for e in held} == {e.path for e in examples}
    # Deterministic: the same seed gives the same split, another seed another one.
    assert [e.file_name for e in split(examples, 3, 0)[1]] == \
        [e.file_name for e in split(list(reversed(examples)), 3, 0)[1]][::-1]
    assert {e.file_name for e in split(examples, 3, 0)[1]} != \
        {e.file_name for e in split(examples, 3, 1)[1]} or len(examples) <= 3


def test_adding_images_never_moves_an_image_into_training(synthetic_dataset) -> None:
    examples = load_examples(synthetic_dataset)
    held_small = {e.file_name for e in split(examples[:6], 2, 0)[1]}
    held_all = {e.file_name for e in split(examples, 2, 0)[1]}
    # an image held out of the larger folder is held out of any subset containing it
    assert {n for n in held_all if n in {e.file_name for e in examples[:6]}} <= held_small


def test_holding_out_everything_is_refused(synthetic_dataset) -> None:
    examples = load_examples(synthetic_dataset)
    with pytest.raises(ValueError, match=r"data\.holdout: 8 held-out image"):
        split(examples, len(examples))


def test_trials_train_without_the_held_out_images(make_trial_config, synthetic_dataset,
                                                  tmp_path: Path) -> None:
    config = make_trial_config(data={"holdout": 2, "holdout_seed": 3})
    everything = load_examples(synthetic_dataset)
    held = {e.path for e in reference_examples(config)}
    assert len(held) == 2
    warm.forget()
    kept = warm.kept_examples(config)
    assert len(kept) == len(everything) - 2 and not held & {e.path for e in kept}
    assert training_examples(config, everything) == kept
    # A reference folder adds its images to the held-out references.
    refs = tmp_path / "refs"
    shutil.copytree(synthetic_dataset, refs)
    lines = (refs / "metadata.jsonl").read_text().splitlines()[:3]
    (refs / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with_refs = make_trial_config(data={"holdout": 2}, eval={"reference_dir": refs})
    assert len(reference_examples(with_refs)) == 2 + 3
    assert json.loads(lines[0])["file_name"] in {e.file_name for e in
                                                 reference_examples(with_refs)}
    warm.forget()
