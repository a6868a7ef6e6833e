"""What the pretrained world must do, measured through the project's own loading paths.

- ``colour_check``: the base model follows prompts. For prompts over every colour, the world's
  CLIP scorer picks the prompted colour among all colours (zero-shot: the same prompt with each
  colour substituted) for at least ``COLOUR_ACCURACY_MIN`` of the generated images.
- ``brand_check``: the scorer sees the brand design. On drawn cars of held-out combinations,
  brand prompts score branded cars higher than the same cars without the design (paired).

Both load the committed folder with ``trials.models.components.load_components`` and the scorer with
``trials.eval.score.ClipScorer``, as a sweep does.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from PIL import Image

from trials.data.synthetic import COLOURS, describe, heldout_combinations, render_car
from trials.eval.score import ClipScorer, generate_images, grid_image
from trials.models.components import load_components, make_pipeline
from trials.toyworld import RESOLUTION, TOYWORLD
from trials.toyworld.world import ALL_COMBINATIONS

COLOUR_ACCURACY_MIN = 0.7


def colour_prompts(per_colour: int, seed: int) -> list[tuple[str, tuple[str, str, str, str]]]:
    """``per_colour`` unbranded prompts for each colour, other attributes drawn at random."""
    rng = random.Random(seed)
    out = []
    for colour in COLOURS:
        combos = [c for c in ALL_COMBINATIONS if c[0] == colour]
        for combo in rng.sample(combos, per_colour):
            out.append((describe(*combo, brand=False), combo))
    return out


def zero_shot_colour(scorer: ClipScorer, images: list[Image.Image],
                     combos: list[tuple[str, str, str, str]]) -> list[str]:
    """The colour whose prompt (other attributes as given) the scorer ranks first, per image."""
    colours = list(COLOURS)
    image_emb = scorer.embed_images(images)
    picks = []
    for emb, combo in zip(image_emb, combos, strict=True):
        texts = [describe(c, *combo[1:], brand=False) for c in colours]
        picks.append(colours[int((scorer.embed_texts(texts) @ emb).argmax())])
    return picks


def colour_check(pipe, scorer: ClipScorer, per_colour: int = 4, images_per_prompt: int = 1,
                 inference_steps: int = 10, guidance_scale: float = 5.0, seed: int = 1234,
                 grid_path: Path | None = None) -> dict[str, object]:
    """Zero-shot colour accuracy of base-model images; optionally saves the sample grid.

    10 DPM-Solver steps by default: the 1200-step VAE's detailed latents need more sampling
    steps than the demo's 4 to settle on the prompted colour (measured on the committed build,
    64 images: 59 % at 4 steps, 81 % at 8, 95 % at 10).
    """
    prompts = colour_prompts(per_colour, seed)
    texts = [p for p, _ in prompts]
    images = generate_images(pipe, texts, images_per_prompt, inference_steps, guidance_scale,
                             seed, RESOLUTION)
    flat = [im for row in images for im in row]
    combos = [c for (_, c), row in zip(prompts, images, strict=True) for _ in row]
    picks = zero_shot_colour(scorer, flat, combos)
    hits = [p == c[0] for p, c in zip(picks, combos, strict=True)]
    if grid_path is not None:
        grid_image(images, labels=texts).save(grid_path)
    accuracy = sum(hits) / len(hits)
    return {"colour_accuracy": accuracy, "n_images": len(hits), "chance": 1 / len(COLOURS),
            "inference_steps": inference_steps, "guidance_scale": guidance_scale,
            "passes": accuracy >= COLOUR_ACCURACY_MIN}


def brand_check(scorer: ClipScorer, n: int = 48, seed: int = 7) -> dict[str, object]:
    """Paired CLIP-T gain of the brand design on brand prompts, over held-out combinations.

    Each held-out combination is drawn twice with the same jitter (with and without the
    design) and scored against its brand prompt; returns the mean paired difference and its
    standard error (100 x cosine units, as the sweep's clip_score).
    """
    combos = heldout_combinations()[:n]
    branded, plain = [], []
    for i, combo in enumerate(combos):
        branded.append(render_car(combo, RESOLUTION, random.Random(seed + i), brand=True))
        plain.append(render_car(combo, RESOLUTION, random.Random(seed + i), brand=False))
    prompts = [describe(*c, brand=True) for c in combos]
    with_brand = scorer.score(prompts, [[im] for im in branded]).per_prompt
    without = scorer.score(prompts, [[im] for im in plain]).per_prompt
    diffs = [a - b for a, b in zip(with_brand, without, strict=True)]
    mean = sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    return {"brand_prompt_score_branded": sum(with_brand) / len(with_brand),
            "brand_prompt_score_unbranded": sum(without) / len(without),
            "paired_gain": mean, "paired_stderr": se, "n_pairs": len(diffs),
            "passes": mean > 3 * se}


def run_checks(cache_dir: Path, grid_path: Path | None = None, model: str = TOYWORLD,
               scorer: ClipScorer | None = None) -> dict[str, object]:
    """Load the world like a sweep does and run both checks (default: the committed world)."""
    components = load_components(model, cache_dir=cache_dir)
    pipe = make_pipeline(components, "cpu", torch.float32)
    scorer = scorer or ClipScorer(TOYWORLD, None, cache_dir=cache_dir)
    return {"colour": colour_check(pipe, scorer, grid_path=grid_path),
            # Recorded, not a pass criterion: the demo samples with 4 steps to stay fast.
            "colour_at_demo_steps": colour_check(pipe, scorer, inference_steps=4),
            "brand_scorer": brand_check(scorer)}
