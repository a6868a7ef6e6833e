"""A small pretrained world: drawn cars, a Stable-Diffusion-shaped model and a CLIP scorer.

The project's offline runs (demo, tests, benchmarks) need models whose scores mean something.
This subpackage trains them here, on CPU, from fixed seeds, on the drawn cars of
:mod:`trials.data.synthetic`:

- :mod:`trials.toyworld.world` draws the base world (unbranded cars, captions without the
  brand) and the scorer's world (cars with and without the brand design);
- :mod:`trials.toyworld.autoencoder` trains the AutoencoderKL (32 px -> 4 x 8 x 8 latents);
- :mod:`trials.toyworld.diffusion` trains the CLIPTextModel and UNet2DConditionModel;
- :mod:`trials.toyworld.scorer` trains the open_clip CLIP used for CLIP-T / CLIP-I;
- :mod:`trials.toyworld.checks` measures what the world must do (prompt following);
- :mod:`trials.toyworld.build` runs all of it: ``python -m trials.toyworld build``.

The weights are committed under ``trials/toyworld/weights/`` (a diffusers folder ``sd/`` and an
open_clip config + safetensors file under ``clip/``) with ``manifest.json`` recording how they
were made. ``model.name: toyworld`` and ``eval.clip_model: toyworld`` in a sweep load them
through the same ``from_pretrained`` / ``create_model_and_transforms`` calls as real weights.
This module imports nothing heavy: trials.models.components and trials.eval.score read its paths.
"""

from __future__ import annotations

from pathlib import Path

TOYWORLD = "toyworld"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SD_DIR = WEIGHTS_DIR / "sd"
CLIP_DIR = WEIGHTS_DIR / "clip"
# Registered with open_clip under this name; bump the suffix when the scorer's config changes.
CLIP_ARCH = "toyworld-clip-v1"
CLIP_CONFIG_FILE = CLIP_DIR / f"{CLIP_ARCH}.json"
CLIP_WEIGHTS_FILE = CLIP_DIR / f"{CLIP_ARCH}.safetensors"
MANIFEST_FILE = WEIGHTS_DIR / "manifest.json"
# Image side of the world and of the model (the VAE downsamples by 4: 8 x 8 latents).
RESOLUTION = 32
