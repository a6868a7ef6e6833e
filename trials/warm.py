"""Frozen parts kept in memory for the next trial that runs in the same process.

A sweep runs many trials of one model, and its worker processes are reused from trial to trial
(Ray Tune's ``reuse_actors``). Loading the frozen model and the CLIP scorer again for every
trial was most of the per-trial overhead, so a process keeps them:

- the tokenizer, text encoder, VAE and CLIP model never train, and are shared as they are;
- the UNet is lent to one trial at a time; the trial adds its LoRA, and when it ends (finished,
  stopped early or failed) the LoRA layers are removed again, which leaves the frozen weights
  exactly as loaded (only LoRA parameters are ever given to the optimizer);
- each trial gets a fresh noise scheduler, because a trial may change its prediction type.

Only :func:`trials.train.run_trial` uses this. The baseline runs as a Ray task, whose worker
process may idle for the rest of the sweep, so it loads its own copy and lets go of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from trials.config import TrialConfig
from trials.models import SDComponents, load_components
from trials.score import ClipScorer

# One entry each: a process serves one sweep, and a different model replaces the kept one.
_components: dict[tuple, SDComponents] = {}
_scorers: dict[tuple, ClipScorer] = {}


def _components_key(config: TrialConfig, device: torch.device, dtype: torch.dtype) -> tuple:
    model = config.model
    return (model.name, model.revision, model.variant, str(Path(config.cache_dir).resolve()),
            str(device), dtype)


@contextmanager
def kept_components(config: TrialConfig, device: torch.device, dtype: torch.dtype
                    ) -> Iterator[SDComponents]:
    """The frozen model for one trial: loaded on first use, then lent to each next trial.

    On exit the UNet's LoRA layers, gradient checkpointing and training mode are undone. If
    that fails, the kept model is dropped, so the next trial loads a clean one.
    """
    key = _components_key(config, device, dtype)
    kept = _components.get(key)
    if kept is None:
        _components.clear()  # first free the old model's memory, then load the new one
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
        except Exception:
            _components.clear()
            raise
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


def kept_scorer(config: TrialConfig, device: torch.device) -> ClipScorer:
    """The CLIP scorer for the sweep's ``eval.clip_model``, loaded once per process."""
    spec = config.eval
    key = (spec.clip_model, spec.clip_pretrained, str(device),
           str(Path(config.cache_dir).resolve()))
    if key not in _scorers:
        _scorers.clear()
        _scorers[key] = ClipScorer(spec.clip_model, spec.clip_pretrained, device=device,
                                   cache_dir=config.cache_dir)
    return _scorers[key]


def forget() -> None:
    """Drop everything kept (tests use this to compare with a cold start)."""
    _components.clear()
    _scorers.clear()
