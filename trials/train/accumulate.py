"""One optimizer step's gradient: its micro-batches run one after another, or fused as one batch.

The reference script accumulates: ``gradient_accumulation_steps`` forward and backward passes of
``train_batch_size`` samples, each loss divided by the number of micro-batches. The UNet treats
every sample on its own (GroupNorm normalises within a sample; no BatchNorm; LoRA has no
dropout here), so the mean loss over all the step's samples, and its gradient, are the same when
the micro-batches run as ONE batch of ``train_batch_size x gradient_accumulation_steps``
samples, up to float rounding. One big batch uses the hardware better than several small ones.

The random draws do not change either: each micro-batch still draws its latents (from the
cached distribution), its noise and its timesteps in the reference's order, one micro-batch after
the other (:func:`add_noise`); only the UNet's forward and backward are batched. So a trial
trains the same way fused or not.

Fusing needs the micro-batches to have the same shape; micro-batches from buckets of different
shapes are fused per shape (:func:`same_shape_groups`). A fused batch needs
``gradient_accumulation_steps`` times the activation memory; ``fused_accumulation: auto``
(the default) falls back to running the micro-batches one by one when the GPU runs out of
memory, for the rest of the trial, and says so in a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from trials.config import FUSED_MODES, TrainSpec

log = logging.getLogger(__name__)


@dataclass
class NoisedBatch:
    """One micro-batch, ready for the UNet: shapes ``[B, C, h, w]``, ``[B]``, ``[B, L, D]``."""

    noisy: torch.Tensor  # noised latents
    timesteps: torch.Tensor
    text: torch.Tensor  # caption embeddings (encoder hidden states)
    target: torch.Tensor  # epsilon or velocity, like ``noisy``
    # A preservation term (trials.train.preserve) rides along with the instance micro-batches:
    # its loss counts ``weight`` times and is not part of the reported training loss.
    weight: float = 1.0
    preservation: bool = False

    @property
    def size(self) -> int:
        return int(self.noisy.shape[0])

    @property
    def shape_key(self) -> tuple:
        return (tuple(self.noisy.shape[1:]), tuple(self.text.shape[1:]))


def add_noise(latents: torch.Tensor, text: torch.Tensor, scheduler, train: TrainSpec
              ) -> NoisedBatch:
    """Draw the noise (plus optional offset) and timesteps, in the reference script's order."""
    noise = torch.randn_like(latents)
    if train.noise_offset:
        noise += train.noise_offset * torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              device=latents.device).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return NoisedBatch(noisy, timesteps, text, target)


def _snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023), as the reference script computes them."""
    snr = compute_snr(scheduler, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(snr, max=gamma) / snr


def mean_loss(pred: torch.Tensor, batch: NoisedBatch, scheduler, train: TrainSpec
              ) -> torch.Tensor:
    """The reference script's loss of one micro-batch: MSE mean, optionally SNR-weighted."""
    if train.snr_gamma is None:
        return F.mse_loss(pred.float(), batch.target.float(), reduction="mean")
    loss = F.mse_loss(pred.float(), batch.target.float(), reduction="none")
    weights = _snr_weights(scheduler, batch.timesteps, train.snr_gamma)
    return (loss.mean(dim=list(range(1, loss.ndim))) * weights).mean()


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                    scheduler, train: TrainSpec) -> torch.Tensor:
    """Each sample's loss, shape ``[B]``: the terms :func:`mean_loss` averages."""
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    if train.snr_gamma is not None:
        loss = loss * _snr_weights(scheduler, timesteps, train.snr_gamma)
    return loss


def same_shape_groups(batches: list[NoisedBatch]) -> list[list[int]]:
    """Indices of the micro-batches, grouped by shape (first-seen order); each group fuses."""
    groups: dict[tuple, list[int]] = {}
    for i, batch in enumerate(batches):
        groups.setdefault(batch.shape_key, []).append(i)
    return list(groups.values())


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError)


class Accumulator:
    """Runs the forward and backward passes of one optimizer step, fused or sequential.

    ``mode``: ``on`` always fuses (running out of memory ends the trial, as before), ``off``
    never does (the reference's accumulation), ``auto`` fuses until the first out-of-memory
    error, then redoes that step with the same draws one micro-batch at a time and keeps doing
    so for the rest of the trial.
    """

    def __init__(self, unet: torch.nn.Module, scheduler, train: TrainSpec, device: torch.device,
                 dtype: torch.dtype, scale: Callable[[torch.Tensor], torch.Tensor],
                 mode: str = "auto") -> None:
        if mode not in FUSED_MODES:
            raise ValueError(f"fused_accumulation must be one of {', '.join(FUSED_MODES)} "
                             f"(got {mode!r})")
        self.unet, self.scheduler, self.train = unet, scheduler, train
        self.device, self.dtype, self.scale = device, dtype, scale
        self.fused = mode != "off"
        self.mode = mode
        self.fell_back_at: int | None = None  # the step at which ``auto`` stopped fusing
        self.preservation_losses: list[float] = []  # the last step's preservation terms

    @property
    def description(self) -> str:
        """``fused`` or ``sequential``: how the steps run now."""
        return "fused" if self.fused else "sequential"

    def _predict(self, noisy, timesteps, text) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype,
                            enabled=self.dtype != torch.float32):
            return self.unet(noisy, timesteps, text, return_dict=False)[0]

    def backward(self, batches: list[NoisedBatch], step: int,
                 check: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss
                 ) -> list[float]:
        """Accumulate the step's gradient into the LoRA parameters; returns each instance
        micro-batch's loss. ``check(loss)`` sees every micro-batch loss (a scalar tensor) before
        backward and returns the loss to use (fault injection, divergence checks).

        The step's objective is ``sum_i weight_i * loss_i / n`` over every batch, ``n`` the
        number of instance micro-batches (the reference's accumulation when every weight is 1
        and there is no preservation term); the preservation terms' losses are kept in
        :attr:`preservation_losses`."""
        if not self.fused:
            return self._sequential(batches, check)
        try:
            return self._fused(batches, check)
        except Exception as err:
            if self.mode != "auto" or not _is_out_of_memory(err):
                raise
        # Out of memory: drop whatever the failed pass left and redo this step, same draws.
        for p in self.unet.parameters():
            p.grad = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.fused = False
        self.fell_back_at = step
        log.warning("fused accumulation (%d micro-batches as one batch) ran out of memory at "
                    "step %d; this trial accumulates micro-batch by micro-batch from now on",
                    len(batches), step)
        return self._sequential(batches, check)

    def _split(self, batches: list[NoisedBatch], losses: list[float]) -> list[float]:
        """Instance losses to return; preservation losses to :attr:`preservation_losses`."""
        self.preservation_losses = [loss for b, loss in zip(batches, losses, strict=True)
                                    if b.preservation]
        return [loss for b, loss in zip(batches, losses, strict=True) if not b.preservation]

    def _sequential(self, batches: list[NoisedBatch], check) -> list[float]:
        losses = []
        n = max(1, sum(not b.preservation for b in batches))
        for batch in batches:
            pred = self._predict(batch.noisy, batch.timesteps, batch.text)
            loss = check(mean_loss(pred, batch, self.scheduler, self.train))
            losses.append(loss.item())
            self.scale(batch.weight * loss / n).backward()
        return self._split(batches, losses)

    def _fused(self, batches: list[NoisedBatch], check) -> list[float]:
        losses: list[float] = [math.nan] * len(batches)
        n = max(1, sum(not b.preservation for b in batches))
        for group in same_shape_groups(batches):
            parts = [batches[i] for i in group]
            pred = self._predict(torch.cat([b.noisy for b in parts]),
                                 torch.cat([b.timesteps for b in parts]),
                                 torch.cat([b.text for b in parts]))
            per_sample = per_sample_loss(
                pred, torch.cat([b.target for b in parts]),
                torch.cat([b.timesteps for b in parts]), self.scheduler, self.train)
            # Micro-batch i's loss is the mean of its samples' losses; the step's objective is
            # the sum over micro-batches of loss_i / n, as in sequential accumulation.
            total = per_sample.new_zeros(())
            for i, chunk in zip(group, per_sample.split([b.size for b in parts]), strict=True):
                loss = check(chunk.mean())
                losses[i] = loss.item()
                total = total + batches[i].weight * loss / n
            self.scale(total).backward()
        return self._split(batches, losses)
