"""What one trial needs to know, as typed immutable objects read once from YAML.

A sweep file (``sweeps/*.yaml``) and an exported ``best.yaml`` share the sections read here:
``model``, ``data``, ``train``, ``eval`` and ``parameters``. The sweep loader in ``hpo.sweep.spec``
reads the search-only sections (method, metric, early_terminate, resources) on top; this module
turns the shared ones into a :class:`TrialConfig` for ``python -m trials.train``, taking every
parameter from a fixed ``value`` or a ``--set name=value`` override.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trials import settings
from trials.parameters import (
    PARAMETER_PATHS,
    PRESERVATION_METHODS,
    HyperParams,
    fixed_values,
    make_params,
    parse_parameters,
)
from trials.settings import resolve_path, setting
from trials.trigger import control_prompts as strip_prompts
from trials.trigger import has_trigger
from trials.validation import (
    ConfigError,
    Section,
    check_int,
    describe,
    load_yaml_mapping,
)

TINY_MODEL = "tiny"
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
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
# Beside the LoRA in a rung's folder: what the trial needs to go on from that rung
# (trials.train.resume); not part of the LoRA, so an exported LoRA leaves it out.
RESUME_DIR = "resume"

TOP_LEVEL_KEYS = (
    "name", "model", "data", "train", "eval", "metric", "method", "parameters",
    "early_terminate", "resources", "result", "select", "confirm", "preservation", "racing",
)


def _local_name(section: Section, key: str, default: str) -> str:
    """A model id as written, or an absolute folder when it names a local one (a trial may run
    in another working directory: a Ray worker, a pod)."""
    name = section.string(key, default)
    if name != TINY_MODEL and (name.startswith((".", "/", "~")) or Path(name).exists()):
        name = str(resolve_path(name, Path.cwd()))
    return name


def _image_side(section: Section, key: str, default: int | None) -> int | None:
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


_SIDE_SCHEMA = {"type": "integer", "minimum": MIN_SIDE, "maximum": MAX_SIDE, "multipleOf": 8}


def _grad_norm(section: Section, key: str, default: float | None) -> float | None:
    # 0 turns clipping off; the reference script clips at 1.0 (in name only: see the README).
    return section.number(key, default, minimum=0) or None


def _fused(section: Section, key: str, default: str) -> str:
    """``train.fused_accumulation``: auto, on or off (YAML's bare true/false/on/off too)."""
    value = section.raw(key, default)
    if isinstance(value, bool):
        return "on" if value else "off"
    return section.string(key, default, FUSED_MODES)


def _rungs(section: Section, key: str, default: None) -> tuple[int, ...] | None:
    if not section.has(key):
        return default
    raw = section.raw(key)
    if not isinstance(raw, list) or not raw:
        raise section.error(f"must be a non-empty list of steps (got {describe(raw)})", key)
    return tuple(sorted({check_int(v, section.error, f"{key}[{i}]", 1, None)
                         for i, v in enumerate(raw)}))


def _clip_pretrained(section: Section, key: str, default: str | None) -> str | None:
    # open_clip's tag of ViT-H-14's LAION-2B weights; the toy world's CLIP has none.
    hub = section.data.get("clip_model", "ViT-H-14") not in (TINY_MODEL, "toyworld")
    return section.string(key, DEFAULT_CLIP_PRETRAINED if hub else default)


def _trigger(section: Section, key: str, default: None) -> str | None:
    trigger = section.string(key, default)
    return trigger.strip() if trigger else None


DEFAULT_CLIP_PRETRAINED = "laion2b_s32b_b79k"
_CONTENTS = "its contents count, as data.contents"


@dataclass(frozen=True)
class ModelSpec:
    """Which Stable Diffusion weights to fine-tune: a hub id, a local folder, or ``tiny``."""

    name: str = setting(TINY_MODEL, doc="A hub id (runwayml/stable-diffusion-v1-5), a local "
                        "diffusers folder, `toyworld` (the committed pretrained toy world) or "
                        "`tiny` (random weights)", reader=_local_name)
    revision: str | None = setting(None, doc="The hub revision (a commit) of the weights")
    variant: str | None = setting(None, doc="The weights' variant (e.g. fp16)")


@dataclass(frozen=True)
class SyntheticData:
    """Ask for a generated car dataset in ``train_dir`` (the CPU demo and tests)."""

    n_images: int = setting(16, doc="Images to draw", minimum=1)
    size: int = setting(64, doc="Their side in pixels", minimum=MIN_SIDE, maximum=MAX_SIDE)
    seed: int = setting(0, doc="The drawing seed")


@dataclass(frozen=True)
class DataSpec:
    """The training folder in the reference script's imagefolder format and its transforms."""

    train_dir: Path = setting(doc="The training folder: images plus metadata.jsonl or "
                              "metadata.csv (the reference script's --train_data_dir)",
                              free=_CONTENTS, path="folder")
    image_column: str = setting("image", doc="The image column of the metadata")
    caption_column: str = setting("text", doc="The caption column of the metadata")
    resolution: int = setting(512, doc="Training side in pixels (SD v1.5: 512)",
                              reader=_image_side, schema=_SIDE_SCHEMA)
    center_crop: bool = setting(True, doc="Center crop (else random crop)")
    random_flip: bool = setting(False, doc="Flip images horizontally at random")
    synthetic: SyntheticData | None = setting(
        None, doc="Draw a car dataset into train_dir when it is missing (CPU demo, tests)",
        free="draws the folder only when it is missing; " + _CONTENTS)
    holdout: int = setting(0, doc="Images of train_dir never trained on (scored by "
                           "clip_i_holdout / dino_holdout)", minimum=0)
    holdout_seed: int = setting(0, doc="The seed of the held-out split", minimum=0)
    image_interpolation_mode: str = setting(
        DEFAULT_INTERPOLATION, doc="Resize filter (the reference script's "
        "--image_interpolation_mode)", choices=INTERPOLATION_MODES)
    aspect_buckets: bool = setting(False, doc="Aspect-ratio buckets (off: the reference's "
                                   "square crop)")
    bucket_max_aspect: float = setting(DEFAULT_BUCKET_MAX_ASPECT, doc="Long side / short "
                                       "side of the widest bucket", minimum=1)


@dataclass(frozen=True)
class TrainSpec:
    """Settings every trial shares, named after the reference script's flags."""

    train_batch_size: int = setting(1, doc="Images per micro-batch", minimum=1)
    gradient_accumulation_steps: int = setting(1, doc="Micro-batches per optimizer step",
                                               minimum=1)
    lr_scheduler: str = setting("constant", doc="diffusers' get_scheduler name",
                                choices=LR_SCHEDULERS)
    lr_warmup_steps: int = setting(0, doc="Warm-up steps of the schedule", minimum=0)
    mixed_precision: str = setting("no", doc="Precision of the frozen weights (quote \"no\")",
                                   choices=MIXED_PRECISION)
    seed: int = setting(42, doc="The training seed (noise, timesteps, data order)", minimum=0)
    max_grad_norm: float | None = setting(
        1.0, doc="Gradient clipping norm; 0 turns it off", minimum=0, reader=_grad_norm,
        writer=lambda v: 0 if v is None else v)
    snr_gamma: float | None = setting(None, doc="Min-SNR weighting gamma (Hang et al. 2023; "
                                      "5.0 recommended)", above=0)
    noise_offset: float = setting(0.0, doc="Noise offset", minimum=0)
    gradient_checkpointing: bool = setting(False, doc="Recompute activations (less memory)")
    prediction_type: str | None = setting(None, doc="Override the scheduler's prediction type",
                                          choices=PREDICTION_TYPES)
    fused_accumulation: str = setting(
        "auto", doc="One batch per optimizer step (on), the reference's micro-batches one by "
        "one (off), or fused with a fall-back on out-of-memory (auto)", reader=_fused,
        choices=FUSED_MODES,
        schema={"anyOf": [{"enum": list(FUSED_MODES)}, {"type": "boolean"}]})
    # kohya sd-scripts' --caption_dropout_rate. A parameters.caption_dropout overrides it.
    caption_dropout: float = setting(0.0, doc="Probability of training a sample on the empty "
                                     "caption (for classifier-free guidance)", minimum=0,
                                     maximum=1)


@dataclass(frozen=True)
class EvalSpec:
    """How a LoRA is scored: images for held-out prompts, CLIP text-image similarity."""

    prompts: Path = setting(doc="Held-out prompts, one a line (# comments)",
                            free="its prompts count (eval.prompt_list)", path="file")
    prompt_list: tuple[str, ...] = setting((), doc="The held-out prompts' text", derived=True,
                                           digest=True, key="prompts")
    images_per_prompt: int = setting(2, doc="Images drawn per prompt at each rung", minimum=1)
    inference_steps: int = setting(25, doc="Sampler steps per image", minimum=1)
    guidance_scale: float = setting(7.5, doc="Classifier-free guidance scale", minimum=0)
    seed: int = setting(1234, doc="The first image seed (prompt i, image j: seed + ...)",
                        minimum=0)
    clip_model: str = setting("ViT-H-14", doc="open_clip model name, `toyworld` or `tiny`")
    clip_pretrained: str | None = setting(
        None, doc=f"open_clip pretrained tag or weights file (hub models: "
        f"{DEFAULT_CLIP_PRETRAINED})", reader=_clip_pretrained)
    every_steps: int = setting(100, doc="Evaluate every this many steps (the rungs)",
                               minimum=1)
    batch_size: int = setting(8, doc="Images drawn at once", minimum=1,
                              free="draws the same images in other batches")
    rungs: tuple[int, ...] | None = setting(
        None, doc="Explicit evaluation steps (instead of every_steps)", reader=_rungs,
        free="which steps are scored (a sweep adds ASHA's milestones, which are free); a "
        "score at a step means the same",
        schema={"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1})
    # Opt-in speed-ups of the rung evaluation that change the numbers (trials.eval.fast_eval).
    merge_lora: bool = setting(False, doc="Merge the LoRA into the weights while drawing")
    clip_fp16: bool = setting(False, doc="Score with CLIP in fp16 (CUDA)")
    channels_last: bool = setting(False, doc="channels_last UNet (CUDA)")
    compile_unet: bool = setting(False, doc="torch.compile the UNet (CUDA)")
    reference_dir: Path | None = setting(None, doc="Held-out real images, imagefolder format",
                                         path="folder")
    dino_model: str = setting("facebook/dinov2-base", doc="DINO model: hub id, local folder "
                              "or `tiny`", reader=_local_name)
    width: int | None = setting(None, doc="Width of drawn images (default: data.resolution)",
                                reader=_image_side, schema=_SIDE_SCHEMA)
    height: int | None = setting(None, doc="Height of drawn images (default: "
                                 "data.resolution)", reader=_image_side, schema=_SIDE_SCHEMA)
    # Set by the sweep, never read from the eval section (hpo.sweep.racing): racing draws a
    # rung's prompts in chunks of this many, in the shared shuffled order
    # (trials.eval.evaluator.prompt_order), asking the orchestrator after each; None: at once.
    chunk_prompts: int | None = setting(None, doc="Racing's chunk", derived=True,
                                        free="follows racing, which is free")
    # Screening rungs (ASHA's alone, at no step the sweep may export): they draw the brand
    # prompts only (no control images: no constraint is decided there) and are never a trial's
    # result; with ``subset_prompts`` only the first that many of the shared order are scored.
    subset_rungs: tuple[int, ...] = setting((), doc="ASHA-only (screening) rungs", derived=True,
                                            free="follows early_terminate, which is free")
    subset_prompts: int | None = setting(None, doc="Prompts scored at subset_rungs",
                                         derived=True,
                                         free="follows early_terminate, which is free")

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

    trigger: str | None = setting(None, doc="The brand phrase: control prompts are the "
                                  "held-out prompts without it", reader=_trigger)
    control_prompts: Path | None = setting(
        None, doc="Control prompts file (default: the held-out prompts without the trigger)",
        free="its prompts count (preservation.control_prompt_list)", path="file")
    control_prompt_list: tuple[str, ...] = setting((), doc="The control prompts' text",
                                                   derived=True, digest=True,
                                                   key="control_prompts")
    brand_prompt_list: tuple[str, ...] = setting(
        (), doc="The control prompts' brand versions", derived=True,
        free="follows from the prompts and the trigger")
    method: str = setting("none", doc="Training remedy: none, prior (DreamBooth's prior "
                          "preservation) or dop (differential output preservation)",
                          choices=PRESERVATION_METHODS)
    weight: float = setting(1.0, doc="The preservation loss's weight", minimum=0,
                            maximum=10_000)
    class_images: int = setting(0, doc="prior: class images the base model draws once (0: "
                                "one per caption)", minimum=0, maximum=100_000)
    class_inference_steps: int = setting(25, doc="prior: sampler steps of the class images",
                                         minimum=1, maximum=1000)

    @property
    def measured(self) -> bool:
        return bool(self.control_prompt_list)


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
    if path.is_dir():
        raise ConfigError(file, key, f"{path} is a directory, not a file")
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


def _elsewhere(own: type) -> dict[str, str]:
    """Where a key of another section lives (``noise_offset`` -> ``train.noise_offset``), for
    the hint on a key written in the wrong section; the parameters too (the reference script's
    --learning_rate, --rank and --max_train_steps are parameters here)."""
    mine = set(settings.file_keys(own))
    sections = {"model": ModelSpec, "data": DataSpec, "train": TrainSpec, "eval": EvalSpec,
                "preservation": PreservationSpec}
    return {**{key: f"{name}.{key}" for name, cls in sections.items() if cls is not own
               for key in settings.file_keys(cls) if key not in mine}, **PARAMETER_PATHS}


def read_model(section: Section) -> ModelSpec:
    return settings.read(ModelSpec, section, elsewhere=_elsewhere(ModelSpec))


def read_data(section: Section, base_dir: Path) -> DataSpec:
    return settings.read(DataSpec, section, base_dir, elsewhere=_elsewhere(DataSpec))


def read_train(section: Section) -> TrainSpec:
    return settings.read(TrainSpec, section, elsewhere=_elsewhere(TrainSpec))


def read_eval(section: Section, base_dir: Path) -> EvalSpec:
    spec = settings.read(EvalSpec, section, base_dir, elsewhere=_elsewhere(EvalSpec))
    return replace(spec, prompt_list=read_prompts(spec.prompts, section.file,
                                                  section.key_path("prompts")))


def read_preservation(section: Section, eval_spec: EvalSpec, base_dir: Path
                      ) -> PreservationSpec:
    """``preservation``: the trigger, control prompts and training remedy (all optional).

    Without ``trigger`` nothing is measured and ``method`` must stay ``none``. Raises
    :class:`ConfigError` naming the key: a held-out prompt without the trigger, a control
    prompts file that is missing or empty, or one with another number of lines than needed.
    """
    spec = settings.read(PreservationSpec, section, base_dir, also=("require",),
                         elsewhere=_elsewhere(PreservationSpec))
    if spec.trigger is None:
        for key in ("control_prompts", "method", "require"):
            if section.has(key) and not (key == "method" and spec.method == "none"):
                raise section.error("needs preservation.trigger (the brand phrase the "
                                    "control prompts and captions are measured without)", key)
        return spec
    if spec.control_prompts is not None:
        controls = read_prompts(spec.control_prompts, section.file,
                                section.key_path("control_prompts"))
        branded = [c for c in controls if has_trigger(c, spec.trigger)]
        if branded:  # a control prompt measures the base model without the brand
            raise section.error(
                f"{spec.control_prompts}: {len(branded)} control prompt(s) still contain the "
                f"trigger {spec.trigger!r}, e.g. {branded[0]!r}; control prompts are the "
                "prompts without it", "control_prompts")
        brands = tuple(f"{c}, {spec.trigger}" for c in controls)
        return replace(spec, control_prompt_list=controls, brand_prompt_list=brands)
    try:
        controls = strip_prompts(eval_spec.prompt_list, spec.trigger, eval_spec.prompts)
    except ValueError as err:
        raise section.error(str(err), "trigger") from None
    return replace(spec, control_prompt_list=controls, brand_prompt_list=eval_spec.prompt_list)


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
    root = Section(file, "", load_yaml_mapping(file))
    root.allow_only(TOP_LEVEL_KEYS, PARAMETER_PATHS)
    base = base_dir or Path.cwd()
    overrides = dict(overrides or {})
    section = root.sub("parameters")
    parameters = parse_parameters(section, given=tuple(overrides),
                                  missing_hint="a value, or --set {name}=VALUE")
    values = fixed_values(parameters, overrides, section)
    eval_spec = read_eval(root.sub("eval"), base)
    return TrialConfig(
        model=read_model(root.sub("model")),
        data=read_data(root.sub("data"), base),
        train=read_train(root.sub("train")),
        eval=eval_spec,
        params=make_params(values),
        output_dir=output_dir,
        cache_dir=cache_dir,
        preservation=read_preservation(root.sub("preservation"), eval_spec, base),
    )
