"""Scoring a LoRA at a rung: the same seeded images for every trial, CLIP-scored.

One :class:`Evaluator` lives for the whole trial, so the pipeline and the CLIP model are built
once (the reference script reloads a whole pipeline from disk at every validation). The frozen
parts of the work (prompt embeddings) are kept per worker, and the LoRA is merged into the
weights while drawing (:mod:`trials.eval.fast_eval`).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from trials.config import TrialConfig
from trials.data.folder import Example, load_rgb
from trials.eval import fast_eval, preservation, subject_fidelity
from trials.eval.score import ClipScorer, generate_images, grid_image
from trials.models.components import SDComponents, make_pipeline

# CLIP-I compares generated images with at most this many training images (a fixed subset).
MAX_REFERENCE_IMAGES = 64
SAMPLES_NAME = "samples.png"
log = logging.getLogger(__name__)


def scorer_precision(config: TrialConfig, device: torch.device) -> str:
    """``fp16`` when ``eval.clip_fp16`` asks for it on a CUDA device, else ``fp32``."""
    if not config.eval.clip_fp16:
        return "fp32"
    if device.type != "cuda":
        log.warning("eval.clip_fp16 applies on CUDA only; the CLIP scorer stays fp32 on %s",
                    device.type)
        return "fp32"
    return "fp16"


def reference_embeddings(scorer: ClipScorer, examples: list[Example]) -> torch.Tensor:
    """CLIP embeddings of a fixed, evenly spread subset of the training images (for CLIP-I)."""
    step = max(1, len(examples) // MAX_REFERENCE_IMAGES)
    return scorer.embed_images([load_rgb(ex.path)
                                for ex in examples[::step][:MAX_REFERENCE_IMAGES]])


class Evaluator:
    """Draws the held-out prompts' images with the current UNet and scores them."""

    def __init__(self, config: TrialConfig, components: SDComponents, examples: list[Example],
                 device: torch.device, dtype: torch.dtype, scorer: ClipScorer | None = None,
                 train_embeds: torch.Tensor | None = None,
                 prompt_embeddings: fast_eval.PromptEmbeddings | None = None) -> None:
        """``scorer``, ``train_embeds`` (:func:`reference_embeddings`) and
        ``prompt_embeddings`` (the text encoder's, kept per worker): already computed for this
        config and these examples; computed here when not given."""
        self.config = config.eval
        self.resolution = config.data.resolution
        self.size = (config.eval.width or self.resolution, config.eval.height or self.resolution)
        self.prompts = list(config.eval.prompt_list)
        self.pipe = make_pipeline(components, device, dtype)
        self.scorer = scorer or ClipScorer(config.eval.clip_model, config.eval.clip_pretrained,
                                           device=device, cache_dir=config.cache_dir,
                                           precision=scorer_precision(config, device))
        self.prompt_embeddings = prompt_embeddings or fast_eval.PromptEmbeddings()
        if train_embeds is None:
            train_embeds = reference_embeddings(self.scorer, examples)
        self.train_embeds = train_embeds
        # Fidelity to held-out real images, when the config has some (trials.eval.subject_fidelity).
        self.fidelity = subject_fidelity.for_config(config, self.scorer, device)
        # Control prompts (the held-out prompts without the trigger), when the sweep has a
        # trigger; base_control: the base model's control-image features (set_base_control).
        self.preservation = config.preservation
        self.base_control: torch.Tensor | None = None

    def _draw(self, prompts: list[str]) -> list[list[Image.Image]]:
        cfg = self.config
        merged = fast_eval.merged_lora(self.pipe.unet) if cfg.merge_lora else nullcontext()
        with merged, fast_eval.cuda_speedups(self.pipe, cfg.channels_last, cfg.compile_unet):
            return generate_images(
                self.pipe, prompts, cfg.images_per_prompt, cfg.inference_steps,
                cfg.guidance_scale, cfg.seed, self.resolution, batch_size=cfg.batch_size,
                width=self.size[0], height=self.size[1],
                prompt_embeddings=self.prompt_embeddings)

    def control_features(self) -> torch.Tensor:
        """CLIP image features of the control images the UNet draws *now*, shape
        ``[n_control_prompts * images_per_prompt, dim]``: call it on the base model (before a
        LoRA is attached or loaded) for :meth:`set_base_control`."""
        images = self._draw(list(self.preservation.control_prompt_list))
        return self.scorer.embed_images([im for group in images for im in group])

    def set_base_control(self, features: torch.Tensor | None) -> None:
        """The base model's control-image features, for drift and leak at every rung."""
        self.base_control = features

    def score(self, out_dir: Path) -> dict[str, Any]:
        """Generate, score, and save the labelled image grid as ``out_dir/samples.png``."""
        images = self._draw(self.prompts)
        result = self.scorer.score(self.prompts, images, self.train_embeds)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        grid_image(images, labels=self.prompts).save(out_dir / SAMPLES_NAME)
        extra = self.fidelity.score(images) if self.fidelity is not None else {}
        if self.preservation.measured:
            # Same seeds as the base model's control images: each image has a paired twin.
            controls = list(self.preservation.control_prompt_list)
            control_images = self._draw(controls)
            grid_image(control_images, labels=controls).save(
                out_dir / preservation.CONTROL_NAME)
            extra.update(preservation.control_metrics(
                self.scorer, controls, self.preservation.brand_prompt_list, control_images,
                self.base_control))
        return {
            **extra,
            "clip_score": float(result.clip_score),
            "clip_score_stderr": float(result.clip_score_stderr),
            "clip_i": None if result.clip_i is None else float(result.clip_i),
            "per_prompt": [float(x) for x in result.per_prompt],
            "n_images": int(result.n_images),
            "samples": str(out_dir / SAMPLES_NAME),
        }
