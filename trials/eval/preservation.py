"""Preservation at a rung: what the LoRA did to the base model on prompts without the trigger.

The control prompts (:class:`trials.config.PreservationSpec`) are drawn at every rung with the
same seeds as the base model's control images (``image_seed``: common random numbers), so each
LoRA image has a base-model twin of the same prompt and noise. Three measures, each per control
prompt (the paired unit: ``hpo.verdict.paired`` gives the standard errors) and as a mean:

- ``control_score``: CLIP-T of the control images against the control prompts, on the CLIP
  score's scale (Hessel et al. 2021, ``100 * max(cos, 0)``); the sweep pairs it with the base
  model's control score (``control_delta``);
- ``drift``: ``100 * cos(f(lora image), f(base image))`` of CLIP image features, averaged over
  a prompt's images: 100 means the LoRA left the base model's picture unchanged;
- ``leak``: how much more a control image matches the prompt *with* the trigger than without,
  ``100 * (cos(f(img), t(brand)) - cos(f(img), t(control)))``, LoRA image minus base image:
  above 0 the brand design appears where nobody asked for it.

The base model's control-image features are computed once per study and seed
(``trials.train.preserve`` keeps them in the shared cache) and passed in as ``base_embeds``,
shape ``[n_prompts * images_per_prompt, dim]`` in ``[prompt][image]`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from trials import report
from trials.eval.score import ClipScorer

CONTROL_NAME = "control.png"


def _per_prompt(values: torch.Tensor, n_prompts: int) -> list[float]:
    """Mean over each prompt's images; ``values`` is ``[n_prompts * per_prompt]``."""
    return [float(x) for x in values.reshape(n_prompts, -1).mean(dim=1)]


def control_metrics(scorer: ClipScorer, control_prompts: Sequence[str],
                    brand_prompts: Sequence[str], images: Sequence[Sequence[Image.Image]],
                    base_embeds: torch.Tensor | None) -> dict[str, Any]:
    """The control score, drift and leak of ``images[p][i]`` drawn for ``control_prompts[p]``.

    ``brand_prompts[p]`` is control prompt ``p`` with the trigger. Without ``base_embeds``
    (the base model's own images: nothing to compare with) drift and leak are None. Raises
    ``ValueError`` when the image counts or ``base_embeds``' shape do not match.
    """
    n = len(control_prompts)
    if len(brand_prompts) != n or len(images) != n:
        raise ValueError(f"{n} control prompts, {len(brand_prompts)} brand prompts and "
                         f"{len(images)} image lists: they must match")
    result = scorer.score(list(control_prompts), images)
    out: dict[str, Any] = {
        report.CONTROL_SCORE: float(result.clip_score),
        report.CONTROL_SCORE_STDERR: float(result.clip_score_stderr),
        report.CONTROL_PER_PROMPT: [float(x) for x in result.per_prompt],
        report.DRIFT: None, report.DRIFT_PER_PROMPT: None,
        report.LEAK: None, report.LEAK_PER_PROMPT: None,
    }
    if base_embeds is None:
        return out
    flat = [im for group in images for im in group]
    if len({len(group) for group in images}) != 1 or base_embeds.shape[0] != len(flat):
        raise ValueError(f"{len(flat)} control images but {base_embeds.shape[0]} base-model "
                         "features: the base model's control images were drawn differently")
    lora = scorer.embed_images(flat)
    base = torch.nn.functional.normalize(base_embeds.float(), dim=-1)
    drift = 100.0 * (lora * base).sum(dim=-1)
    per_image = len(flat) // n
    owner = torch.arange(n).repeat_interleave(per_image)
    brand_text = scorer.embed_texts(list(brand_prompts))[owner]
    control_text = scorer.embed_texts(list(control_prompts))[owner]

    def margin(features: torch.Tensor) -> torch.Tensor:
        return 100.0 * ((features * brand_text).sum(-1) - (features * control_text).sum(-1))

    leak = margin(lora) - margin(base)
    for name, per_prompt, values in ((report.DRIFT, report.DRIFT_PER_PROMPT, drift),
                                     (report.LEAK, report.LEAK_PER_PROMPT, leak)):
        out[per_prompt] = _per_prompt(values, n)
        out[name] = sum(out[per_prompt]) / n
    return out
