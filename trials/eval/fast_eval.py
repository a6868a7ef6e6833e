"""Cheaper rung evaluation: frozen work done once, the LoRA merged while drawing.

What a rung evaluation repeats that does not change between rungs or trials:

- the text encoder's embeddings of the held-out prompts and of the empty (negative) prompt.
  :class:`PromptEmbeddings` computes them once per worker process, with the very call the
  pipeline makes (``encode_prompt`` on the same batch of prompts), so the images are bit for bit
  the ones the pipeline draws from the prompt strings;

Opt-in, because the merged product rounds differently from the adapter path (``eval`` key
``merge_lora``): :func:`merged_lora` folds ``s B A`` into ``W`` for the rung (a LoRA forward is
``W x + s B (A x)``: three matmuls and peft's Python per layer) with peft's
``merge(safe_merge=True)``, which writes the sum into a new tensor, and afterwards puts the
original weight tensors back, so the frozen weights are exactly as loaded (subtracting the delta
again would leave rounding errors in the model every later trial borrows). On the tiny fp32 model
a few pixels of the drawn images move by one level out of 255 (tested); the noise draws stay the
same for every trial, and the baseline (no LoRA) is unaffected.

Opt-in, CUDA only, because they change the numbers (``eval`` keys of the sweep file):
``clip_fp16`` (the CLIP scorer in half precision: scores change by rounding), ``channels_last``
(the UNet's memory format while drawing) and ``compile_unet`` (``torch.compile`` of the UNet the
pipeline draws with). On a CPU they are ignored with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


class PromptEmbeddings:
    """The pipeline's prompt and negative-prompt embeddings per batch of prompts, kept.

    Keyed by the exact batch (a tuple of prompt strings) and whether classifier-free guidance
    is on; a sweep draws the same batches at every rung of every trial.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def pipeline_kwargs(self, pipe, prompts: list[str], guidance_scale: float
                        ) -> dict[str, torch.Tensor]:
        """``prompt_embeds`` (and ``negative_prompt_embeds``) for ``pipe(...)``; shapes
        ``[len(prompts), 77, D]``."""
        # What the pipeline's do_classifier_free_guidance and _execution_device say.
        guided = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        device = pipe._execution_device
        key = (tuple(prompts), guided, str(device))
        if key not in self._kept:
            with torch.no_grad():
                self._kept[key] = pipe.encode_prompt(
                    prompts, device, num_images_per_prompt=1,
                    do_classifier_free_guidance=guided, negative_prompt=None)
        embeds, negative = self._kept[key]
        kwargs = {"prompt_embeds": embeds}
        if negative is not None:
            kwargs["negative_prompt_embeds"] = negative
        return kwargs


def _lora_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in unet.modules() if isinstance(m, LoraLayer)]


@contextmanager
def merged_lora(unet: torch.nn.Module) -> Iterator[int]:
    """Run the UNet with its LoRA folded into the base weights; yields the number of layers.

    On exit every base weight is the original tensor again (not a recomputed one), and the
    adapter layers are active as before. A UNet without LoRA is left alone.
    """
    layers = _lora_layers(unet)
    kept: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]] = []
    try:
        for layer in layers:
            base = layer.get_base_layer()
            bias = base.bias.data if getattr(base, "bias", None) is not None else None
            kept.append((layer, base.weight.data, bias))
            with torch.no_grad():
                layer.merge(safe_merge=True)  # a new tensor: the original stays untouched
        yield len(layers)
    finally:
        for layer, weight, bias in kept:
            if layer.merged:
                layer.unmerge()
            base = layer.get_base_layer()
            base.weight.data = weight
            if bias is not None:
                base.bias.data = bias


@contextmanager
def cuda_speedups(pipe, channels_last: bool, compile_unet: bool) -> Iterator[None]:
    """The opt-in CUDA settings for drawing: channels_last UNet and/or a compiled UNet."""
    on_cuda = pipe.device.type == "cuda"
    if (channels_last or compile_unet) and not on_cuda:
        log.warning("eval.channels_last / eval.compile_unet apply on CUDA only; ignored on %s",
                    pipe.device.type)
        channels_last = compile_unet = False
    unet = pipe.unet
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile_unet:
        compiled = getattr(unet, "_hpo_compiled", None)
        if compiled is None:
            compiled = torch.compile(unet)
            unet._hpo_compiled = compiled  # compiled once per worker, reused by every rung
        pipe.unet = compiled
    try:
        yield
    finally:
        pipe.unet = unet
        if channels_last:
            unet.to(memory_format=torch.contiguous_format)
