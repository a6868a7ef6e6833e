"""Tests for trials.data.folder: folder validation, image decoding, transforms, fingerprints."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision import transforms

import trials.data.folder as data
from trials.data.folder import (
    IMAGE_FORMATS,
    DataError,
    Example,
    folder_fingerprint,
    heldout_overlap,
    load_examples,
    load_rgb,
    preprocess,
)

# ---------------------------------------------------------------- helpers


def write_png(path: Path, size: tuple[int, int] = (8, 8), color: Any = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_jsonl(folder: Path, records: list[Any]) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def report_lines(folder: Path | str, caption_column: str = "text") -> list[str]:
    with pytest.raises(DataError) as info:
        load_examples(folder, caption_column)
    return str(info.value).splitlines()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "train"
    out.mkdir()
    write_png(out / "a.png")
    return out


# ---------------------------------------------------------------- happy paths


def test_jsonl_folder_with_subfolders_and_list_captions(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "sub" / "a.png")
    write_png(tmp_path / "b.png")
    write_jsonl(
        tmp_path,
        [
            {"file_name": "images/sub/a.png", "text": "a red car", "extra": 1},
            {"file_name": "b.png", "text": ["first phrasing", "second phrasing"]},
        ],
    )
    examples = load_examples(tmp_path)
    assert [e.file_name for e in examples] == ["images/sub/a.png", "b.png"]
    assert examples[0].captions == ("a red car",)
    assert examples[1].captions == ("first phrasing", "second phrasing")
    assert all(e.path.is_absolute() and e.path.is_file() for e in examples)
    assert examples[0].path == (tmp_path / "images" / "sub" / "a.png").resolve()


def test_metadata_csv_with_bom_and_custom_caption_column(folder: Path) -> None:
    write_png(folder / "imgs" / "b.png")
    csv_text = 'file_name,caption\na.png,"a car, side view"\nimgs/b.png,another car\n'
    (folder / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + csv_text.encode())
    examples = load_examples(folder, caption_column="caption")
    assert [(e.file_name, e.captions) for e in examples] == [
        ("a.png", ("a car, side view",)),
        ("imgs/b.png", ("another car",)),
    ]


def test_symlink_inside_folder_is_allowed(folder: Path) -> None:
    os.symlink(folder / "a.png", folder / "link.png")
    write_jsonl(folder, [{"file_name": "link.png", "text": "x"}])
    assert [e.file_name for e in load_examples(folder)] == ["link.png"]


def test_unlisted_images_are_ignored(folder: Path) -> None:
    write_png(folder / "unlisted.png")
    write_jsonl(folder, [{"file_name": "a.png", "text": "x"}])
    assert len(load_examples(folder)) == 1


# ---------------------------------------------------------------- folder-level problems


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert report_lines(missing) == [
        f"{missing}: 1 problem(s) in the training data:",
        f"  - {missing}: folder does not exist",
    ]


def test_not_a_directory(tmp_path: Path) -> None:
    path = write_png(tmp_path / "a.png")
    assert report_lines(path)[1] == f"  - {path}: not a directory"


def test_no_metadata(folder: Path) -> None:
    assert report_lines(folder) == [
        f"{folder}: 1 problem(s) in the training data:",
        f"  - {folder}: no metadata.jsonl or metadata.csv in the folder",
    ]


def test_both_metadata_files_is_an_error(folder: Path) -> None:
    write_jsonl(folder, [{"file_name": "a.png", "text": "x"}])
    (folder / "metadata.csv").write_text("file_name,text\na.png,x\n")
    assert report_lines(folder)[1:] == [
        "  - metadata.csv: both metadata.jsonl and metadata.csv exist; keep one "
        "(metadata.jsonl was checked)"
    ]


def test_zero_usable_images(folder: Path) -> None:
    write_jsonl(folder, [])
    assert report_lines(folder) == [
        f"{folder}: 1 problem(s) in the training data:",
        "  - metadata.jsonl: zero usable images",
    ]


def test_metadata_not_utf8(folder: Path) -> None:
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "\xff"}\n')
    assert report_lines(folder)[1:] == [
        "  - metadata.jsonl: not valid UTF-8 (invalid start byte at byte 32)",
        "  - metadata.jsonl: zero usable images",
    ]


# ---------------------------------------------------------------- metadata lines


def test_unparseable_and_non_object_lines(folder: Path) -> None:
    write_jsonl(folder, [{"file_name": "a.png", "text": "x"}, "not json", "", "[1, 2]"])
    assert report_lines(folder)[1:] == [
        "  - metadata.jsonl line 2: not valid JSON (Expecting value at column 1)",
        "  - metadata.jsonl line 4: expected a JSON object, got list",
    ]


def test_csv_missing_column_and_short_row(folder: Path) -> None:
    (folder / "metadata.csv").write_text("file_name,caption\na.png,x\n")
    assert report_lines(folder)[1] == (
        "  - metadata.csv line 1: missing column(s) 'text' (found: file_name, caption)"
    )
    (folder / "metadata.csv").write_text("file_name,text\na.png\n")
    assert (
        report_lines(folder)[1] == "  - metadata.csv line 2: row has fewer fields than the header"
    )


L1 = "metadata.jsonl line 1"
COL = "in column 'text'"


def _mkdir(folder: Path) -> None:
    (folder / "images").mkdir()


def _empty_file(folder: Path) -> None:
    (folder / "empty.png").touch()


# (caption, or the whole record on metadata line 1; folder setup; expected problem line)
SINGLE_ROW_CASES: list[tuple[Any, Any, str]] = [
    ({"image": "a.png", "caption": "x"}, None,
     f"{L1}: missing column(s) 'file_name', 'text' (found: image, caption)"),
    ("", None, f"{L1}: empty caption {COL}"),
    ("  ", None, f"{L1}: empty caption {COL}"),
    ([], None, f"{L1}: empty caption list {COL}"),
    (["ok", 3], None, f"{L1}: caption list item 2 {COL} is not a string (int)"),
    (["ok", " "], None, f"{L1}: caption list item 2 {COL} is empty"),
    (None, None, f"{L1}: caption {COL} must be a string or a list of strings, got null"),
    (7, None, f"{L1}: caption {COL} must be a string or a list of strings, got int"),
    ({"file_name": 5, "text": "x"}, None, f"{L1}: file_name must be a string, got int"),
    ({"file_name": "images/nope.png", "text": "x"}, None,
     f"images/nope.png: file not found ({L1})"),
    ({"file_name": "im\\a.png", "text": "x"}, None,
     f"im\\a.png: file not found (use '/' as the path separator) ({L1})"),
    ({"file_name": "empty.png", "text": "x"}, _empty_file,
     f"empty.png: empty file (0 bytes) ({L1})"),
    ({"file_name": "images", "text": "x"}, _mkdir, f"images: not a regular file ({L1})"),
]  # fmt: skip


@pytest.mark.parametrize(("record", "setup", "problem"), SINGLE_ROW_CASES)
def test_single_row_problems(tmp_path: Path, record: Any, setup: Any, problem: str) -> None:
    if not isinstance(record, dict):
        record = {"file_name": "a.png", "text": record}
    write_png(tmp_path / "a.png")
    if setup is not None:
        setup(tmp_path)
    write_jsonl(tmp_path, [record])
    assert report_lines(tmp_path) == [
        f"{tmp_path}: 2 problem(s) in the training data:",
        f"  - {problem}",
        "  - metadata.jsonl: zero usable images",
    ]


def test_duplicate_file_names(folder: Path) -> None:
    write_jsonl(
        folder, [{"file_name": "a.png", "text": "x"}, {"file_name": "./a.png", "text": "y"}]
    )
    assert report_lines(folder)[1:] == [
        "  - metadata.jsonl line 2: duplicate file_name './a.png' (first on metadata.jsonl line 1)"
    ]


# ---------------------------------------------------------------- files


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every path the validator decodes."""
    seen: list[Path] = []
    real = data.load_rgb

    def spy(path: Path) -> Image.Image:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(data, "load_rgb", spy)
    return seen


def test_escaping_file_names_are_never_opened(tmp_path: Path, opened: list[Path]) -> None:
    folder = tmp_path / "train"
    outside = write_png(tmp_path / "outside.png")
    write_png(folder / "ok.png")
    os.symlink(outside, folder / "link.png")
    write_jsonl(
        folder,
        [
            {"file_name": str(outside), "text": "x"},
            {"file_name": "../outside.png", "text": "x"},
            {"file_name": "link.png", "text": "x"},
            {"file_name": "ok.png", "text": "x"},
        ],
    )
    assert report_lines(folder)[1:] == [
        f"  - {outside}: absolute path; file_name must be relative to the training folder "
        "(metadata.jsonl line 1)",
        "  - ../outside.png: '..' in file_name (it must stay inside the training folder) "
        "(metadata.jsonl line 2)",
        "  - link.png: resolves outside the training folder (symlink); not opened "
        "(metadata.jsonl line 3)",
    ]
    assert [p.name for p in opened] == ["ok.png"]


def test_non_image_and_unsupported_formats(folder: Path) -> None:
    (folder / "notes.png").write_text("hello, not an image")
    # EPS would run Ghostscript if PIL were allowed to pick its plugin.
    (folder / "art.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    write_jsonl(
        folder, [{"file_name": "notes.png", "text": "x"}, {"file_name": "art.eps", "text": "y"}]
    )
    formats = ", ".join(IMAGE_FORMATS)
    assert report_lines(folder)[1:3] == [
        f"  - notes.png: not an image in a supported format ({formats}) (metadata.jsonl line 1)",
        f"  - art.eps: not an image in a supported format ({formats}) (metadata.jsonl line 2)",
    ]


def _truncated_png(path: Path) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize("global_flag", [False, True])
def test_truncated_image_is_rejected_even_if_global_flag_is_set(
    folder: Path, monkeypatch: pytest.MonkeyPatch, global_flag: bool
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", global_flag)
    _truncated_png(folder / "trunc.png")
    write_jsonl(folder, [{"file_name": "trunc.png", "text": "x"}])
    line = report_lines(folder)[1]
    assert line.startswith("  - trunc.png: cannot decode image (OSError: ")
    assert line.endswith(" (metadata.jsonl line 1)")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is global_flag


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    write_png(folder / "good.png")
    (folder / "empty.png").touch()
    write_jsonl(
        folder,
        [
            {"file_name": "good.png", "text": "fine"},
            "{broken",
            {"file_name": "missing.png", "text": "x"},
            {"file_name": "good.png", "text": "again"},
            {"file_name": "empty.png", "text": ""},
            {"file_name": "../x.png", "text": "x"},
        ],
    )
    lines = report_lines(folder)
    assert lines[0] == f"{folder}: 6 problem(s) in the training data:"
    assert lines[1].startswith("  - metadata.jsonl line 2: not valid JSON")
    assert lines[2:] == [
        "  - metadata.jsonl line 5: empty caption in column 'text'",
        "  - missing.png: file not found (metadata.jsonl line 3)",
        "  - metadata.jsonl line 4: duplicate file_name 'good.png' "
        "(first on metadata.jsonl line 1)",
        "  - empty.png: empty file (0 bytes) (metadata.jsonl line 5)",
        "  - ../x.png: '..' in file_name (it must stay inside the training folder) "
        "(metadata.jsonl line 6)",
    ]


def test_data_error_survives_pickling() -> None:
    error = DataError("/d", [("a.png", "file not found")])
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone, ValueError)
    assert str(clone) == str(error)
    assert clone.problems == (("a.png", "file not found"),)


# ---------------------------------------------------------------- load_rgb modes


def _saved(image: Image.Image, path: Path, **kwargs: Any) -> Path:
    image.save(path, **kwargs)
    return path


def test_rgba_and_la_are_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    out = np.asarray(load_rgb(_saved(rgba, tmp_path / "rgba.png")))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert out[0, 2, 0] == 255 and 125 <= out[0, 2, 1] <= 129
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))
    la.putpixel((1, 0), (0, 255))
    out = np.asarray(load_rgb(_saved(la, tmp_path / "la.png")))
    assert out.reshape(-1, 3).tolist() == [[255, 255, 255], [0, 0, 0]]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 255, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    plain = np.asarray(load_rgb(_saved(pal, tmp_path / "p.png")))
    assert plain.reshape(-1, 3).tolist() == [[0, 255, 0], [10, 20, 30]]
    clear = np.asarray(load_rgb(_saved(pal, tmp_path / "pt.png", transparency=0)))
    assert clear.reshape(-1, 3).tolist() == [[255, 255, 255], [10, 20, 30]]


def test_l_one_bit_and_cmyk(tmp_path: Path) -> None:
    gray = load_rgb(_saved(Image.new("L", (2, 2), 77), tmp_path / "l.png"))
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [77, 77, 77]
    one = load_rgb(_saved(Image.new("1", (2, 2), 1), tmp_path / "one.png"))
    assert np.asarray(one)[0, 0].tolist() == [255, 255, 255]
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 255, 255, 0))
    out = np.asarray(load_rgb(_saved(cmyk, tmp_path / "cmyk.tif")))
    assert out.reshape(-1, 3).tolist() == [[255, 255, 255], [255, 0, 0]]


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path: Path, mode: str) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    image = Image.fromarray(ramp) if mode == "I;16" else Image.fromarray(ramp.astype(np.int32))
    assert image.mode == mode
    out = np.asarray(
        load_rgb(_saved(image, tmp_path / "g16.png" if mode == "I;16" else tmp_path / "g32.tif"))
    )[0, :, 0].astype(int)
    assert out.min() <= 1 and out.max() >= 254
    assert np.all(np.diff(out) >= 0)
    assert (out == 255).sum() <= 2  # clipping would saturate almost the whole ramp
    assert abs(int(out[128]) - 128) <= 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = load_rgb(_saved(image, tmp_path / "r.jpg", exif=exif))
    assert rotated.size == (20, 40)
    assert load_rgb(_saved(image, tmp_path / "plain.jpg")).size == (40, 20)


# ---------------------------------------------------------------- preprocess


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    rgb = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 90.0),
        ],
        axis=2,
    )
    return Image.fromarray(rgb.round().astype(np.uint8))


@pytest.mark.parametrize("mode", ["lanczos", "bilinear", "bicubic", "nearest_exact"])
def test_preprocess_matches_reference_center_crop_pipeline(mode: str) -> None:
    # The reference script: Resize(resolution, interpolation=getattr(InterpolationMode,
    # args.image_interpolation_mode.upper())), CenterCrop, ToTensor, Normalize.
    image = _gradient(100, 50)
    reference = transforms.Compose(
        [
            transforms.Resize(32, interpolation=getattr(transforms.InterpolationMode,
                                                        mode.upper())),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )
    out = preprocess(image, 32, center_crop=True, flip=False, interpolation=mode)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, reference(image))


def test_default_interpolation_is_the_references_lanczos() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    image = Image.fromarray(noise)  # detail at every scale: resampling filters differ
    lanczos = preprocess(image, 64, center_crop=True, flip=False)
    assert torch.equal(lanczos, preprocess(image, 64, True, False, interpolation="lanczos"))
    bilinear = preprocess(image, 64, True, False, interpolation="bilinear")
    assert (lanczos - bilinear).abs().max() > 0.1
    with pytest.raises(ValueError, match="choices: nearest, nearest_exact, bilinear"):
        preprocess(image, 64, True, False, interpolation="sinc")


def test_preprocess_range() -> None:
    assert torch.all(preprocess(Image.new("RGB", (9, 9), "white"), 8, True, False) == 1.0)
    assert torch.all(preprocess(Image.new("RGB", (9, 9), "black"), 8, True, False) == -1.0)
    out = preprocess(_gradient(70, 40), 16, center_crop=False, flip=True, rng=random.Random(0))
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_random_crop_uses_rng_offsets() -> None:
    image = _gradient(120, 40)  # resized to 96x32: only the horizontal offset varies
    a = preprocess(image, 32, center_crop=False, flip=False, rng=random.Random(3),
                   interpolation="bilinear")
    b = preprocess(image, 32, center_crop=False, flip=False, rng=random.Random(3),
                   interpolation="bilinear")
    assert torch.equal(a, b)
    rng = random.Random(3)
    top, left = rng.randint(0, 0), rng.randint(0, 64)
    resized = transforms.functional.resize(image, 32)
    window = transforms.functional.crop(resized, top, left, 32, 32)
    assert torch.equal(a, transforms.functional.to_tensor(window) * 2 - 1)
    crops = {
        preprocess(image, 32, False, False, random.Random(s))[0, 0, 0].item() for s in range(8)
    }
    assert len(crops) > 1
    centre = preprocess(image, 32, center_crop=True, flip=False)
    assert not all(
        torch.equal(centre, preprocess(image, 32, False, False, random.Random(s))) for s in range(8)
    )


def test_flip_equals_torch_flip() -> None:
    image = _gradient(50, 30)
    plain = preprocess(image, 24, center_crop=True, flip=False)
    flipped = preprocess(image, 24, center_crop=True, flip=True)
    assert torch.equal(flipped, torch.flip(plain, dims=[2]))


def test_preprocess_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="load_rgb"):
        preprocess(Image.new("RGBA", (8, 8)), 8, True, False)


# ---------------------------------------------------------------- fingerprint and overlap


def test_fingerprint_tracks_pixels_and_captions(tmp_path: Path, synthetic_dataset: Path) -> None:
    folder = shutil.copytree(synthetic_dataset, tmp_path / "copy")
    examples = load_examples(folder)
    base = folder_fingerprint(examples, "text")
    assert len(base) == 64
    assert folder_fingerprint(list(reversed(examples)), "text") == base
    assert folder_fingerprint(load_examples(folder), "text") == base
    assert folder_fingerprint(examples, "caption") != base

    changed = [Example(e.path, e.file_name, e.captions) for e in examples]
    changed[0] = Example(examples[0].path, examples[0].file_name, ("a different caption",))
    assert folder_fingerprint(changed, "text") != base

    image = Image.open(examples[1].path).convert("RGB")
    pixel = image.getpixel((0, 0))
    assert isinstance(pixel, tuple)
    image.putpixel((0, 0), ((pixel[0] + 1) % 256, pixel[1], pixel[2]))
    image.save(examples[1].path)
    assert folder_fingerprint(examples, "text") != base


def test_heldout_overlap_is_case_and_whitespace_insensitive(tmp_path: Path) -> None:
    examples = [Example(tmp_path / "a.png", "a.png", ("A red car,  side view", "a blue car"))]
    prompts = ["a RED car, side view ", "a green car", "a blue  car", "a red car, side view "]
    assert heldout_overlap(prompts, examples) == [
        "a RED car, side view ",
        "a blue  car",
        "a red car, side view ",
    ]
    assert heldout_overlap(["a green car"], examples) == []
