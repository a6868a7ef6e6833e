"""Fused accumulation gives the gradients of the reference's micro-batch accumulation."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from trials.config import TrainSpec
from trials.models.components import load_components
from trials.models.lora import attach_lora
from trials.parameters import HyperParams
from trials.train.accumulate import Accumulator, NoisedBatch, add_noise, same_shape_groups

PARAMS = HyperParams(rank=4, lora_alpha=4.0, learning_rate=1e-3, max_train_steps=1,
                     target_modules="attn")


@pytest.fixture(scope="module")
def lora_unet(tiny_model_dir: Path):
    components = load_components("tiny", cache_dir=tiny_model_dir.parent)
    trainable = attach_lora(components.unet, PARAMS)
    torch.manual_seed(0)
    with torch.no_grad():  # gaussian init leaves B at zero; give the adapter an effect
        for p in trainable:
            p.add_(torch.randn_like(p) * 0.1)
    components.unet.train()
    return components.unet, trainable


def _micro_batches(scheduler, train: TrainSpec, sizes: list[tuple[int, int]]
                   ) -> list[NoisedBatch]:
    """One micro-batch of 2 samples per ``(h, w)`` latent size, drawn from seed 5."""
    torch.manual_seed(5)
    return [add_noise(torch.randn(2, 4, h, w), torch.randn(2, 77, 32), scheduler, train)
            for h, w in sizes]


def _gradients(unet, trainable, batches, train: TrainSpec, mode: str
               ) -> tuple[list[float], list[torch.Tensor]]:
    for p in trainable:
        p.grad = None
    acc = Accumulator(unet, DDPMScheduler(num_train_timesteps=1000), train,
                      torch.device("cpu"), torch.float32, lambda loss: loss, mode)
    losses = acc.backward(batches, step=1)
    return losses, [p.grad.clone() for p in trainable]


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
@pytest.mark.parametrize("sizes", [[(16, 16)] * 4, [(16, 16), (8, 16), (16, 16), (8, 16)]],
                         ids=["one-shape", "two-buckets"])
def test_fused_gradients_match_sequential_accumulation(lora_unet, snr_gamma, sizes) -> None:
    unet, trainable = lora_unet
    train = TrainSpec(snr_gamma=snr_gamma, gradient_accumulation_steps=len(sizes))
    batches = _micro_batches(DDPMScheduler(num_train_timesteps=1000), train, sizes)
    seq_losses, seq_grads = _gradients(unet, trainable, batches, train, "off")
    fused_losses, fused_grads = _gradients(unet, trainable, batches, train, "on")
    assert fused_losses == pytest.approx(seq_losses, rel=1e-5)
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in seq_grads]))
    assert total > 0
    for seq, fused in zip(seq_grads, fused_grads, strict=True):
        torch.testing.assert_close(fused, seq, rtol=1e-4, atol=1e-6 * float(total))


def test_only_same_shaped_micro_batches_fuse() -> None:
    train = TrainSpec()
    batches = _micro_batches(DDPMScheduler(num_train_timesteps=1000), train,
                             [(16, 16), (8, 16), (16, 16), (8, 8)])
    assert same_shape_groups(batches) == [[0, 2], [1], [3]]


def test_auto_falls_back_to_sequential_on_out_of_memory(lora_unet, caplog, monkeypatch) -> None:
    unet, trainable = lora_unet
    train = TrainSpec(gradient_accumulation_steps=2)
    batches = _micro_batches(DDPMScheduler(num_train_timesteps=1000), train, [(16, 16)] * 2)
    _, expected = _gradients(unet, trainable, batches, train, "off")

    def out_of_memory(self, batches, check):
        for p in trainable:  # a pass that dies half-way leaves partial gradients behind
            p.grad = torch.ones_like(p)
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(Accumulator, "_fused", out_of_memory)
    for p in trainable:
        p.grad = None
    acc = Accumulator(unet, DDPMScheduler(num_train_timesteps=1000), train, torch.device("cpu"),
                      torch.float32, lambda loss: loss, "auto")
    with caplog.at_level(logging.WARNING, logger="trials.train.accumulate"):
        acc.backward(batches, step=7)
    assert acc.description == "sequential" and acc.fell_back_at == 7
    assert "ran out of memory at step 7" in caplog.text
    for p, grad in zip(trainable, expected, strict=True):
        torch.testing.assert_close(p.grad, grad)

    forced = Accumulator(unet, DDPMScheduler(num_train_timesteps=1000), train,
                         torch.device("cpu"), torch.float32, lambda loss: loss, "on")
    with pytest.raises(torch.OutOfMemoryError):
        forced.backward(batches, step=1)


def test_a_trial_trains_the_same_lora_fused_or_not(make_trial_config, tmp_path) -> None:
    from safetensors.torch import load_file

    from trials.train.loop import run_trial

    loras = {}
    for mode in ("off", "on"):
        config = make_trial_config(
            max_train_steps=3, output_dir=tmp_path / mode,
            train={"gradient_accumulation_steps": 3, "fused_accumulation": mode})
        result = run_trial(config, lambda *a: None)
        assert result.rungs[-1].accumulation == ("fused" if mode == "on" else "sequential")
        loras[mode] = load_file(str(tmp_path / mode / "step-000003" /
                                    "pytorch_lora_weights.safetensors"))
        losses = result.rungs[-1].train_loss
        loras[mode + "-loss"] = losses
    assert loras["on-loss"] == pytest.approx(loras["off-loss"], rel=1e-4)
    # AdamW divides by sqrt(v): an element whose gradient is ~0 can turn a rounding difference
    # into a visible one, so the bound is far below one update (lr 1e-3), not at float epsilon.
    for key, value in loras["off"].items():
        torch.testing.assert_close(loras["on"][key], value, rtol=1e-3, atol=1e-5)


def test_fused_accumulation_reads_booleans_and_names(tmp_path) -> None:
    from trials.config import read_train
    from trials.validation import ConfigError, Section

    def parse(value):
        return read_train(Section(tmp_path / "s.yaml", "train",
                                   {"fused_accumulation": value})).fused_accumulation

    assert (parse(True), parse(False), parse("auto"), parse("off")) == ("on", "off", "auto",
                                                                          "off")
    assert read_train(Section("s.yaml", "train", {})).fused_accumulation == "auto"
    with pytest.raises(ConfigError, match=r"train\.fused_accumulation"):
        parse("sometimes")
    assert replace(TrainSpec(), fused_accumulation="on").fused_accumulation == "on"
