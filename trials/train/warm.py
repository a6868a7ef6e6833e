"""Frozen parts kept in memory for the next trial that runs in the same process.

A sweep runs many trials of one model, and its worker processes are reused from trial to trial
(Ray Tune's ``reuse_actors``). Loading the frozen model and the CLIP scorer again for every
trial was most of the per-trial overhead, so a process keeps them:

- the tokenizer, text encoder, VAE and CLIP model never train, and are shared as they are;
- the UNet is lent to one trial at a time; the trial adds its LoRA, and when it ends (finished,
  stopped early or failed) the LoRA layers are removed again, which leaves the frozen weights
  exactly as loaded (only LoRA parameters are ever given to the optimizer);
- each trial gets a fresh noise scheduler, because a trial may change its prediction type;
- the training folder is validated (every image decoded) once, and again only when a file in
  it changes; the CLIP embeddings of its reference images are kept with it.

Only :func:`trials.train.loop.run_trial` uses this. The baseline runs as a Ray task, whose worker
process may idle for the rest of the sweep, so it loads its own copy and lets go of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from trials.config import TrialConfig
from trials.data.folder import Example, folder_state, load_examples
from trials.data.holdout import training_examples
from trials.eval.evaluator import reference_embeddings, scorer_precision
from trials.eval.fast_eval import PromptEmbeddings
from trials.eval.score import ClipScorer
from trials.models.components import SDComponents, load_components

log = logging.getLogger(__name__)

# One entry each: a process serves one sweep, and a different model replaces the kept one.
_components: dict[tuple, SDComponents] = {}
_scorers: dict[tuple, ClipScorer] = {}
_examples: dict[tuple, list[Example]] = {}
_references: dict[tuple, torch.Tensor] = {}
_prompt_embeddings: dict[tuple, PromptEmbeddings] = {}


def _components_key(config: TrialConfig, device: torch.device, dtype: torch.dtype) -> tuple:
    model = config.model
    return (model.name, model.revision, model.variant, str(Path(config.cache_dir).resolve()),
            str(device), dtype)


@contextmanager
def kept_components(config: TrialConfig, device: torch.device, dtype: torch.dtype
                    ) -> Iterator[SDComponents]:
    """The frozen model for one trial: loaded on first use, then lent to each next trial.

    On exit the UNet's LoRA layers, gradient checkpointing and training mode are undone. If
    that fails, the kept model is dropped (with a warning), so the next trial loads a clean one.
    """
    key = _components_key(config, device, dtype)
    kept = _components.get(key)
    if kept is None:
        _components.clear()  # first free the old model's memory, then load the new one
        _prompt_embeddings.clear()
        kept = load_components(
            config.model.name, revision=config.model.revision, variant=config.model.variant,
            cache_dir=config.cache_dir, device=device, weight_dtype=dtype)
        _components[key] = kept
    lent = replace(kept, noise_scheduler=DDPMScheduler.from_config(kept.noise_scheduler.config))
    if device.type == "cuda":
        # The trial's peak_memory_mb is its own, not the largest trial this process ran.
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield lent
    finally:
        try:
            restore_unet(kept.unet)
        except Exception as err:
            # The trial's own outcome stands; the next trial just loads a fresh model.
            log.warning("dropping the kept model: %s", err)
            _components.clear()
            _prompt_embeddings.clear()
        finally:
            if device.type == "cuda":
                # Hand back what the trial's activations held (all of it after an OOM), so the
                # next trial starts with the memory a fresh process would have.
                torch.cuda.empty_cache()


def restore_unet(unet: torch.nn.Module) -> None:
    """Take a trial's LoRA off the UNet and put it back as loaded: frozen, eval mode."""
    if getattr(unet, "peft_config", None):
        unet.unload_lora()
    if unet.is_gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    unet.requires_grad_(False)
    unet.eval()
    leftover = [name for name, _ in unet.named_modules() if "lora" in name.split(".")[-1]]
    if leftover:
        raise RuntimeError(f"LoRA layers left on the kept UNet after a trial: {leftover[:3]}")


def kept_prompt_embeddings(config: TrialConfig, device: torch.device, dtype: torch.dtype
                           ) -> PromptEmbeddings:
    """The text encoder's embeddings of the held-out prompts, kept with the frozen model."""
    key = _components_key(config, device, dtype)
    if key not in _prompt_embeddings:
        _prompt_embeddings.clear()
        _prompt_embeddings[key] = PromptEmbeddings()
    return _prompt_embeddings[key]


def _scorer_key(config: TrialConfig, device: torch.device) -> tuple:
    spec = config.eval
    return (spec.clip_model, spec.clip_pretrained, str(device),
            str(Path(config.cache_dir).resolve()), scorer_precision(config, device))


def kept_scorer(config: TrialConfig, device: torch.device) -> ClipScorer:
    """The CLIP scorer for the sweep's ``eval.clip_model``, loaded once per process."""
    key = _scorer_key(config, device)
    if key not in _scorers:
        _scorers.clear()
        _scorers[key] = ClipScorer(config.eval.clip_model, config.eval.clip_pretrained,
                                   device=device, cache_dir=config.cache_dir,
                                   precision=scorer_precision(config, device))
    return _scorers[key]


def _examples_key(config: TrialConfig) -> tuple:
    folder = Path(config.data.train_dir).resolve()
    return (str(folder), config.data.caption_column, folder_state(folder),
            config.data.holdout, config.data.holdout_seed)


def kept_examples(config: TrialConfig) -> list[Example]:
    """The training folder's examples (minus the held-out split), validated again only when
    a file in it changed."""
    key = _examples_key(config)
    if key not in _examples:
        _examples.clear()
        _references.clear()
        _examples[key] = training_examples(
            config, load_examples(config.data.train_dir, config.data.caption_column))
    return _examples[key]


def kept_reference_embeddings(config: TrialConfig, device: torch.device,
                              examples: list[Example]) -> torch.Tensor:
    """CLIP embeddings of the training images CLIP-I compares with, once per folder state.

    ``examples`` come from :func:`kept_examples`, which forgets these embeddings whenever it
    validates the folder again, so the folder is not walked a second time here.
    """
    key = _scorer_key(config, device)
    if key not in _references:
        _references.clear()
        _references[key] = reference_embeddings(kept_scorer(config, device), examples)
    return _references[key]


def forget() -> None:
    """Drop everything kept (tests use this to compare with a cold start)."""
    for kept in (_components, _scorers, _examples, _references, _prompt_embeddings):
        kept.clear()
