"""What one trial needs to know, as typed immutable objects read once from YAML.

A sweep file (``sweeps/*.yaml``) and an exported ``best.yaml`` share the sections read here:
``model``, ``data``, ``train``, ``eval`` and ``parameters``. The sweep loader in ``hpo.sweep.spec``
reads the search-only sections (method, metric, early_terminate, resources) on top; this module
turns the shared ones into a :class:`TrialConfig` for ``python -m trials.train``, taking every
parameter from a fixed ``value`` or a ``--set name=value`` override.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trials.trigger import control_prompts as strip_prompts
from trials.validation import (
    ConfigError,
    Section,
    check_int,
    check_number,
    closest,
    describe,
    load_yaml_mapping,
)

TINY_MODEL = "tiny"
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
# peft LoraConfig(use_dora=False/True): LoRA, or DoRA (Liu et al. 2024).
ADAPTERS = ("lora", "dora")
# The reference script's --image_interpolation_mode choices (torchvision InterpolationMode
# members, lower case) and its default.
INTERPOLATION_MODES = ("bilinear", "bicubic", "box", "hamming", "lanczos", "nearest",
                       "nearest_exact")
DEFAULT_INTERPOLATION = "lanczos"
DEFAULT_BUCKET_MAX_ASPECT = 2.5  # long side / short side; car side views are about 2:1
# Image sides in pixels (data.resolution, eval.width/height, data.synthetic.size): SD v1.5
# trains at 512 and SDXL at 1024; a side of 100000 is a typo that would plan 10^10-pixel images.
MIN_SIDE, MAX_SIDE = 8, 2048
# train.fused_accumulation: one batch per optimizer step (on), the reference's micro-batches
# one by one (off), or fused with a fall-back to one by one on out-of-memory (auto).
FUSED_MODES = ("auto", "on", "off")
# The file a saved LoRA's weights are in (diffusers' name), inside its folder; here, beside the
# settings, so that readers of a LoRA folder need not import torch to find it.
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"

# Module-name patterns handed to peft. Plain names match any module whose name ends with them
# (peft's suffix rule); the cross-attention preset needs a regex so attn1 is left alone.
TARGET_PRESETS: dict[str, str | tuple[str, ...]] = {
    "cross_attn": r".*attn2\.(to_q|to_k|to_v|to_out\.0)",
    "attn": ("to_q", "to_k", "to_v", "to_out.0"),
    "attn_ff": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
}
PARAMETER_NAMES = ("rank", "lora_alpha", "learning_rate", "max_train_steps", "target_modules",
                   "adapter", "caption_dropout", "preservation", "preservation_weight")
# Parameters a sweep may leave out: alpha defaults to rank, adapter to lora, caption dropout to
# train.caption_dropout, the preservation remedy and its weight to the preservation section's.
OPTIONAL_PARAMETERS = ("lora_alpha", "adapter", "caption_dropout", "preservation",
                       "preservation_weight")
# Training remedies that keep the base model (trials.train.preserve): none; DreamBooth's prior
# preservation (Ruiz et al. 2022; class images drawn once by the base model); kohya sd-scripts'
# differential output preservation (PR #1710; the base model's own prediction as the target).
PRESERVATION_METHODS = ("none", "prior", "dop")
PARAMETER_PATHS = {name: f"parameters.{name}" for name in PARAMETER_NAMES}
_PARAMETER_KEYS = ("value", "values", "distribution", "min", "max", "q")
_ALPHA_RULE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*\*\s*)?rank\s*$")
TOP_LEVEL_KEYS = (
    "name", "model", "data", "train", "eval", "metric", "method", "parameters",
    "early_terminate", "resources", "result", "select", "confirm", "preservation", "racing",
)
PRESERVATION_KEYS = ("trigger", "control_prompts", "method", "weight", "class_images",
                     "class_inference_steps", "require")


@dataclass(frozen=True)
class ModelSpec:
    """Which Stable Diffusion weights to fine-tune: a hub id, a local folder, or ``tiny``."""

    name: str = TINY_MODEL
    revision: str | None = None
    variant: str | None = None


@dataclass(frozen=True)
class SyntheticData:
    """Ask for a generated car dataset in ``train_dir`` (the CPU demo and tests)."""

    n_images: int = 16
    size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class DataSpec:
    """The training folder in the reference script's imagefolder format and its transforms."""

    train_dir: Path
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    synthetic: SyntheticData | None = None
    holdout: int = 0  # images of train_dir never trained on (trials.data.holdout)
    holdout_seed: int = 0
    image_interpolation_mode: str = DEFAULT_INTERPOLATION
    # Aspect-ratio buckets (trials.data.buckets); off: the reference's square crop.
    aspect_buckets: bool = False
    bucket_max_aspect: float = DEFAULT_BUCKET_MAX_ASPECT


@dataclass(frozen=True)
class TrainSpec:
    """Settings every trial shares, named after the reference script's flags."""

    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    mixed_precision: str = "no"
    seed: int = 42
    max_grad_norm: float | None = 1.0
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    gradient_checkpointing: bool = False
    prediction_type: str | None = None
    fused_accumulation: str = "auto"  # see trials.train.accumulate
    # Probability of training a sample on the empty caption (for classifier-free guidance);
    # kohya sd-scripts' --caption_dropout_rate. A parameters.caption_dropout overrides it.
    caption_dropout: float = 0.0


@dataclass(frozen=True)
class EvalSpec:
    """How a LoRA is scored: images for held-out prompts, CLIP text-image similarity."""

    prompts: Path
    prompt_list: tuple[str, ...]
    images_per_prompt: int = 2
    inference_steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 1234
    clip_model: str = "ViT-H-14"
    clip_pretrained: str | None = "laion2b_s32b_b79k"
    every_steps: int = 100
    batch_size: int = 8
    # Explicit evaluation steps (steps searched as a fidelity, see hpo.sweep.fidelity); None: every
    # ``every_steps``.
    rungs: tuple[int, ...] | None = None
    # Opt-in speed-ups of the rung evaluation that change the numbers (see trials.eval.fast_eval):
    # the LoRA merged into the weights while drawing (pixels can move by rounding), and CUDA's.
    merge_lora: bool = False
    clip_fp16: bool = False
    channels_last: bool = False
    compile_unet: bool = False
    reference_dir: Path | None = None  # held-out real images, imagefolder format
    dino_model: str = "facebook/dinov2-base"  # hub id, local folder, or `tiny`
    width: int | None = None  # images drawn for scoring; None: data.resolution
    height: int | None = None
    # Set by the sweep, never read from the eval section (hpo.sweep.racing, hpo.sweep.fidelity).
    # Racing: a rung draws its prompts in chunks of this many, in the shared shuffled order
    # (trials.eval.evaluator.prompt_order), asking the orchestrator after each; None: at once.
    chunk_prompts: int | None = None
    # Prompts as a fidelity: at these rungs (ASHA's alone) only the first ``subset_prompts`` of
    # that order are scored; every other rung scores all the prompts.
    subset_rungs: tuple[int, ...] = ()
    subset_prompts: int | None = None

    def prompt_budget(self, step: int) -> int:
        """How many held-out prompts the rung at ``step`` scores."""
        if step in self.subset_rungs and self.subset_prompts:
            return min(self.subset_prompts, len(self.prompt_list))
        return len(self.prompt_list)


@dataclass(frozen=True)
class PreservationSpec:
    """What the LoRA must not change: the trigger, the control prompts, the training remedy.

    ``control_prompt_list`` are the held-out prompts without the trigger (same order, so prompt
    ``i`` and control prompt ``i`` share seeds), or the lines of ``control_prompts``;
    ``brand_prompt_list`` are their brand versions (the held-out prompt, or ``"<control>,
    <trigger>"`` for a control file), used by the leak measure. Empty without a trigger.
    ``require`` is read by the sweep (``hpo.sweep.preservation``), not by a trial.
    """

    trigger: str | None = None
    control_prompts: Path | None = None
    control_prompt_list: tuple[str, ...] = ()
    brand_prompt_list: tuple[str, ...] = ()
    method: str = "none"  # PRESERVATION_METHODS; parameters.preservation overrides
    weight: float = 1.0  # the preservation loss's weight; parameters.preservation_weight too
    class_images: int = 0  # prior: images the base model draws once (0: one per caption)
    class_inference_steps: int = 25

    @property
    def measured(self) -> bool:
        return bool(self.control_prompt_list)


@dataclass(frozen=True)
class HyperParams:
    """The values a sweep varies. ``target_modules`` is a preset name or comma-joined names."""

    rank: int
    lora_alpha: float
    learning_rate: float
    max_train_steps: int
    target_modules: str
    adapter: str = "lora"
    caption_dropout: float | None = None  # None: train.caption_dropout
    preservation: str | None = None  # None: preservation.method
    preservation_weight: float | None = None  # None: preservation.weight


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; ``output_dir`` is where its LoRA checkpoints go."""

    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    eval: EvalSpec
    params: HyperParams
    output_dir: Path
    cache_dir: Path
    extras: Mapping[str, Any] = field(default_factory=dict)
    preservation: PreservationSpec = field(default_factory=PreservationSpec)

    def with_params(self, params: HyperParams) -> TrialConfig:
        return replace(self, params=params)

    @property
    def caption_dropout(self) -> float:
        """The searched ``parameters.caption_dropout`` if any, else ``train.caption_dropout``."""
        searched = self.params.caption_dropout
        return self.train.caption_dropout if searched is None else searched

    @property
    def preservation_method(self) -> str:
        """The searched ``parameters.preservation`` if any, else ``preservation.method``."""
        return self.params.preservation or self.preservation.method

    @property
    def preservation_weight(self) -> float:
        """The searched ``parameters.preservation_weight`` if any, else
        ``preservation.weight``."""
        searched = self.params.preservation_weight
        return self.preservation.weight if searched is None else searched


def rung_steps(every: int, max_steps: int, explicit: tuple[int, ...] | None = None
               ) -> list[int]:
    """Evaluation steps: every ``every`` steps (or the ``explicit`` ones below
    ``max_steps``), and always the last step."""
    if explicit:
        return [*sorted(s for s in set(explicit) if s < max_steps), max_steps]
    steps = list(range(every, max_steps + 1, every))
    return steps if steps and steps[-1] == max_steps else [*steps, max_steps]


def read_prompts(path: Path, file: str | Path, key: str) -> tuple[str, ...]:
    """Read a prompts file: one prompt a line, blank lines and ``#`` comments skipped."""
    if not path.is_file():
        raise ConfigError(file, key, f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            file, key, f"prompts file {path} is not UTF-8 (byte {err.start})"
        ) from err
    prompts: list[str] = []
    first: dict[str, int] = {}  # prompt -> its line
    repeats: list[tuple[int, int]] = []  # (line, the line it repeats)
    for number, line in enumerate(text.splitlines(), 1):
        prompt = line.strip()
        if not prompt or prompt.startswith("#"):
            continue
        if prompt in first:
            repeats.append((number, first[prompt]))
            continue
        first[prompt] = number
        prompts.append(prompt)
    if repeats:
        # A repeated prompt is scored as another held-out prompt: it narrows the standard
        # errors over prompts without adding a prompt (more images of one prompt are
        # eval.images_per_prompt).
        line, of = repeats[0]
        more = f", and {len(repeats) - 1:,} more repeated line(s)" if len(repeats) > 1 else ""
        raise ConfigError(file, key, f"prompts file {path}: line {line} repeats line {of} "
                          f"({text.splitlines()[of - 1].strip()!r}){more}; give each held-out "
                          "prompt once (eval.images_per_prompt draws more images of each)")
    if not prompts:
        raise ConfigError(file, key, f"prompts file {path} has no prompts")
    return tuple(prompts)


def resolve_path(value: str, base_dir: Path) -> Path:
    """Paths in YAML are relative to the current directory, like the reference script's flags."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def parse_model(section: Section) -> ModelSpec:
    section.allow_only(("name", "revision", "variant"))
    name = section.string("name", TINY_MODEL)
    if name != TINY_MODEL and (name.startswith((".", "/", "~")) or Path(name).exists()):
        name = str(resolve_path(name, Path.cwd()))  # a local folder: trials run elsewhere
    return ModelSpec(
        name=name,
        revision=section.string("revision", None),
        variant=section.string("variant", None),
    )


def parse_data(section: Section, base_dir: Path) -> DataSpec:
    section.allow_only(
        ("train_dir", "image_column", "caption_column", "resolution", "center_crop",
         "random_flip", "synthetic", "holdout", "holdout_seed", "image_interpolation_mode",
         "aspect_buckets", "bucket_max_aspect")
    )
    synthetic = None
    if section.has("synthetic"):
        gen = section.sub("synthetic")
        gen.allow_only(("n_images", "size", "seed"))
        synthetic = SyntheticData(
            n_images=gen.integer("n_images", 16, minimum=1),
            size=gen.integer("size", 64, minimum=MIN_SIDE, maximum=MAX_SIDE),
            seed=gen.integer("seed", 0),
        )
    resolution = _image_side(section, "resolution", 512)
    return DataSpec(
        train_dir=resolve_path(section.string("train_dir"), base_dir),
        image_column=section.string("image_column", "image"),
        caption_column=section.string("caption_column", "text"),
        resolution=resolution,
        center_crop=section.boolean("center_crop", True),
        random_flip=section.boolean("random_flip", False),
        synthetic=synthetic,
        holdout=section.integer("holdout", 0, minimum=0),
        holdout_seed=section.integer("holdout_seed", 0, minimum=0),
        image_interpolation_mode=section.string(
            "image_interpolation_mode", DEFAULT_INTERPOLATION, INTERPOLATION_MODES),
        aspect_buckets=section.boolean("aspect_buckets", False),
        bucket_max_aspect=section.number("bucket_max_aspect", DEFAULT_BUCKET_MAX_ASPECT,
                                         minimum=1),
    )


def parse_train(section: Section) -> TrainSpec:
    # The reference script's --learning_rate, --rank and --max_train_steps are parameters here.
    section.allow_only(TrainSpec.__dataclass_fields__, PARAMETER_PATHS)
    snr = section.number("snr_gamma", None, above=0)
    # 0 turns clipping off; the reference script clips at 1.0 (in name only: see DESIGN.md).
    grad = section.number("max_grad_norm", 1.0, minimum=0)
    return TrainSpec(
        train_batch_size=section.integer("train_batch_size", 1, minimum=1),
        gradient_accumulation_steps=section.integer("gradient_accumulation_steps", 1, minimum=1),
        lr_scheduler=section.string("lr_scheduler", "constant", LR_SCHEDULERS),
        lr_warmup_steps=section.integer("lr_warmup_steps", 0, minimum=0),
        mixed_precision=section.string("mixed_precision", "no", MIXED_PRECISION),
        seed=section.integer("seed", 42, minimum=0),
        max_grad_norm=grad or None,
        snr_gamma=snr,
        noise_offset=section.number("noise_offset", 0.0, minimum=0),
        gradient_checkpointing=section.boolean("gradient_checkpointing", False),
        prediction_type=section.string("prediction_type", None, PREDICTION_TYPES),
        fused_accumulation=parse_fused(section),
        caption_dropout=section.number("caption_dropout", 0.0, minimum=0, maximum=1),
    )


def parse_fused(section: Section) -> str:
    """``train.fused_accumulation``: auto, on or off (YAML's bare true/false/on/off too)."""
    value = section.raw("fused_accumulation", "auto")
    if isinstance(value, bool):
        return "on" if value else "off"
    return section.string("fused_accumulation", "auto", FUSED_MODES)


def parse_eval(section: Section, base_dir: Path) -> EvalSpec:
    section.allow_only(
        ("prompts", "images_per_prompt", "inference_steps", "guidance_scale", "seed",
         "clip_model", "clip_pretrained", "every_steps", "batch_size", "reference_dir",
         "dino_model", "width", "height", "merge_lora", "clip_fp16", "channels_last",
         "compile_unet", "rungs")
    )
    reference_dir = resolve_path(section.string("reference_dir"), base_dir) \
        if section.has("reference_dir") else None
    dino_model = section.string("dino_model", "facebook/dinov2-base")
    if dino_model != TINY_MODEL and (dino_model.startswith((".", "/", "~"))
                                     or Path(dino_model).exists()):
        dino_model = str(resolve_path(dino_model, Path.cwd()))  # a local folder
    rungs = None
    if section.has("rungs"):
        raw = section.raw("rungs")
        if not isinstance(raw, list) or not raw:
            raise section.error(f"must be a non-empty list of steps (got {describe(raw)})",
                                "rungs")
        rungs = tuple(sorted({check_int(v, section.error, f"rungs[{i}]", 1, None)
                              for i, v in enumerate(raw)}))
    prompts = resolve_path(section.string("prompts"), base_dir)
    clip_model = section.string("clip_model", "ViT-H-14")
    default_tag = None if clip_model in (TINY_MODEL, "toyworld") else "laion2b_s32b_b79k"
    return EvalSpec(
        prompts=prompts,
        prompt_list=read_prompts(prompts, section.file, section.key_path("prompts")),
        images_per_prompt=section.integer("images_per_prompt", 2, minimum=1),
        inference_steps=section.integer("inference_steps", 25, minimum=1),
        guidance_scale=section.number("guidance_scale", 7.5, minimum=0),
        seed=section.integer("seed", 1234, minimum=0),
        clip_model=clip_model,
        clip_pretrained=section.string("clip_pretrained", default_tag),
        every_steps=section.integer("every_steps", 100, minimum=1),
        batch_size=section.integer("batch_size", 8, minimum=1),
        merge_lora=section.boolean("merge_lora", False),
        clip_fp16=section.boolean("clip_fp16", False),
        channels_last=section.boolean("channels_last", False),
        compile_unet=section.boolean("compile_unet", False),
        rungs=rungs,
        reference_dir=reference_dir,
        dino_model=dino_model,
        width=_image_side(section, "width"),
        height=_image_side(section, "height"),
    )


def parse_preservation(section: Section, eval_spec: EvalSpec, base_dir: Path
                       ) -> PreservationSpec:
    """``preservation``: the trigger, control prompts and training remedy (all optional).

    Without ``trigger`` nothing is measured and ``method`` must stay ``none``. Raises
    :class:`ConfigError` naming the key: a held-out prompt without the trigger, a control
    prompts file that is missing or empty, or one with another number of lines than needed.
    """
    section.allow_only(PRESERVATION_KEYS)
    trigger = section.string("trigger", None)
    method = section.string("method", "none", PRESERVATION_METHODS)
    spec = PreservationSpec(
        trigger=trigger.strip() if trigger else None,
        method=method,
        weight=section.number("weight", 1.0, minimum=0, maximum=10_000),
        class_images=section.integer("class_images", 0, minimum=0, maximum=100_000),
        class_inference_steps=section.integer("class_inference_steps", 25, minimum=1,
                                              maximum=1000),
    )
    if spec.trigger is None:
        for key in ("control_prompts", "method", "require"):
            if section.has(key) and not (key == "method" and method == "none"):
                raise section.error("needs preservation.trigger (the brand phrase the "
                                    "control prompts and captions are measured without)", key)
        return spec
    if section.has("control_prompts"):
        path = resolve_path(section.string("control_prompts"), base_dir)
        controls = read_prompts(path, section.file, section.key_path("control_prompts"))
        brands = tuple(f"{c}, {spec.trigger}" for c in controls)
        return replace(spec, control_prompts=path, control_prompt_list=controls,
                       brand_prompt_list=brands)
    try:
        controls = strip_prompts(eval_spec.prompt_list, spec.trigger, eval_spec.prompts)
    except ValueError as err:
        raise section.error(str(err), "trigger") from None
    return replace(spec, control_prompt_list=controls, brand_prompt_list=eval_spec.prompt_list)


def _image_side(section: Section, key: str, default: int | None = None) -> int | None:
    # The pipeline needs sides divisible by the VAE's factor (8 for SD v1.5).
    value = section.raw(key, default)
    if value is None:
        return None
    value = check_int(value, lambda message, k: section.error(
        f"{message}; a side in pixels from {MIN_SIDE} to {MAX_SIDE}, a multiple of 8", k),
        key, MIN_SIDE, MAX_SIDE)
    if value % 8:
        raise section.error(f"must be a multiple of 8 (got {value})", key)
    return value


def parse_target_modules(value: Any, error: Any, key: str) -> str:
    """A preset name, or an explicit list of module names (checked against the UNet later)."""
    if isinstance(value, str) and "," not in value:
        if value not in TARGET_PRESETS:
            raise error(
                f"unknown preset {value!r}; presets: {', '.join(TARGET_PRESETS)}, "
                f"or a list of module names{closest(value, TARGET_PRESETS)}", key)
        return value
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise error(
            f"must be a preset ({', '.join(TARGET_PRESETS)}) or a non-empty list of module "
            f"names (got {describe(value)})", key)
    cleaned = []
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.]+", name.strip()):
            raise error(f"module names must be dotted identifiers (got {describe(name)})", key)
        cleaned.append(name.strip())
    return ",".join(cleaned)


def alpha_rule(value: Any) -> float | None:
    """The factor of an alpha written as ``rank`` or ``2*rank``; None when it is a number."""
    if isinstance(value, str):
        match = _ALPHA_RULE.match(value)
        if match:
            return float(match.group(1) or 1.0)
    return None


def check_param_value(name: str, value: Any, error: Any, key: str) -> Any:
    """Check one concrete value of a tunable parameter; returns it in its canonical type."""
    if name == "rank":
        return check_int(value, error, key, 1, 1024)
    if name == "max_train_steps":
        return check_int(value, error, key, 1, None)
    if name == "learning_rate":
        return check_number(value, error, key, above=0, maximum=1.0)
    if name == "target_modules":
        return parse_target_modules(value, error, key)
    if name == "adapter":
        if value not in ADAPTERS:
            raise error(f"must be one of {', '.join(ADAPTERS)} (got {describe(value)})", key)
        return value
    if name == "caption_dropout":
        return check_number(value, error, key, minimum=0, maximum=1)
    if name == "preservation":
        if value not in PRESERVATION_METHODS:
            raise error(f"must be one of {', '.join(PRESERVATION_METHODS)} "
                        f"(got {describe(value)})", key)
        return value
    if name == "preservation_weight":
        return check_number(value, error, key, minimum=0, maximum=10_000)
    if name == "lora_alpha":
        factor = alpha_rule(value)
        if factor is not None:
            if factor <= 0:
                raise error(f"must be 'rank' or 'N*rank' with N > 0 (got {describe(value)})", key)
            return value.replace(" ", "")
        if isinstance(value, str) and not re.fullmatch(r"[-+0-9.eE]+", value):
            raise error(f"must be a number, 'rank' or 'N*rank' (got {describe(value)})", key)
        return check_number(value, error, key, above=0)
    raise error(f"unknown parameter{closest(name, PARAMETER_NAMES)}; "
                f"tunable: {', '.join(PARAMETER_NAMES)}", key)


def make_params(values: Mapping[str, Any]) -> HyperParams:
    """Build :class:`HyperParams` from checked values, applying an alpha rule such as ``rank``."""
    rank = int(values["rank"])
    alpha = values.get("lora_alpha", "rank")
    factor = alpha_rule(alpha)
    return HyperParams(
        rank=rank,
        lora_alpha=float(rank * factor) if factor is not None else float(alpha),
        learning_rate=float(values["learning_rate"]),
        max_train_steps=int(values["max_train_steps"]),
        target_modules=str(values["target_modules"]),
        adapter=str(values.get("adapter", "lora")),
        caption_dropout=None if values.get("caption_dropout") is None
        else float(values["caption_dropout"]),
        preservation=None if values.get("preservation") is None
        else str(values["preservation"]),
        preservation_weight=None if values.get("preservation_weight") is None
        else float(values["preservation_weight"]),
    )


def parse_overrides(pairs: list[str], file: str | Path) -> dict[str, Any]:
    """``name=value`` pairs from the command line, values read as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise ConfigError(file, "--set", f"expected name=value (got {pair!r})")
        if name in out:
            raise ConfigError(file, f"--set {name}", f"given more than once (got {pair!r})")
        try:
            out[name] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "invalid YAML"
            raise ConfigError(
                file, f"--set {name}", f"value must be a YAML scalar or list ({problem}) "
                f"(got {text!r})") from None
    return out


def load_trial_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None, *, output_dir: Path,
    cache_dir: Path, base_dir: Path | None = None,
) -> TrialConfig:
    """Read a sweep file or an exported ``best.yaml`` into one trial's config.

    Every parameter must have a fixed ``value`` in the file or an entry in ``overrides``.
    """
    file = Path(path)
    raw = load_yaml_mapping(file)
    root = Section(file, "", raw)
    root.allow_only(TOP_LEVEL_KEYS, PARAMETER_PATHS)
    base = base_dir or Path.cwd()
    overrides = dict(overrides or {})
    params_section = root.sub("parameters")
    for name in params_section.data:
        if name not in PARAMETER_NAMES:
            check_param_value(name, None, params_section.error, name)  # raises: unknown name
    for name in overrides:
        if name not in PARAMETER_NAMES:
            raise ConfigError(
                file, f"--set {name}", f"unknown parameter{closest(str(name), PARAMETER_NAMES)}; "
                f"tunable: {', '.join(PARAMETER_NAMES)}")

    def override_error(message: str, key: str) -> ConfigError:
        return ConfigError(file, f"--set {key}", message)

    fixed: dict[str, Any] = {}
    for name in params_section.data:
        spec = params_section.sub(name)
        spec.allow_only(_PARAMETER_KEYS)
        if name in overrides:
            continue
        if not spec.has("value"):
            raise spec.error(
                f"is searched, not fixed; give it with --set {name}=VALUE")
        fixed[name] = spec.raw("value")
    values = {}
    for name in PARAMETER_NAMES:
        if name in overrides:
            values[name] = check_param_value(name, overrides[name], override_error, name)
        elif name in fixed:
            values[name] = check_param_value(
                name, fixed[name], params_section.sub(name).error, "value")
        elif name not in OPTIONAL_PARAMETERS:  # alpha defaults to rank, adapter to lora
            raise params_section.error(f"is required (a value, or --set {name}=VALUE)", name)
    eval_spec = parse_eval(root.sub("eval"), base)
    return TrialConfig(
        model=parse_model(root.sub("model")),
        data=parse_data(root.sub("data"), base),
        train=parse_train(root.sub("train")),
        eval=eval_spec,
        params=make_params(values),
        output_dir=output_dir,
        cache_dir=cache_dir,
        preservation=parse_preservation(root.sub("preservation"), eval_spec, base),
    )
