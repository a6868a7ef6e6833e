"""The training-data folder, in the reference script's "imagefolder" layout.

Images (subfolders allowed) plus ``metadata.jsonl`` or ``metadata.csv`` whose rows give a
``file_name`` (``/``-separated, relative to the folder) and a caption column (``text`` by
default) holding a string or a list of strings (the trainer samples one per access).

``load_examples`` checks the whole folder up front and reports every problem in one
``DataError``. Both metadata files present is an error (the ``datasets`` loader refuses mixed
metadata too); images not named in the metadata and extra columns are ignored. Only a fixed
list of raster formats is opened (no EPS plugin running Ghostscript), and nothing is unpickled.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFile, ImageOps
from torchvision.transforms import InterpolationMode

from trials.errors import DataError

# Restricting PIL to these keeps plugins such as EPS (runs Ghostscript) off untrusted files.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF", "PPM", "AVIF")

_HASH_CHUNK = 1 << 20
# What ``eval.reference_dir`` holds, for its errors (the training folder's say "the training data").
REFERENCE_LABEL = "the held-out reference images (eval.reference_dir)"


@dataclass(frozen=True)
class Example:
    """One usable training image and its caption(s)."""

    path: Path  # absolute path of the image file
    file_name: str  # as written in metadata
    captions: tuple[str, ...]  # >= 1 non-empty caption
    where: str = ""  # its metadata record, e.g. "metadata.jsonl line 3"


def _allowed_formats() -> list[str]:
    Image.init()
    return [f for f in IMAGE_FORMATS if f in Image.OPEN]


def _gray_to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float grayscale image to 8 bits without clipping."""
    arr = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        scaled = arr / 257.0
    elif image.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        # Pillow hands out 16-bit files (and 16-bit TIFF/PNG variants) as mode "I".
        scaled = arr / 257.0
    elif image.mode == "F" and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        scaled = arr * 255.0
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = _gray_to_8bit(image)
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # Transparent pixels carry arbitrary colour; compositing on white matches what a viewer
        # shows and what datasets' convert("RGB") callers usually intended.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    """Fully decode ``path`` and return an 8-bit RGB image, upright per its EXIF orientation.

    Transparent images are composited on white; 16-bit grayscale is scaled (not clipped) to 8 bits.
    Raises ``OSError``/``PIL.UnidentifiedImageError`` (and friends) if the file cannot be decoded.
    """
    with Image.open(path, formats=_allowed_formats()) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return _to_rgb(upright)


@dataclass(frozen=True)
class _Row:
    """One metadata record; ``captions`` is empty if the caption was invalid (reported)."""

    where: str  # e.g. "metadata.jsonl line 3"
    file_name: str
    captions: tuple[str, ...]


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _parse_captions(value: object, column: str) -> tuple[tuple[str, ...], str | None]:
    """Return (captions, problem) for one caption cell."""
    if isinstance(value, str):
        return ((value,), None) if value.strip() else ((), f"empty caption in column {column!r}")
    if isinstance(value, list):
        if not value:
            return (), f"empty caption list in column {column!r}"
        for index, item in enumerate(value, 1):
            if not isinstance(item, str):
                return (), (
                    f"caption list item {index} in column {column!r} is not a string "
                    f"({_type_name(item)})"
                )
            if not item.strip():
                return (), f"caption list item {index} in column {column!r} is empty"
        return tuple(value), None
    return (), (
        f"caption in column {column!r} must be a string or a list of strings, "
        f"got {_type_name(value)}"
    )


def _missing_columns(found: list[str], caption_column: str) -> str | None:
    missing = [c for c in ("file_name", caption_column) if c not in found]
    if not missing:
        return None
    names = ", ".join(repr(c) for c in missing)
    return f"missing column(s) {names} (found: {', '.join(found) or 'none'})"


def _make_row(
    where: str, record: dict[str, Any], caption_column: str, problems: list[tuple[str, str]]
) -> _Row | None:
    missing = _missing_columns(list(record), caption_column)
    if missing is not None:
        problems.append((where, missing))
        return None
    file_name = record["file_name"]
    if not isinstance(file_name, str):
        problems.append((where, f"file_name must be a string, got {_type_name(file_name)}"))
        return None
    captions, problem = _parse_captions(record[caption_column], caption_column)
    if problem is not None:
        problems.append((where, problem))
    return _Row(where=where, file_name=file_name, captions=captions)


def _read_jsonl(text: str, caption_column: str, problems: list[tuple[str, str]]) -> list[_Row]:
    rows: list[_Row] = []
    # Split on "\n" only: str.splitlines would also break on U+2028 inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"metadata.jsonl line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((where, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(record, dict):
            problems.append((where, f"expected a JSON object, got {_type_name(record)}"))
            continue
        row = _make_row(where, record, caption_column, problems)
        if row is not None:
            rows.append(row)
    return rows


def _read_csv(text: str, caption_column: str, problems: list[tuple[str, str]]) -> list[_Row]:
    rows: list[_Row] = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        found = list(reader.fieldnames or [])
        missing = _missing_columns(found, caption_column)
        if missing is not None:
            problems.append(("metadata.csv line 1", missing))
            return rows
        for record in reader:
            where = f"metadata.csv line {reader.line_num}"
            if any(record.get(c) is None for c in ("file_name", caption_column)):
                problems.append((where, "row has fewer fields than the header"))
                continue
            row = _make_row(where, record, caption_column, problems)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        problems.append((f"metadata.csv line {reader.line_num}", f"cannot parse CSV ({exc})"))
    return rows


def _read_metadata(
    root: Path, caption_column: str, problems: list[tuple[str, str]]
) -> tuple[str, list[_Row]] | None:
    """Parse the folder's metadata file; return (its name, rows) or None if there is none."""
    jsonl, csv_path = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.is_file() and csv_path.is_file():
        both = "both metadata.jsonl and metadata.csv exist; keep one (metadata.jsonl was checked)"
        problems.append(("metadata.csv", both))
    chosen = jsonl if jsonl.is_file() else csv_path if csv_path.is_file() else None
    if chosen is None:
        return None
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        text = chosen.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append((chosen.name, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
        return chosen.name, []
    except OSError as exc:
        problems.append((chosen.name, f"cannot read ({exc.strerror or exc})"))
        return chosen.name, []
    reader = _read_jsonl if chosen is jsonl else _read_csv
    return chosen.name, reader(text, caption_column, problems)


def _check_image(path: Path) -> str | None:
    """Return the problem with the image at ``path``, or None if it decodes fully."""
    if not path.is_file():
        return "not a regular file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    # Some libraries flip this global to True; a truncated image must fail validation here
    # rather than train on grey padding.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        load_rgb(path)
    except Image.UnidentifiedImageError:
        return f"not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
    except Exception as exc:  # any decoder failure makes the file unusable
        return f"cannot decode image ({type(exc).__name__}: {exc})"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return None


def _resolve_file(root: Path, file_name: str) -> tuple[Path | None, str | None]:
    """Map a metadata ``file_name`` to a path inside ``root``; return (path, problem)."""
    if not file_name.strip():
        return None, "empty file_name"
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute():
        return None, "absolute path; file_name must be relative to the training folder"
    parts = PurePosixPath(file_name).parts
    if ".." in parts:
        return None, "'..' in file_name (it must stay inside the training folder)"
    path = root.joinpath(*parts)
    # Resolve before opening anything: a symlink may point outside the folder.
    try:
        inside = path.resolve().is_relative_to(root)
    except (OSError, RuntimeError) as exc:  # symlink loops
        return None, f"cannot resolve path ({exc})"
    if not inside:
        return None, "resolves outside the training folder (symlink); not opened"
    if not path.exists():
        hint = " (use '/' as the path separator)" if "\\" in file_name else ""
        return None, f"file not found{hint}"
    return path, None


def _unreadable_files(root: Path) -> list[tuple[str, str]]:
    """Each file under ``root`` (as :func:`folder_state` walks it) that cannot be stat'ed or
    opened for reading: a symlink loop, a dangling link, a file without read permission."""
    problems: list[tuple[str, str]] = []

    def walk_error(err: OSError) -> None:  # a subfolder that cannot be listed
        problems.append((os.path.relpath(err.filename or root, root),
                         f"cannot list folder ({err.strerror or err})"))

    for parent, _dirs, files in os.walk(root, onerror=walk_error):
        for name in files:
            path = os.path.join(parent, name)
            try:
                if stat.S_ISREG(os.stat(path).st_mode):
                    with open(path, "rb"):
                        pass
            except OSError as err:
                problems.append((os.path.relpath(path, root),
                                 f"cannot read ({err.strerror or err})"))
    return problems


def load_examples(train_dir: str | Path, caption_column: str = "text",
                  label: str = "the training data") -> list[Example]:
    """Validate the whole training folder and return its examples in metadata order.

    Raises one ``DataError`` listing every problem: metadata, columns, captions, unsafe or
    missing files, duplicates, images that do not fully decode, no usable image. ``label`` says
    what the folder holds, in the error (another imagefolder: held-out reference images).
    """
    problems: list[tuple[str, str]] = []
    given = str(train_dir)
    root_path = Path(train_dir)
    if not root_path.exists():
        raise DataError(given, [(given, "folder does not exist")], label)
    if not root_path.is_dir():
        raise DataError(given, [(given, "not a directory")], label)
    root = root_path.resolve()

    # Every file a trial touches: it stats the whole folder (trials.train.warm's folder_state)
    # before it reads a listed image, so one symlink loop or unreadable file fails every trial.
    problems += _unreadable_files(root)
    metadata = _read_metadata(root, caption_column, problems)
    if metadata is None:
        raise DataError(given, [(given, "no metadata.jsonl or metadata.csv in the folder")],
                        label)
    meta_name, rows = metadata

    examples: list[Example] = []
    first_seen: dict[str, str] = {}
    for row in rows:
        # "./a.png" and "a.png" name the same file, so compare normalised names.
        key = str(PurePosixPath(row.file_name))
        if key in first_seen:
            problems.append(
                (row.where, f"duplicate file_name {row.file_name!r} (first on {first_seen[key]})")
            )
            continue
        first_seen[key] = row.where
        path, problem = _resolve_file(root, row.file_name)
        if problem is None and path is not None:
            problem = _check_image(path)
        if problem is not None:
            problems.append((row.file_name or row.where, f"{problem} ({row.where})"))
            continue
        if row.captions and path is not None:
            examples.append(Example(path=path, file_name=row.file_name, captions=row.captions,
                                    where=row.where))
    if not examples:
        problems.append((meta_name, "zero usable images"))
    if problems:
        raise DataError(given, problems, label)
    return examples


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision's ``InterpolationMode`` for a lower-case name, as the reference script maps
    ``--image_interpolation_mode`` (``getattr(InterpolationMode, name.upper())``)."""
    mode = getattr(InterpolationMode, name.upper(), None)
    if not isinstance(mode, InterpolationMode):
        choices = ", ".join(m.name.lower() for m in InterpolationMode)
        raise ValueError(f"unknown interpolation mode {name!r}; choices: {choices}")
    return mode


def preprocess(
    image: Image.Image,
    resolution: int,
    center_crop: bool,
    flip: bool,
    rng: random.Random | None = None,
    interpolation: str = "lanczos",
) -> torch.Tensor:
    """Apply the reference script's train transforms; return float32 ``(3, res, res)`` in [-1, 1].

    Resize the shorter side to ``resolution`` with ``interpolation`` (a torchvision
    ``InterpolationMode`` name in lower case; the reference script's
    ``--image_interpolation_mode``, default ``lanczos``), centre or random crop (offsets drawn
    from ``rng``, default the ``random`` module), flip horizontally if ``flip``, then normalise.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if image.mode != "RGB":
        raise ValueError(f"preprocess expects an RGB image (use load_rgb), got mode {image.mode}")
    resized = TF.resize(image, resolution, interpolation=interpolation_mode(interpolation))
    if center_crop:
        cropped = TF.center_crop(resized, [resolution, resolution])
    else:
        draw = rng if rng is not None else random
        width, height = resized.size
        top = draw.randint(0, max(height - resolution, 0))
        left = draw.randint(0, max(width - resolution, 0))
        cropped = TF.crop(resized, top, left, resolution, resolution)
    if flip:
        cropped = TF.hflip(cropped)
    tensor = TF.normalize(TF.to_tensor(cropped), [0.5], [0.5])
    return tensor.to(torch.float32).contiguous()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_fingerprint(examples: list[Example], caption_column: str) -> str:
    """Return a sha256 hex digest of every example's file name, image bytes and captions.

    Used as a cache key for encoded latents/text: it changes when any byte or caption changes
    and is independent of metadata row order.
    """
    digest = hashlib.sha256()
    # JSON framing keeps field boundaries unambiguous (no "ab"+"c" == "a"+"bc" collisions).
    digest.update(json.dumps(["trials.data/v1", caption_column]).encode())
    for example in sorted(examples, key=lambda e: e.file_name):
        entry = [example.file_name, _file_digest(example.path), list(example.captions)]
        digest.update(b"\n" + json.dumps(entry, ensure_ascii=False).encode())
    return digest.hexdigest()


def _normalise_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def heldout_overlap(prompts: list[str], examples: list[Example]) -> list[str]:
    """Return the prompts (each once, in input order) equal to a training caption.

    Comparison ignores case and whitespace differences; a scoring prompt that is also a
    training caption rewards memorisation, so callers should warn about these.
    """
    seen_captions = {_normalise_text(c) for e in examples for c in e.captions}
    overlap: list[str] = []
    for prompt in prompts:
        if _normalise_text(prompt) in seen_captions and prompt not in overlap:
            overlap.append(prompt)
    return overlap


def folder_state(folder: Path) -> str:
    """A digest of every file's path, size and modification time under ``folder``.

    Costs a ``stat`` per file (milliseconds for thousands), against decoding every image.
    """
    digest = hashlib.sha256()
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(parent, name)
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
