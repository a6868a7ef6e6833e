"""Scoring a LoRA at a rung: the same seeded images for every trial, CLIP-scored.

One :class:`Evaluator` lives for the whole trial, so the pipeline and the CLIP model are built
once (the reference script reloads a whole pipeline from disk at every validation). The frozen
parts of the work (prompt embeddings) are kept per worker, and the LoRA is merged into the
weights while drawing (:mod:`trials.eval.fast_eval`).

A racing sweep (``hpo.sweep.racing``) draws a rung's prompts in chunks, in one shuffled order
every trial shares (:func:`prompt_order`), and after each chunk asks a ``race`` callback, which
the orchestrator answers: a trial significantly worse than the rung's reference stops drawing.
The images do not depend on the chunking (each image's seed follows its prompt's place in the
whole list), so a rung drawn in chunks scores what a rung drawn at once does.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from trials import report
from trials.config import TrialConfig
from trials.data.folder import Example, load_rgb
from trials.eval import fast_eval, preservation, subject_fidelity
from trials.eval.score import ClipScorer, generate_images, grid_image, prompt_stderr
from trials.models.components import SDComponents, make_pipeline

# CLIP-I compares generated images with at most this many training images (a fixed subset).
MAX_REFERENCE_IMAGES = 64
SAMPLES_NAME = "samples.png"
log = logging.getLogger(__name__)

# race(prompt_indices, per_prompt_scores) -> a decision to stop drawing (a mapping the trial
# reports as it is), or None to go on. The indices are places in the held-out list, in the order
# drawn; the scores are their prompt means. Answered by the orchestrator (hpo.dispatch.referee).
Race = Callable[[list[int], list[float]], Mapping[str, object] | None]


def prompt_order(n_prompts: int, seed: int) -> list[int]:
    """The order in which racing chunks and prompt subsets draw the held-out prompts: a shuffle
    of ``range(n_prompts)`` fixed by ``eval.seed``, the same in every trial (still paired), so a
    subset is a random sample of the prompts rather than the file's first lines."""
    order = list(range(n_prompts))
    random.Random(seed).shuffle(order)
    return order


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

    def _draw(self, prompts: list[str], places: Sequence[int] | None = None
              ) -> list[list[Image.Image]]:
        """Images ``[prompt][image]``; ``places``: the prompts' indices in the whole list."""
        cfg = self.config
        merged = fast_eval.merged_lora(self.pipe.unet) if cfg.merge_lora else nullcontext()
        with merged, fast_eval.cuda_speedups(self.pipe, cfg.channels_last, cfg.compile_unet):
            return generate_images(
                self.pipe, prompts, cfg.images_per_prompt, cfg.inference_steps,
                cfg.guidance_scale, cfg.seed, self.resolution, batch_size=cfg.batch_size,
                width=self.size[0], height=self.size[1],
                prompt_embeddings=self.prompt_embeddings, prompt_indices=places)

    def control_features(self) -> torch.Tensor:
        """CLIP image features of the control images the UNet draws *now*, shape
        ``[n_control_prompts * images_per_prompt, dim]``: call it on the base model (before a
        LoRA is attached or loaded) for :meth:`set_base_control`."""
        images = self._draw(list(self.preservation.control_prompt_list))
        return self.scorer.embed_images([im for group in images for im in group])

    def set_base_control(self, features: torch.Tensor | None) -> None:
        """The base model's control-image features, for drift and leak at every rung."""
        self.base_control = features

    def score(self, out_dir: Path, step: int | None = None, race: Race | None = None
              ) -> dict[str, Any]:
        """Draw, score, and save the labelled image grid as ``out_dir/samples.png``.

        ``step``: the rung's training step, which sets how many prompts it scores
        (:meth:`trials.config.EvalSpec.prompt_budget`; None: all). With ``eval.chunk_prompts``
        or a subset the prompts are drawn in :func:`prompt_order`, and ``race`` is asked after
        every chunk but the last. Returns the scores (``per_prompt`` in held-out order); a rung
        that scored fewer than all prompts adds ``prompt_indices`` (the places scored, in
        order; every per-prompt list follows them); a raced one adds ``raced`` (the decision),
        and draws no control images; neither does a screening rung (``step`` in
        ``eval.subset_rungs``: it feeds ASHA alone), which says ``screening``.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        n = len(self.prompts)
        budget = n if step is None else self.config.prompt_budget(step)
        if self.config.chunk_prompts is None and budget == n:
            places = list(range(n))
            images = self._draw(self.prompts)
            result = self.scorer.score(self.prompts, images, self.train_embeds)
            per_prompt, clip_i, decision = list(result.per_prompt), result.clip_i, None
            score, stderr = float(result.clip_score), float(result.clip_score_stderr)
        else:
            order = prompt_order(n, self.config.seed)[:budget]
            drawn, decision, clip_i = self._draw_racing(order, race)
            places = sorted(drawn)
            images = [drawn[i][0] for i in places]
            per_prompt = [drawn[i][1] for i in places]
            # Every prompt has images_per_prompt images: the mean of prompt means is the mean.
            score, stderr = sum(per_prompt) / len(per_prompt), prompt_stderr(per_prompt)
        texts = [self.prompts[i] for i in places]
        grid_image(images, labels=texts).save(out_dir / SAMPLES_NAME)
        n_images = sum(len(group) for group in images)
        # Keyed by trials.report's names: the loop makes the rung's RungReport of them.
        out: dict[str, Any] = {
            report.CLIP_SCORE: score,
            report.CLIP_SCORE_STDERR: stderr,
            report.CLIP_I: None if clip_i is None else float(clip_i),
            report.PER_PROMPT: [float(x) for x in per_prompt],
            report.N_IMAGES: n_images,
            report.SAMPLES: str(out_dir / SAMPLES_NAME),
        }
        if len(places) < n:
            out[report.PROMPT_INDICES] = places
        drawn_images = n_images  # the rung's compute: with control images, below
        if decision is not None:
            out[report.RACED] = {**decision, "prompts_scored": len(places), "prompts_total": n}
            out[report.IMAGES_DRAWN] = drawn_images
            return out
        if self.fidelity is not None:
            out.update(self.fidelity.score(images))
        screening = step is not None and step in self.config.subset_rungs
        if screening:
            out[report.SCREENING] = True
        elif self.preservation.measured:
            control, drawn = self._control(out_dir)
            out.update(control)
            drawn_images += drawn
        out[report.IMAGES_DRAWN] = drawn_images
        return out

    def _draw_racing(self, order: list[int], race: Race | None
                     ) -> tuple[dict[int, tuple[list[Image.Image], float]],
                                Mapping[str, object] | None, float | None]:
        """Draw ``order``'s prompts chunk by chunk; after each chunk but the last, ask ``race``.

        Returns ``{place: (images, prompt mean)}``, the decision that stopped drawing (None:
        all of ``order`` drawn) and CLIP-I over the images drawn."""
        chunk = self.config.chunk_prompts or len(order)
        drawn: dict[int, tuple[list[Image.Image], float]] = {}
        clip_i_sum, clip_i_images = 0.0, 0
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            texts = [self.prompts[i] for i in part]
            images = self._draw(texts, part)
            result = self.scorer.score(texts, images, self.train_embeds)
            for place, group, value in zip(part, images, result.per_prompt, strict=True):
                drawn[place] = (group, float(value))
            if result.clip_i is not None:
                clip_i_sum += result.clip_i * result.n_images
                clip_i_images += result.n_images
            so_far = order[:start + len(part)]
            if race is not None and len(so_far) < len(order):
                decision = race(so_far, [drawn[i][1] for i in so_far])
                if decision:
                    return drawn, decision, None
        return drawn, None, clip_i_sum / clip_i_images if clip_i_images else None

    def _control(self, out_dir: Path) -> tuple[dict[str, Any], int]:
        """Control score, drift and leak on every control prompt (same seeds as the base
        model's control images, so each image has a paired twin), and the number of images
        drawn. Only a full rung draws them: a raced or screening rung decides no constraint."""
        pres = self.preservation
        controls, brands = list(pres.control_prompt_list), list(pres.brand_prompt_list)
        control_images = self._draw(controls)
        grid_image(control_images, labels=controls).save(out_dir / preservation.CONTROL_NAME)
        return (preservation.control_metrics(self.scorer, controls, brands, control_images,
                                             self.base_control),
                sum(len(group) for group in control_images))
