"""A trial's inputs checked as the trial reads them, before any trial runs.

The orchestrator's pre-flight asks these functions instead of walking the data, model and
scorer code itself, so that "what a trial would refuse" has one definition: the data folder
loaded by the loader every trial uses, the held-out split it makes, the model path rule of
:func:`trials.models.components.resolve_model_path`, the scorer names
:class:`trials.eval.score.ClipScorer` accepts. Errors are :class:`~trials.errors.TrialError`
with ``key`` set to the settings key at fault, for the caller to name its file.

Heavy modules (torch, open_clip) are imported inside the functions: importing this module (and
:mod:`trials.api`, which re-exports it) stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from trials.config import TINY_MODEL, DataSpec, EvalSpec
from trials.errors import SetupError, TrialError
from trials.validation import ConfigError, closest

if TYPE_CHECKING:
    from trials.data.folder import Example

_E = TypeVar("_E", bound=TrialError)


@dataclass(frozen=True)
class DataCheck:
    """A training folder as a trial reads it (:func:`check_data`)."""

    fingerprint: str  # changes when any image byte or caption changes (trials.data.folder)
    examples: int  # usable examples in the folder, held-out ones included
    held_out: tuple[str, ...]  # file names the held-out split keeps from training
    references: int  # images in eval.reference_dir (0 without one)
    overlap: tuple[str, ...]  # held-out prompts equal to a training caption (memorisation)
    long_captions: str | None = None  # one warning line: captions the text encoder cuts


def _at(key: str, err: _E) -> _E:
    err.key = key
    return err


def _load(folder: Path, caption_column: str, key: str, label: str | None = None
          ) -> list[Example]:
    from trials.data.folder import DataError, load_examples

    try:
        return load_examples(folder, caption_column, *(() if label is None else (label,)))
    except DataError as err:
        raise _at(key, err) from None


def held_out_files(data: DataSpec, examples: Sequence[Example] | None = None
                   ) -> tuple[str, ...]:
    """The file names ``data.holdout`` keeps out of every trial (empty without a split).

    ``examples``: the folder already loaded (else it is loaded here). Raises
    :class:`~trials.errors.DataError` (key ``data.train_dir``) for a folder no trial could
    read and :class:`~trials.errors.SetupError` (key ``data.holdout``) when the split would
    leave nothing to train on.
    """
    from trials.data.holdout import split

    if not data.holdout:
        return ()
    if examples is None:
        examples = _load(Path(data.train_dir), data.caption_column, "data.train_dir")
    try:
        held = split(list(examples), data.holdout, data.holdout_seed)[1]
    except ValueError as err:  # the message already starts with the key
        raise SetupError(str(err).removeprefix("data.holdout: "), "data.holdout") from None
    return tuple(ex.file_name for ex in held)


def check_data(data: DataSpec, prompts: Sequence[str] = (), *, reference_dir: Path | None = None,
               trigger: str | None = None, generate: bool = True,
               reach: str | None = None) -> DataCheck | None:
    """Load the training folder (and ``reference_dir``) as every trial would.

    ``generate``: draw a ``data.synthetic`` dataset when its folder is empty (False for a dry
    run, which writes nothing: a synthetic folder not drawn yet then returns None). ``trigger``:
    every training caption must contain it (preservation training removes it for the control
    caption). ``prompts``: the held-out prompts, compared with the captions. ``reach``: a
    trigger that, where a caption names it, must lie within the SD text encoder's tokens.

    Raises :class:`~trials.errors.DataError` (key ``data.train_dir`` or ``eval.reference_dir``)
    and :class:`~trials.errors.SetupError` (key ``data.holdout`` or ``preservation.trigger``).
    """
    from trials.data.folder import REFERENCE_LABEL, folder_fingerprint, heldout_overlap
    from trials.data.synthetic import ensure_dataset
    from trials.trigger import triggerless_captions

    folder = Path(data.train_dir)
    if data.synthetic is not None and not generate and not folder.exists():
        return None
    if generate:
        ensure_dataset(data)
    examples = _load(folder, data.caption_column, "data.train_dir")
    held_out = held_out_files(data, examples)
    if trigger is not None:
        try:
            triggerless_captions(examples, trigger, data.train_dir)
        except ValueError as err:
            raise SetupError(str(err), "preservation.trigger") from None
    captions = [(f"{data.train_dir}: {ex.where or ex.file_name}", caption)
                for ex in examples for caption in ex.captions]
    if reach is not None:
        check_trigger_reach(captions, reach, "data.train_dir")
    references = 0 if reference_dir is None else len(
        _load(Path(reference_dir), data.caption_column, "eval.reference_dir", REFERENCE_LABEL))
    return DataCheck(fingerprint=folder_fingerprint(examples, data.caption_column),
                     examples=len(examples), held_out=held_out, references=references,
                     overlap=tuple(heldout_overlap(list(prompts), examples)),
                     long_captions=_long_texts(captions, "caption", "data.train_dir"))


def check_model(name: str, cache_dir: Path, *, build: bool = True) -> str | None:
    """Where the trials will load the model ``name`` from, checked: a local folder must hold
    every diffusers subfolder; a hub id is left to the download.

    ``build``: build the tiny test model into ``cache_dir`` if it is not there (False for a dry
    run: then ``tiny`` is not checked and None is returned). Raises
    :class:`~trials.errors.ModelError` (key ``model.name``).
    """
    from trials.models.components import ModelError, check_model_source, resolve_model_path

    if name == TINY_MODEL and not build:
        return None
    try:
        source = resolve_model_path(name, cache_dir)
        check_model_source(source)
    except ModelError as err:
        raise _at("model.name", err) from None
    return source


def check_target_modules(model_name: str, values: Sequence[str]) -> None:
    """Every ``target_modules`` value a trial may get must wrap some module of the model's
    UNet (read from its config, cheaply: :func:`trials.models.components.unet_module_names`);
    a model whose config is not local (a hub id) is left to the trial. Raises
    :class:`~trials.errors.SetupError` (key ``parameters.target_modules``)."""
    from trials.models.components import unet_module_names
    from trials.models.lora import unmatched_targets

    names = unet_module_names(model_name)
    if names is None:
        return
    for value in values:
        problem = unmatched_targets(value, names)
        if problem:
            raise SetupError(f"{problem.removeprefix('target_modules: ')} (model {model_name})",
                             "parameters.target_modules")


def bucket_lines(data: DataSpec, model_name: str) -> list[str]:
    """The dry run's lines on aspect-ratio buckets: the side multiple of ``model_name`` (read
    from its configs where it is local) and the buckets the training folder falls into."""
    from trials.data.buckets import dry_run_lines
    from trials.models.components import model_side_multiple

    return dry_run_lines(data, *model_side_multiple(model_name))


def check_scorer(spec: EvalSpec, file: str | Path) -> None:
    """The CLIP model and pretrained tag must be ones open_clip offers (or a local file).

    Raises :class:`~trials.validation.ConfigError` naming ``file`` and ``eval.clip_model`` or
    ``eval.clip_pretrained``.
    """
    import open_clip

    from trials.eval.score import TINY_CLIP, TOYWORLD

    model, tag = spec.clip_model, spec.clip_pretrained
    if model in (TINY_CLIP, TOYWORLD) or model.startswith(("hf-hub:", "local-dir:")):
        return
    models = open_clip.list_models()
    if model not in models:
        raise ConfigError(file, "eval.clip_model",
                          f"open_clip has no model {model!r}{closest(model, models)}; e.g. "
                          f"ViT-H-14, ViT-bigG-14, ViT-L-14 (open_clip.list_models())")
    if tag is not None and Path(tag).expanduser().is_dir():
        raise ConfigError(file, "eval.clip_pretrained",
                          f"{Path(tag).expanduser()} is a directory, not a file (a checkpoint "
                          "file, or a pretrained tag of open_clip)")
    if tag is None or Path(tag).expanduser().is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(model)
    if tag not in tags:
        raise ConfigError(file, "eval.clip_pretrained",
                          f"{tag!r} is not a pretrained tag of {model} in open_clip"
                          f"{closest(tag, tags)}; allowed: {', '.join(tags) or 'none'} "
                          f"(or a checkpoint file)")


def _prompt_lines(path: Path) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        lines.setdefault(line.strip(), number)
    return lines


def long_prompts(spec: EvalSpec) -> list[str]:
    """Warnings for held-out prompts longer than the SD text encoder's or the scorer's context.

    Both truncate silently: a cut prompt is scored on words the images were not drawn for.
    SD v1.5's tokenizer is CLIP's BPE (the one open_clip ships), 77 tokens with start and end;
    the scorer's context length comes from its open_clip config.
    """
    import open_clip

    from trials.eval.score import TINY_CLIP, TINY_CLIP_CONFIG

    bpe = open_clip.tokenizer.SimpleTokenizer()
    model = spec.clip_model
    if model == TINY_CLIP:
        scorer_context = int(TINY_CLIP_CONFIG["text_cfg"]["context_length"])  # type: ignore[index]
    else:
        config = open_clip.get_model_config(model) or {}
        scorer_context = int(config.get("text_cfg", {}).get("context_length", 77))
    where = _prompt_lines(spec.prompts)
    out = []
    for prompt in spec.prompt_list:
        tokens = len(bpe.encode(prompt)) + 2  # start and end of text
        for who, context in (("the SD text encoder", 77), (f"the scorer {model}", scorer_context)):
            if tokens > context:
                out.append(f"warning: {spec.prompts}:{where.get(prompt, '?')}: prompt has "
                           f"{tokens} tokens, {who} reads {context}: the rest is cut off")
    return out


# SD v1.5's text encoder reads 77 tokens: the start of text, 75 of the text, the end of text.
SD_CONTEXT = 77


def _tokens(bpe: object, text: str) -> int:
    """Tokens of ``text`` with the start-of-text token (CLIP's BPE, as SD's tokenizer)."""
    return len(bpe.encode(text)) + 1  # type: ignore[attr-defined]


def check_trigger_reach(texts: Sequence[tuple[str, str]], trigger: str, key: str) -> None:
    """Every text (``(where, text)`` pairs) that names ``trigger`` must name it within the SD
    text encoder's context: past it the encoder never sees the trigger, so a brand prompt is
    drawn without the brand and a caption teaches nothing of it. Raises
    :class:`~trials.errors.SetupError` (``key``) naming the first such text."""
    import open_clip

    from trials.trigger import trigger_end

    bpe = open_clip.tokenizer.SimpleTokenizer()
    for where, text in texts:
        end = trigger_end(text, trigger)
        if end is None:
            continue
        last = _tokens(bpe, text[:end])
        if last > SD_CONTEXT - 1:  # the end-of-text token keeps the last place
            raise SetupError(
                f"{where}: the trigger {trigger!r} ends at token {last}, past the SD text "
                f"encoder's {SD_CONTEXT} tokens (the encoder never sees it); allowed: the "
                f"trigger within the first {SD_CONTEXT - 2} tokens of the text", key)


def _long_texts(texts: Sequence[tuple[str, str]], what: str, key: str) -> str | None:
    """One warning line for the texts longer than the SD text encoder reads (the longest
    named), or None. One line, however many: a 10,000-word caption is one mistake."""
    import open_clip

    bpe = open_clip.tokenizer.SimpleTokenizer()
    long = [(_tokens(bpe, text) + 1, where) for where, text in texts
            if len(text) > SD_CONTEXT - 2]  # cheap: a token is at least a character
    long = [(n, where) for n, where in long if n > SD_CONTEXT]
    if not long:
        return None
    tokens, where = max(long)
    return (f"warning: {key}: {len(long)} {what}(s) longer than the SD text encoder's "
            f"{SD_CONTEXT} tokens, the longest {tokens:,} ({where}): the rest is cut off")


def check_prompt_triggers(spec: EvalSpec, brand_prompts: Sequence[str], trigger: str) -> None:
    """The held-out (brand) prompts must name ``trigger`` within the SD text encoder's reach
    (:func:`check_trigger_reach`); ``brand_prompts``: those preservation draws, when not the
    held-out prompts themselves. Raises :class:`~trials.errors.SetupError`."""
    where = _prompt_lines(spec.prompts)
    check_trigger_reach([(f"{spec.prompts}:{where.get(p, '?')}", p) for p in spec.prompt_list],
                        trigger, "eval.prompts")
    extra = [p for p in brand_prompts if p not in where]
    check_trigger_reach([(f"brand prompt {p[:60]!r}...", p) for p in extra], trigger,
                        "preservation.control_prompts")
