"""Caption dropout: how often the empty caption replaces a caption, and in a real trial."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from trials.data.captions import drop_captions
from trials.data.folder import load_examples
from trials.models.components import load_components
from trials.train import cache
from trials.train.loop import batch_inputs


def test_dropout_rate_is_the_probability_and_zero_draws_nothing() -> None:
    text = torch.ones(4000, 3, 2)
    empty = torch.zeros(3, 2)
    dropped = drop_captions(text, empty, 0.2, random.Random(0))
    rate = (dropped.sum(dim=(1, 2)) == 0).float().mean().item()
    assert abs(rate - 0.2) < 0.02  # 4000 draws: standard error 0.006
    assert torch.equal(text, torch.ones(4000, 3, 2))  # the input is not changed
    rng = random.Random(5)
    assert drop_captions(text, empty, 0.0, rng) is text
    assert rng.random() == random.Random(5).random()  # p = 0 consumes no random numbers


def test_batches_train_on_the_empty_caption(make_trial_config, tmp_path: Path) -> None:
    config = make_trial_config(train={"caption_dropout": 1.0})
    components = load_components("tiny", cache_dir=config.cache_dir)
    examples = load_examples(config.data.train_dir)
    data = cache.load_or_build(examples, config.model, config.data, components,
                               tmp_path / "cache", torch.device("cpu"), torch.float32)
    empty = cache.encode_texts([""], components.tokenizer, components.text_encoder, "cpu")[0]
    torch.testing.assert_close(data.empty_text, empty)
    _, text = batch_inputs([0, 1], data, config, components, random.Random(0), "cpu",
                           torch.float32)
    assert torch.equal(text, empty.expand_as(text))
    plain = make_trial_config()
    _, text = batch_inputs([0, 1], data, plain, components, random.Random(0), "cpu",
                           torch.float32)
    assert not torch.equal(text[0], empty)
