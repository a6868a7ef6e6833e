"""One trial: fine-tune a LoRA on the UNet, scoring it at every evaluation rung.

Read :func:`run_trial` top to bottom: it is the reference script's training loop
(``train_text_to_image_lora.py``) with four changes that make a sweep cheaper and fairer:

1. the frozen VAE and text-encoder work is read from a cache shared by all trials;
2. gradient clipping clips (the reference passes a consumed iterator, so it never does);
3. at each rung the in-memory pipeline draws the same seeded images for every trial and they
   are CLIP-scored against held-out prompts, then ``report`` decides whether to go on (in a
   racing sweep ``race`` may stop the drawing itself, part-way through a rung);
4. the micro-batches of one optimizer step run as one batch where memory allows (the same
   draws and gradients; see :mod:`trials.train.accumulate`).

Run one trial by hand with ``python -m trials.train FILE.yaml`` (see :mod:`trials.train.cli`).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_scheduler

from trials.config import TrialConfig, rung_steps
from trials.data import buckets
from trials.data.captions import drop_captions
from trials.data.folder import Example, load_examples, load_rgb, preprocess
from trials.data.holdout import training_examples
from trials.data.order import BatchOrder, shuffled_epoch
from trials.errors import TrialDiverged, TrialOutOfMemory
from trials.eval import evaluator as evaluation
from trials.models.components import SDComponents, load_components
from trials.models.lora import attach_lora, save_lora
from trials.report import EVAL_SECONDS, RungReport
from trials.train import accumulate, cache, faults, preserve, resume, warm

# report(step, rung, checkpoint_dir) -> True to stop the trial (early stopping).
Report = Callable[[int, RungReport, Path], bool | None]
# race(step, prompt_indices, per_prompt_scores) -> a decision to stop drawing, or None: asked
# after each chunk of a rung's prompts (trials.eval.evaluator.Race, with the rung's step).
RungRace = Callable[[int, list[int], list[float]], Mapping[str, object] | None]


@contextmanager
def explain_out_of_memory(config: TrialConfig) -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        raise TrialOutOfMemory(config) from err


@dataclass
class TrialResult:
    """What a finished (or early-stopped) trial leaves behind."""

    rungs: list[RungReport] = field(default_factory=list)  # a resumed trial's earlier ones too
    stopped_early: bool = False
    raced: RungReport | None = None  # the rung where racing stopped it: not in ``rungs``
    resumed_from_step: int | None = None  # the checkpoint's step, when it resumed from one

    @property
    def best(self) -> RungReport | None:
        """The best rung that may be the result (:attr:`RungReport.may_be_result`: a prompt
        subset is not comparable, a screening rung's step is not one to export)."""
        return max((r for r in self.rungs if r.may_be_result),
                   key=lambda r: r.clip_score, default=None)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def weight_dtype_for(mixed_precision: str, device: torch.device) -> torch.dtype:
    """Frozen weights in fp16/bf16 on a GPU; always fp32 on a CPU (half is slow and lossy)."""
    if device.type != "cuda":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def precision_name(dtype: torch.dtype) -> str:
    """The ``mixed_precision`` value that describes what ran: fp16, bf16 or no (fp32)."""
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")


def peak_memory_mb(device: torch.device) -> float:
    """On a GPU, the trial's peak allocation; on a CPU, the process's peak resident memory.

    The CPU figure cannot be reset, so a worker process that runs several trials reports the
    largest of them.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batch_sampler(n_examples: int, batch_size: int, rng: random.Random) -> BatchOrder:
    """Endless shuffled epochs of example indices, like a DataLoader with shuffle=True."""
    return BatchOrder(functools.partial(shuffled_epoch, n_examples, batch_size, rng))


def batch_inputs(indices, data: cache.EncodedData, config: TrialConfig, components, rng,
                 device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (scaled) and caption embeddings for one micro-batch."""
    latents, text, _ = micro_batch(indices, data, config, components, rng, device, dtype)
    return latents, text


def micro_batch(indices, data: cache.EncodedData, config: TrialConfig, components, rng,
                device, dtype) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """:func:`batch_inputs` plus the caption rows drawn (``data.text_embeds`` rows), which
    differential output preservation needs for the same captions without the trigger."""
    flips = [config.data.random_flip and rng.random() < 0.5 for _ in indices]
    rows = [rng.choice(data.caption_rows[i]) for i in indices]
    text = data.text_embeds[rows]
    if config.caption_dropout:  # no draw otherwise: the default keeps its random stream
        text = drop_captions(text, data.empty_text, config.caption_dropout, rng)
    text = text.to(device, dtype)
    if data.buckets is not None:  # aspect-ratio buckets: the batch is from one bucket
        latents = buckets.batch_latents(data.buckets, indices, flips, data.examples,
                                        config.data, components.vae, rng, device, dtype)
    elif data.latent_mean is not None:
        index = (torch.tensor(indices), torch.tensor(flips, dtype=torch.long))
        mean, std = data.latent_mean[index], data.latent_std[index]
        # Same as latent_dist.sample(): a fresh draw every step, from the cached distribution.
        latents = mean + std * torch.randn(mean.shape)
        latents = latents.to(device, dtype)
    else:  # random crop: encode this step's crop, as the reference does
        pixels = torch.stack([
            preprocess(load_rgb(data.examples[i].path), config.data.resolution,
                       center_crop=False, flip=f, rng=rng,
                       interpolation=config.data.image_interpolation_mode)
            for i, f in zip(indices, flips, strict=True)
        ]).to(device, dtype)
        with torch.no_grad():
            latents = components.vae.encode(pixels).latent_dist.sample()
    return latents * components.vae.config.scaling_factor, text, rows


def diffusion_loss(unet, scheduler, latents, text, config: TrialConfig) -> torch.Tensor:
    """The reference script's loss: MSE to noise (or velocity), optional SNR weighting."""
    batch = accumulate.add_noise(latents, text, scheduler, config.train)
    pred = unet(batch.noisy, batch.timesteps, batch.text, return_dict=False)[0]
    return accumulate.mean_loss(pred, batch, scheduler, config.train)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """Clip the LoRA gradients to ``max_norm``; returns the norm before clipping."""
    if max_norm is None:
        grads = [p.grad.norm() for p in params if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def make_optimizer(trainable: list[torch.nn.Parameter], learning_rate: float
                   ) -> torch.optim.AdamW:
    """AdamW with the reference script's settings, as one fused update of all LoRA tensors.

    A LoRA is many small tensors; the default per-tensor update took about a tenth of a
    tiny-model step on a CPU (2.5 ms of 28 ms; fused: 0.4 ms).
    """
    return torch.optim.AdamW(trainable, lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-2,
                             eps=1e-8, fused=True)


def encode_training_set(config: TrialConfig, components: SDComponents, examples: list[Example],
                        device: torch.device, dtype: torch.dtype) -> cache.EncodedData:
    """The training set's latents and text embeddings, from the cache all trials share."""
    return cache.load_or_build(examples, config.model, config.data, components,
                               config.cache_dir, device, dtype)


def load_frozen(config: TrialConfig, device: torch.device, dtype: torch.dtype
                ) -> tuple[SDComponents, cache.EncodedData]:
    """The frozen model, and the training set's latents and text embeddings (from the cache)."""
    components = load_components(
        config.model.name, revision=config.model.revision, variant=config.model.variant,
        cache_dir=config.cache_dir, device=device, weight_dtype=dtype)
    examples = training_examples(
        config, load_examples(config.data.train_dir, config.data.caption_column))
    return components, encode_training_set(config, components, examples, device, dtype)


def run_trial(config: TrialConfig, report: Report, race: RungRace | None = None,
              resume_from: Path | None = None) -> TrialResult:
    """Train one LoRA, scoring and reporting at each rung; stops when ``report`` says so, or
    when ``race`` stops a rung's drawing (that rung is reported with ``raced``, then the trial
    ends).

    ``resume_from``: a rung folder, or a folder of them (``step-*``), whose newest complete
    checkpoint (:mod:`trials.train.resume`) the trial goes on from, exactly as if it had not
    stopped; its rungs are not reported again. None, or no complete checkpoint there (with a
    warning): from the start. Raises :class:`~trials.train.resume.ResumeError` for another
    trial's checkpoint.

    The frozen model is loaded once per process and lent to each trial (see
    :mod:`trials.train.warm`).
    """
    device = pick_device()
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    if precision_name(dtype) != config.train.mixed_precision:
        logging.getLogger(__name__).warning(
            "warning: mixed_precision %s was asked for, but on %s the trial runs %s; the "
            "results record the precision that ran", config.train.mixed_precision, device.type,
            "fp32" if dtype == torch.float32 else precision_name(dtype))
    setup_start = time.perf_counter()
    with warm.kept_components(config, device, dtype) as components:
        return fine_tune(config, components, report, device, dtype, setup_start, race,
                         resume_from)


def fine_tune(config: TrialConfig, components: SDComponents, report: Report,
              device: torch.device, dtype: torch.dtype, setup_start: float,
              race: RungRace | None = None, resume_from: Path | None = None) -> TrialResult:
    """The training loop of :func:`run_trial`, on a frozen model already loaded."""
    train_cfg, params = config.train, config.params
    fault = faults.FaultPlan.from_extras(config.extras, mark_dir=Path(config.output_dir))
    saved = resume.find(config, resume_from)

    # 1. The (cached) frozen work on the training set, and the evaluator for the rungs.
    examples = warm.kept_examples(config)
    data = encode_training_set(config, components, examples, device, dtype)
    if train_cfg.prediction_type:
        components.noise_scheduler.register_to_config(prediction_type=train_cfg.prediction_type)
    evaluator = evaluation.Evaluator(
        config, components, examples, device, dtype, scorer=warm.kept_scorer(config, device),
        train_embeds=warm.kept_reference_embeddings(config, device, examples),
        prompt_embeddings=warm.kept_prompt_embeddings(config, device, dtype))
    # The base model's own work for preservation, while the UNet is still the base model: its
    # control images (drift and leak at each rung), prior preservation's class images, and
    # differential output preservation's trigger-less captions (see trials.train.preserve).
    evaluator.set_base_control(preserve.base_control(config, evaluator, device, dtype))
    method, weight = config.preservation_method, config.preservation_weight
    class_set = preserve.class_data(config, examples, evaluator, components, device, dtype) \
        if method == "prior" else None
    control_text = preserve.control_text(config, examples, components, device) \
        if method == "dop" else None

    # 2. Attach the LoRA adapter; only its weights train. Seeded here, after loading, so a
    #    trial draws the same numbers whether its process loaded the model or kept it.
    torch.manual_seed(train_cfg.seed)
    rng = random.Random(train_cfg.seed)
    unet = components.unet
    trainable = attach_lora(unet, params)
    if train_cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = make_optimizer(trainable, params.learning_rate)
    lr_scheduler = get_scheduler(train_cfg.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=train_cfg.lr_warmup_steps,
                                 num_training_steps=params.max_train_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    batches = (BatchOrder(functools.partial(buckets.epoch_batches, data.buckets.plan,
                                            train_cfg.train_batch_size, rng))
               if data.buckets is not None
               else make_batch_sampler(len(examples), train_cfg.train_batch_size, rng))
    rungs = rung_steps(config.eval.every_steps, params.max_train_steps, config.eval.rungs)

    # Fused: the step's micro-batches run through the UNet as one batch (see accumulate).
    accumulator = accumulate.Accumulator(unet, components.noise_scheduler, train_cfg, device,
                                         dtype, scaler.scale, train_cfg.fused_accumulation)
    trainer = resume.Trainer(unet, optimizer, lr_scheduler, scaler, batches, accumulator, rng)

    # 3. The loop: one optimizer step = gradient_accumulation_steps micro-batches.
    result = TrialResult()
    train_seconds, eval_seconds, first = 0.0, 0.0, 1
    if saved is not None:  # go on after the checkpoint's rung, its totals and RNGs restored
        totals = trainer.restore(saved)
        train_seconds, eval_seconds = totals["train_seconds"], totals["eval_seconds"]
        setup_start -= totals["setup_seconds"]  # every attempt's setup counts
        result.rungs = [RungReport.from_dict(r) for r in saved.state["rungs"]]
        result.resumed_from_step, first = saved.step, saved.step + 1
        logging.getLogger(__name__).info("resumed from step %d of %d", saved.step,
                                         params.max_train_steps)
    setup_seconds = time.perf_counter() - setup_start
    losses: list[float] = []
    preservation_losses: list[float] = []
    unet.train()
    with explain_out_of_memory(config):
        for step in range(first, params.max_train_steps + 1):
            started = time.perf_counter()
            micro_batches = []
            for _ in range(train_cfg.gradient_accumulation_steps):
                latents, text, rows = micro_batch(next(batches), data, config, components, rng,
                                                  device, dtype)
                batch = accumulate.add_noise(latents, text, components.noise_scheduler,
                                             train_cfg)
                micro_batches.append(batch)
                if control_text is not None:  # dop: same noisy latents, trigger-less captions
                    micro_batches.append(preserve.dop_batch(
                        batch, control_text[rows].to(device, dtype), unet, weight))
                elif class_set is not None:  # prior: as many class images beside them
                    micro_batches.append(preserve.prior_batch(
                        class_set, batch.size, rng, components, config, device, dtype, weight))

            def checked(loss: torch.Tensor, step: int = step) -> torch.Tensor:
                loss = fault.corrupt_loss(step, loss)
                if not math.isfinite(loss.item()):
                    raise TrialDiverged(step, loss.item())
                return loss

            losses += accumulator.backward(micro_batches, step, checked)
            preservation_losses += accumulator.preservation_losses
            scaler.unscale_(optimizer)
            grad_norm = clip_gradients(trainable, train_cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            fault.maybe_fail(step)
            train_seconds += time.perf_counter() - started

            if step not in rungs:
                continue
            # 4. A rung: checkpoint, draw the seeded images, score them, report.
            unet.eval()
            started = time.perf_counter()
            checkpoint = Path(config.output_dir) / f"step-{step:06d}"
            shutil.rmtree(checkpoint, ignore_errors=True)  # a killed attempt's, maybe torn
            save_lora(unet, checkpoint)
            scores = evaluator.score(checkpoint, step,
                                     None if race is None else functools.partial(race, step))
            eval_seconds += time.perf_counter() - started
            unet.train()
            metrics = RungReport(
                **scores,
                step=step,
                max_train_steps=params.max_train_steps,
                train_loss=sum(losses) / len(losses),
                preservation=method,
                preservation_weight=weight if method != "none" else None,
                preservation_loss=sum(preservation_losses) / len(preservation_losses)
                if preservation_losses else None,
                grad_norm=grad_norm,
                learning_rate_now=lr_scheduler.get_last_lr()[0],
                train_seconds=train_seconds,
                eval_seconds=eval_seconds,
                setup_seconds=setup_seconds,
                samples_per_second=step * train_cfg.train_batch_size
                * train_cfg.gradient_accumulation_steps / max(train_seconds, 1e-9),
                peak_memory_mb=peak_memory_mb(device),
                cache_hit=data.cache_hit,
                device=device.type,
                precision=precision_name(dtype),
                accumulation=accumulator.description,
            )
            losses.clear()
            preservation_losses.clear()
            if metrics.is_raced:  # a partial rung: reported, never a candidate; the trial ends
                result.raced = metrics
                result.stopped_early = True
                report(step, metrics, checkpoint)
                break
            result.rungs.append(metrics)
            # After the scoring, whose RNG use is then part of the state; before the report,
            # which hands the folder over (Tune copies it, then it is deleted).
            trainer.save(checkpoint, step, config, result.rungs, functools.partial(
                fault.mid_checkpoint, step), train_seconds=train_seconds,
                eval_seconds=eval_seconds, setup_seconds=setup_seconds)
            stop = report(step, metrics, checkpoint)
            fault.after_rung(step)
            if stop and step < params.max_train_steps:
                result.stopped_early = True
                break
    return result


def base_evaluator(config: TrialConfig) -> tuple[evaluation.Evaluator, cache.EncodedData]:
    """A fresh process's frozen model and an evaluator on it that holds the base model's
    control-image features (drawn now, or read from the shared cache), for the baseline and
    for rescoring; and the training set's cached encodings."""
    device = pick_device()
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    components, data = load_frozen(config, device, dtype)
    evaluator = evaluation.Evaluator(config, components, data.examples, device, dtype)
    # Before any LoRA is loaded: the UNet is the base model.
    evaluator.set_base_control(preserve.base_control(config, evaluator, device, dtype))
    return evaluator, data


def run_baseline(config: TrialConfig) -> dict[str, Any]:
    """Score the base model without LoRA on the same prompts and seeds as every trial.

    Also builds the shared latent/text cache, so trials that start afterwards only read it.
    """
    evaluator, data = base_evaluator(config)
    started = time.perf_counter()  # the rung's scoring alone, as a trial's eval_seconds
    scores = evaluator.score(Path(config.output_dir))  # every prompt, as a trial's full rung
    scores[EVAL_SECONDS] = time.perf_counter() - started
    scores["cache_file"] = str(data.cache_file)
    return scores

