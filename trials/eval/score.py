"""Evaluation-image generation with common random numbers, and CLIP scoring of the results.

The CLIP score follows Hessel et al. (2021) with w = 100: ``100 * max(cos(image, prompt), 0)``,
averaged over all generated images. Every trial and the no-LoRA baseline draw image ``(p, i)``
from the same seed (``image_seed``), so score differences come from the LoRAs, not from noise.

Real sweeps score with open_clip ``ViT-H-14`` / ``laion2b_s32b_b79k``. ``model_name="tiny"``
gives a tiny open_clip CLIP with fixed random weights, saved once as a safetensors file and then
loaded through the same ``create_model_and_transforms(name, pretrained=<file>)`` route as real
weights: its scores are meaningless, but the code path is the real one and needs no network.
``model_name="toyworld"`` loads the committed CLIP trained on the toy world's drawn cars
(trials.toyworld), whose scores do track what an image shows; same route.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip
import torch
from PIL import Image, ImageDraw, ImageFont

from trials.toyworld import CLIP_ARCH as TOYWORLD_CLIP_ARCH
from trials.toyworld import CLIP_CONFIG_FILE as TOYWORLD_CLIP_CONFIG
from trials.toyworld import CLIP_WEIGHTS_FILE as TOYWORLD_CLIP_WEIGHTS
from trials.toyworld import TOYWORLD

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from trials.eval.fast_eval import PromptEmbeddings

TINY_CLIP = "tiny"
# Registered with open_clip under this name; bump the suffix when TINY_CLIP_CONFIG changes so
# stale cached checkpoints are not reused.
TINY_CLIP_ARCH = "trials-tiny-clip-v1"
# Seed picked so text-image cosines are mostly positive: with seed 0 every score clamps to 0,
# which would leave the CPU demo sweep a flat objective.
TINY_CLIP_SEED = 1
TINY_CLIP_CONFIG: dict[str, object] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
# Used only when a tiny scorer is asked for without a cache_dir: the user's cache folder (XDG),
# not one beside the package, which an installed wheel puts inside site-packages' parent.
_DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
    / "sd-lora-sweep"


@dataclass(frozen=True)
class ScoreResult:
    """CLIP scores of one set of generated images.

    ``clip_score_stderr`` is the standard error over *prompt means* (images of one prompt are
    correlated, so they are not independent samples); with a single prompt it falls back to the
    standard error over images, and it is NaN when fewer than two units exist.
    """

    clip_score: float  # mean over all images of 100 * max(cos(image, its prompt), 0)
    clip_score_stderr: float
    per_prompt: tuple[float, ...]  # mean score of each prompt's images, in prompt order
    clip_i: float | None  # mean pairwise 100 * cos(generated, training image); None without both
    n_images: int

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-serialisable dict (tuple -> list), e.g. for Optuna user attrs."""
        out = asdict(self)
        out["per_prompt"] = list(self.per_prompt)
        return out


def image_seed(base_seed: int, prompt_index: int, image_index: int) -> int:
    """Seed of image ``image_index`` of prompt ``prompt_index``: identical in every trial.

    Derived by hashing (not ``base + offset``) so that seeds of different (prompt, image)
    pairs never collide and adding prompts or images leaves existing seeds unchanged. Stable
    across processes and machines (no Python ``hash``); fits in 63 bits.
    """
    key = f"{base_seed}:{prompt_index}:{image_index}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def generate_images(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    images_per_prompt: int,
    inference_steps: int,
    guidance_scale: float,
    seed: int,
    resolution: int,
    batch_size: int = 8,
    prompt_embeddings: PromptEmbeddings | None = None,
    width: int | None = None,
    height: int | None = None,
    prompt_indices: Sequence[int] | None = None,
) -> list[list[Image.Image]]:
    """Generate ``images_per_prompt`` PIL images for each prompt; returns ``[prompt][image]``.

    Images are ``resolution`` square unless ``width``/``height`` (pixels) say otherwise.
    ``prompt_indices[p]`` is prompt ``p``'s place in the whole held-out list (default: ``p``):
    its seeds follow it, so a prompt drawn in a chunk of a racing rung gets the same images as
    in a whole rung.

    Each image gets its own CPU ``torch.Generator`` seeded by ``image_seed``, so an image does
    not depend on batch size, batch composition or accelerator type. ``prompt_embeddings``
    keeps the text encoder's output per batch for the next call (the same images).
    """
    if prompt_indices is not None and len(prompt_indices) != len(prompts):
        raise ValueError(f"{len(prompt_indices)} prompt indices for {len(prompts)} prompts")
    place = list(prompt_indices) if prompt_indices is not None else list(range(len(prompts)))
    jobs = [(p, i) for p in range(len(prompts)) for i in range(images_per_prompt)]
    out: list[list[Image.Image]] = [[] for _ in prompts]
    for start in range(0, len(jobs), max(1, batch_size)):
        batch = jobs[start : start + max(1, batch_size)]
        generators = [
            torch.Generator(device="cpu").manual_seed(image_seed(seed, place[p], i))
            for p, i in batch
        ]
        texts = [prompts[p] for p, _ in batch]
        prompt_kwargs: dict[str, object] = {"prompt": texts} if prompt_embeddings is None \
            else prompt_embeddings.pipeline_kwargs(pipe, texts, guidance_scale)
        result = pipe(
            **prompt_kwargs,
            num_inference_steps=inference_steps,
            guidance_scale=guidance_scale,
            height=height or resolution,
            width=width or resolution,
            generator=generators,
            output_type="pil",
        )
        for (p, _), image in zip(batch, result.images, strict=True):
            out[p].append(image)
    return out


def clip_score_from_embeddings(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor
) -> torch.Tensor:
    """Per-image ``100 * max(cos(image, text), 0)`` for row-aligned (or broadcast) embeddings.

    Inputs need not be normalised. Identical directions give 100; orthogonal or opposite give 0.
    """
    image = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    text = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
    cos = (image * text).sum(dim=-1)
    return 100.0 * cos.clamp(min=0.0)


def prompt_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean of ``values`` (n - 1 in the variance); NaN below two."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def _build_tiny_clip(folder: Path) -> Path:
    """Write the tiny CLIP config + seeded random weights to ``folder`` (atomic, once)."""
    config_path = folder / f"{TINY_CLIP_ARCH}.json"
    weights_path = folder / f"{TINY_CLIP_ARCH}.safetensors"
    if config_path.is_file() and weights_path.is_file():
        return folder
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-clip-build-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users
    try:
        (tmp / config_path.name).write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_CLIP_SEED)
            # What create_model builds for this config in fp32; loading is strict, so any
            # mismatch would fail loudly rather than silently.
            model = open_clip.CLIP(**TINY_CLIP_CONFIG)  # type: ignore[arg-type]
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / weights_path.name))
        try:
            os.rename(tmp, folder)
        except OSError:
            # A concurrent process got there first; its files are identical.
            if not weights_path.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class ClipScorer:
    """An open_clip model plus tokenizer and preprocessing, for text/image embeddings and scores.

    Embeddings are computed without gradients in fp32 on ``device`` and returned as
    L2-normalised fp32 CPU tensors.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        device: torch.device | str = "cpu",
        cache_dir: Path | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        """Load ``model_name``/``pretrained`` (a tag or a checkpoint file), or the tiny or toy
        world CLIP (``"tiny"``, ``"toyworld"``; ``pretrained`` is ignored for those).

        ``precision`` is open_clip's (``fp32``; ``fp16`` on CUDA only, opt-in: scores change
        by rounding)."""
        self.device = torch.device(device)
        self.batch_size = batch_size
        if model_name == TOYWORLD:
            # The committed scorer of the pretrained toy world: a config JSON + weights file.
            if TOYWORLD_CLIP_ARCH not in open_clip.list_models():
                open_clip.add_model_config(TOYWORLD_CLIP_CONFIG)
            arch, weights = TOYWORLD_CLIP_ARCH, str(TOYWORLD_CLIP_WEIGHTS)
        elif model_name == TINY_CLIP:
            folder = _build_tiny_clip(Path(cache_dir or _DEFAULT_CACHE_DIR) / TINY_CLIP_ARCH)
            # Register from the cached file, so loading works in a fresh process too.
            if TINY_CLIP_ARCH not in open_clip.list_models():
                open_clip.add_model_config(folder / f"{TINY_CLIP_ARCH}.json")
            arch, weights = TINY_CLIP_ARCH, str(folder / f"{TINY_CLIP_ARCH}.safetensors")
        else:
            arch, weights = model_name, pretrained
        self.model_name = model_name
        self.pretrained = pretrained
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=weights,
            device=self.device,
            precision=precision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        # The held-out prompts' embeddings are frozen work: computed at the first rung only.
        self._prompt_embeds: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, shape ``[len(texts), dim]``."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size]))
            emb = self.model.encode_text(tokens.to(self.device), normalize=True)
            chunks.append(emb.float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self._dim())

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings, shape ``[len(images), dim]``."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in chunk])
            # The model may be fp16 (eval.clip_fp16): its input must be too.
            emb = self.model.encode_image(batch.to(self.device, self._dtype), normalize=True)
            chunks.append(emb.float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self._dim())

    @property
    def _dtype(self) -> torch.dtype:
        """The image tower's compute dtype: its first convolution's or linear layer's weights
        (open_clip's fp16 keeps some parameters, e.g. embeddings, in fp32)."""
        return next(m.weight.dtype for m in self.model.visual.modules()
                    if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))

    def _dim(self) -> int:
        return int(self.model.text_projection.shape[-1])

    def score(
        self,
        prompts: Sequence[str],
        images_per_prompt_lists: Sequence[Sequence[Image.Image]],
        train_image_embeds: torch.Tensor | None = None,
    ) -> ScoreResult:
        """Score ``images_per_prompt_lists[p]`` against ``prompts[p]`` (and training images).

        ``train_image_embeds`` (e.g. from ``embed_images`` on the training set) enables CLIP-I:
        the mean pairwise cosine * 100 between generated and training images (DreamBooth's
        CLIP-I), a memorisation signal to read beside the text score.
        """
        if len(prompts) != len(images_per_prompt_lists):
            raise ValueError(
                f"{len(prompts)} prompts but {len(images_per_prompt_lists)} image lists"
            )
        if not prompts or any(len(images) == 0 for images in images_per_prompt_lists):
            raise ValueError("every prompt needs at least one image to score")
        key = tuple(prompts)
        if key not in self._prompt_embeds:
            self._prompt_embeds[key] = self.embed_texts(prompts)
        text = self._prompt_embeds[key]
        flat = [im for images in images_per_prompt_lists for im in images]
        owner = torch.tensor(
            [p for p, images in enumerate(images_per_prompt_lists) for _ in images]
        )
        image = self.embed_images(flat)
        per_image = clip_score_from_embeddings(image, text[owner])
        per_prompt = tuple(float(per_image[owner == p].mean()) for p in range(len(prompts)))
        # Prompt means are the independent units; with one prompt only images are left.
        units = list(per_prompt) if len(prompts) > 1 else per_image.tolist()
        clip_i = None
        if train_image_embeds is not None and len(train_image_embeds) > 0:
            train = torch.nn.functional.normalize(train_image_embeds.float().cpu(), dim=-1)
            clip_i = float(100.0 * (image @ train.T).mean())
        return ScoreResult(
            clip_score=float(per_image.mean()),
            clip_score_stderr=prompt_stderr(units),
            per_prompt=per_prompt,
            clip_i=clip_i,
            n_images=len(flat),
        )


def _label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        # Pillow without FreeType: the fixed bitmap font ignores size.
        return ImageFont.load_default()


def grid_image(images: list[list[Image.Image]], labels: list[str] | None = None) -> Image.Image:
    """Tile images as rows = prompts, columns = seeds; optional label strip above each row.

    Cells take the largest image size; each row is ``label_height + cell_height`` tall, where the
    label strip (12 px, at least, or 1/4 of a cell) exists only when ``labels`` is given.
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} rows")
    cells = [im for row in images for im in row]
    if not cells:
        raise ValueError("grid_image needs at least one image")
    cell_w = max(im.width for im in cells)
    cell_h = max(im.height for im in cells)
    n_cols = max(len(row) for row in images)
    label_h = max(12, cell_h // 4) if labels is not None else 0
    grid = Image.new("RGB", (n_cols * cell_w, len(images) * (label_h + cell_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = _label_font(max(8, label_h - 3)) if labels is not None else None
    for r, row in enumerate(images):
        top = r * (label_h + cell_h)
        if labels is not None:
            text = _fit_text(draw, labels[r], font, n_cols * cell_w - 4)
            draw.text((2, top + 1), text, fill="black", font=font)
        for c, im in enumerate(row):
            grid.paste(im.convert("RGB"), (c * cell_w, top + label_h))
    return grid


def _fit_text(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None,
    max_width: int,
) -> str:
    """Truncate ``text`` with an ellipsis so it fits ``max_width`` pixels."""
    key = (text, getattr(font, "size", None), max_width)
    if key not in _FITTED:
        _FITTED[key] = _fit(draw, text, font, max_width)
    return _FITTED[key]


# Labels are the same prompts at every rung; fitting one measures it many times.
_FITTED: dict[tuple, str] = {}


def _fit(draw: ImageDraw.ImageDraw, text: str,
         font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None, max_width: int) -> str:
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."
