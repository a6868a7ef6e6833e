"""Loading Stable Diffusion v1.5 components, and an offline tiny stand-in for tests and demos.

Real sweeps load SD v1.5 from a hub id or a local diffusers folder. The CPU demo uses
``model="toyworld"``: a small SD-shaped model pretrained here on drawn cars and committed as a
diffusers folder (see trials.toyworld). Fast unit tests use ``model="tiny"``: a few-MB model
built from small configs with fixed seeds and saved as an ordinary diffusers folder, so exactly
the same ``from_pretrained(src, subfolder=...)`` code runs for all three. Their tokenizer is the
real CLIP BPE vocabulary (shipped inside open-clip-torch), so prompt token ids match SD v1.5's.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from trials.config import TINY_MODEL
from trials.data.buckets import SD_SIDE_MULTIPLE, side_multiple
from trials.errors import ModelError
from trials.toyworld import SD_DIR as TOYWORLD_SD_DIR
from trials.toyworld import TOYWORLD

# Bump when the tiny configs change, so stale cached builds are rebuilt instead of reused.
TINY_MODEL_VERSION = "1"
TINY_SEED = 0
# The 2-block VAE downsamples by 2 (not 8 like SD v1.5): 32 px images -> 16x16 latents.
TINY_RESOLUTION = 32

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_COMPLETE_MARKER = ".tiny-model-complete"

# SD v1.5's training noise schedule; the tiny model shares it so timestep/SNR code is exercised
# with realistic values.
SD15_SCHEDULER_CONFIG: dict[str, object] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
}


@dataclass
class SDComponents:
    """The pieces of a Stable Diffusion model that LoRA training and evaluation need."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    source: str  # local path or hub id actually loaded


def _clip_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rebuild OpenAI CLIP's vocabulary and merges from open_clip's packaged BPE file."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    # Same slice as CLIP/open_clip: line 0 is a header, and 49152 - 256 - 2 merges are used,
    # which with 512 byte tokens and 2 specials gives exactly 49408 ids.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges  # type: ignore[return-value]


def _write_clip_vocab_files(folder: Path) -> None:
    """Write vocab.json + merges.txt in the layout of SD v1.5's ``tokenizer/`` folder."""
    vocab, merges = _clip_bpe_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # CLIPTokenizer skips the first line of merges.txt as a version header.
    body = "\n".join(f"{a} {b}" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + body + "\n", encoding="utf-8")


def _tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        sample_size=TINY_RESOLUTION,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )


def _tiny_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=32,
        # Real CLIP special ids, so pooling at the EOS token finds the right position.
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_tiny_model(out_dir: Path) -> Path:
    """Build the deterministic tiny SD model and save it as a diffusers folder in ``out_dir``.

    Weights depend only on ``TINY_SEED``; the global torch RNG state is left untouched.
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_dir = Path(tmp)
        # Load the tokenizer from vocab.json + merges.txt: the same route SD v1.5's tokenizer
        # folder takes, so that route is exercised offline too.
        _write_clip_vocab_files(vocab_dir)
        tokenizer = CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=77)
        _save_tiny_pipeline(tokenizer, out_dir)
        # Keep SD v1.5's file layout beside the tokenizer.json that transformers writes.
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(vocab_dir / name, out_dir / "tokenizer" / name)
    return out_dir


def _save_tiny_pipeline(tokenizer: CLIPTokenizer, out_dir: Path) -> None:
    """Create the seeded tiny networks and save them with the tokenizer as a diffusers folder."""
    with torch.random.fork_rng(devices=[]):
        # Re-seed per component so changing one config does not change the others' weights.
        torch.manual_seed(TINY_SEED)
        unet = _tiny_unet()
        torch.manual_seed(TINY_SEED + 1)
        vae = _tiny_vae()
        torch.manual_seed(TINY_SEED + 2)
        text_encoder = _tiny_text_encoder()

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDPMScheduler(**SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)


def _is_complete_tiny(path: Path) -> bool:
    marker = path / _COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == TINY_MODEL_VERSION


def resolve_model_path(model: str, cache_dir: Path) -> str:
    """Map ``"tiny"`` to a built tiny model under ``cache_dir/tiny-sd`` and ``"toyworld"`` to the
    committed pretrained world model (``trials/toyworld/weights/sd``); return others unchanged.

    The tiny model is built once: into a temporary folder that is renamed into place, so
    concurrent trials never see a half-written model and a crashed build is never reused.
    """
    if model == TOYWORLD:
        return str(TOYWORLD_SD_DIR)
    if model != TINY_MODEL:
        return model
    cache_dir = Path(cache_dir)
    target = cache_dir / "tiny-sd"
    if _is_complete_tiny(target):
        return str(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-sd-build-", dir=cache_dir))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users
    try:
        build_tiny_model(tmp)
        (tmp / _COMPLETE_MARKER).write_text(TINY_MODEL_VERSION)
        if target.exists() and not _is_complete_tiny(target):
            # Stale or partial folder from an older version: move it aside, then delete it.
            trash = Path(tempfile.mkdtemp(prefix=".tiny-sd-stale-", dir=cache_dir))
            with contextlib.suppress(FileNotFoundError):  # a concurrent build may have moved it
                os.rename(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race; its build is identical, so use it.
            if not _is_complete_tiny(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _looks_like_local_path(model: str) -> bool:
    """Whether ``model`` names a local folder rather than a hub id like ``org/name``."""
    if Path(model).expanduser().exists():
        return True
    if model.startswith(("/", "./", "../", "~", ".\\")) or "\\" in model:
        return True
    # Hub ids have at most one slash; "models/sd15" with an existing "models/" is a local path.
    return model.count("/") > 1 or ("/" in model and Path(model.split("/")[0]).is_dir())


def check_model_source(source: str) -> None:
    """Raise ``ModelError`` if a local model folder or one of its subfolders is missing.

    Hub ids are not checked here (no hub access offline); their errors come from loading.
    """
    if not _looks_like_local_path(source):
        return
    root = Path(source).expanduser()
    if root.exists() and not root.is_dir():
        raise ModelError(f"{root} is a file, not a directory (a diffusers model folder)")
    if not root.is_dir():
        raise ModelError(f"model folder not found: {root}")
    for sub in SUBFOLDERS:
        if not (root / sub).is_dir():
            raise ModelError(f"model folder {root} has no '{sub}' subfolder")


def load_components(
    model: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
    cache_dir: Path,
    device: torch.device | str = "cpu",
    weight_dtype: torch.dtype = torch.float32,
) -> SDComponents:
    """Load tokenizer, text encoder, VAE, UNet and DDPM noise scheduler, as the reference does.

    ``model`` is ``"tiny"`` (built under ``cache_dir``), a local diffusers folder or a hub id;
    hub downloads go to the usual Hugging Face cache (``HF_HOME``), not ``cache_dir``. All three
    networks are frozen (``requires_grad_(False)``, eval mode), moved to ``device`` and loaded in
    ``weight_dtype``; the trainer adds and upcasts LoRA parameters itself.
    """
    source = resolve_model_path(model, Path(cache_dir))
    check_model_source(source)
    hub = {"revision": revision}
    weights = {"revision": revision, "variant": variant, "dtype": weight_dtype}

    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **hub)
    noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **hub)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **weights)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights)

    for net in (text_encoder, vae, unet):
        net.requires_grad_(False)
        net.eval()
        # dtype was applied by from_pretrained; a later .to(dtype) only adds diffusers warnings.
        net.to(device=device)
    return SDComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        source=source,
    )


def _has_trainable_params(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def make_pipeline(
    components: SDComponents,
    device: torch.device | str,
    dtype: torch.dtype,
) -> StableDiffusionPipeline:
    """Wrap already-loaded components in an inference pipeline, without reloading from disk.

    The modules are shared, not copied, so the pipeline sees the UNet's current LoRA weights.
    Frozen modules are cast to ``dtype``; a module holding trainable (LoRA) parameters keeps its
    dtypes, because casting would also cast the fp32 LoRA weights being trained. The caller
    decides train/eval mode (LoRA dropout is active in train mode).
    """
    # A fresh scheduler per pipeline: schedulers are stateful during sampling.
    scheduler = DPMSolverMultistepScheduler.from_config(components.noise_scheduler.config)
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler,
        safety_checker=None,  # black "NSFW" images would poison CLIP scores
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for net in (components.text_encoder, components.vae, components.unet):
        # Pass dtype only when it changes something: diffusers warns on every .to(dtype=...).
        current = {p.dtype for p in net.parameters()}
        if _has_trainable_params(net) or current == {dtype}:
            net.to(device=device)
        else:
            net.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_linear_module_names(unet: nn.Module) -> list[str]:
    """Names of the UNet's LoRA-targetable layers (``nn.Linear`` and ``nn.Conv2d``).

    Layers already wrapped by peft are listed once under their original name, without their
    ``base_layer``/``lora_A``/``lora_B`` children, so the list stays valid as target names.
    """
    names: list[str] = []
    wrapped: list[str] = []
    for name, module in unet.named_modules():
        if any(name.startswith(prefix + ".") for prefix in wrapped):
            continue
        if hasattr(module, "base_layer"):
            wrapped.append(name)
            names.append(name)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            names.append(name)
    return names


def unet_module_names(model_name: str) -> list[str] | None:
    """The targetable module names (:func:`unet_linear_module_names`) of the model's UNet, from
    its config alone: the UNet is built on the meta device, so no weight is read or allocated.
    None where the config is not on this machine (a hub id: the trial's download has it)."""
    if model_name == TINY_MODEL:
        config = dict(_tiny_unet().config)
    else:
        folder = TOYWORLD_SD_DIR if model_name == TOYWORLD else Path(model_name).expanduser()
        file = folder / "unet" / "config.json"
        if not file.is_file():
            return None
        config = json.loads(file.read_text(encoding="utf-8"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return unet_linear_module_names(unet)


def model_side_multiple(model_name: str) -> tuple[int, str]:
    """The bucket side multiple (:func:`trials.data.buckets.side_multiple`) of a model before
    it is loaded, and where the figure came from: the tiny model's configs, a local diffusers
    folder's, else SD v1.5's 64 (a hub id)."""
    import json

    if model_name == TINY_MODEL:
        return side_multiple(_tiny_vae().config, _tiny_unet().config), "the tiny model's"
    if model_name:
        folder = TOYWORLD_SD_DIR if model_name == TOYWORLD else Path(model_name)
        vae, unet = folder / "vae" / "config.json", folder / "unet" / "config.json"
        if vae.is_file() and unet.is_file():
            return side_multiple(json.loads(vae.read_text()), json.loads(unet.read_text())), \
                "the model folder's"
    return SD_SIDE_MULTIPLE, "SD v1.5's"
