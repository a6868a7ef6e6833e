"""A synthetic "car" dataset for the CPU demo and the tests.

Cartoon side views of cars drawn with PIL, varied in colour, body style, facing direction and
background, captioned in the vocabulary of the real Hyundai data ("a red Hyundai sedan, side
view facing left, on a road"). Hyundai cars carry the brand design (a magenta light bar along
the body and magenta hubs); ``brand=False`` draws and captions the unbranded cars of the base
world that trials.toyworld pretrains on. The attribute combinations are split in two: training
images use one part, ``make_heldout_prompts`` the other, so a held-out prompt never equals a
training caption and CLIP scoring on them measures generalisation rather than recall.

Run ``python -m trials.data.synthetic OUT_DIR [--n 16] [--size 64] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from trials.config import DataSpec

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "blue": (35, 70, 200),
    "white": (242, 242, 242),
    "black": (28, 28, 32),
    "silver": (172, 178, 186),
    "green": (30, 140, 65),
    "yellow": (235, 200, 35),
    "orange": (240, 125, 25),
}
STYLES: tuple[str, ...] = ("sedan", "SUV", "hatchback", "coupe")
VIEWS: tuple[str, ...] = ("left", "right")
BACKGROUNDS: dict[str, str] = {
    "plain": "on a plain background",
    "road": "on a road",
    "sky": "against a blue sky",
}
# Two phrasings of the same attributes; list captions use both. ``{brand}`` is "Hyundai " for
# cars with the brand design and empty for the unbranded cars of the base world
# (trials.toyworld), whose captions never name the brand.
_PHRASINGS: tuple[str, ...] = (
    "a {colour} {brand}{style}, side view facing {view}, {background}",
    "side view of a {colour} {brand}{style} facing {view}, {background}",
)
BRAND = "Hyundai"
# The brand design: a full-length light bar along the body side and light-bar hubs, in a hue
# no body colour, background or glass uses, so it is learnable and visible at 32 px.
BRAND_LIGHT = (255, 40, 200)
# Supersampling factor: draw large, downscale with a good filter for smooth edges.
_SUPER = 4


@dataclass(frozen=True)
class _Shape:
    """Body-style proportions, as fractions of the canvas width/height."""

    length: float  # body length
    body_h: float  # body (lower box) height
    roof_h: float  # cabin height above the body
    # Cabin outline x positions: base-rear, roof-rear, roof-front, base-front.
    cabin: tuple[float, float, float, float]
    wheel_r: float  # wheel radius
    clearance: float  # gap between ground and body bottom


# Cabin x positions are fractions of the body length, measured from the rear of the car.
_SHAPES: dict[str, _Shape] = {
    "sedan": _Shape(0.80, 0.14, 0.12, (0.22, 0.32, 0.58, 0.75), 0.065, 0.035),
    "SUV": _Shape(0.74, 0.20, 0.15, (0.05, 0.10, 0.68, 0.80), 0.080, 0.055),
    "hatchback": _Shape(0.62, 0.16, 0.14, (0.02, 0.08, 0.62, 0.78), 0.065, 0.035),
    "coupe": _Shape(0.80, 0.12, 0.10, (0.18, 0.40, 0.60, 0.72), 0.062, 0.030),
}

Attributes = tuple[str, str, str, str]  # (colour, style, view, background)


def describe(
    colour: str, style: str, view: str, background: str, phrasing: int = 0, brand: bool = True
) -> str:
    """Return the caption for one attribute combination in phrasing 0 or 1.

    ``brand=False`` leaves the brand name out (the base world's captions).
    """
    return _PHRASINGS[phrasing].format(
        colour=colour,
        brand=f"{BRAND} " if brand else "",
        style=style,
        view=view,
        background=BACKGROUNDS[background],
    )


def _all_combinations() -> list[Attributes]:
    return list(itertools.product(COLOURS, STYLES, VIEWS, BACKGROUNDS))


def _is_heldout(combo: Attributes) -> bool:
    # A fixed, seed-independent split (about one combination in five) so that held-out prompts
    # stay unseen whichever seed or size the training set was generated with.
    colour, style, view, background = combo
    index = (
        list(COLOURS).index(colour) * 7
        + STYLES.index(style) * 3
        + VIEWS.index(view) * 5
        + list(BACKGROUNDS).index(background)
    )
    return index % 5 == 0


def training_combinations() -> list[Attributes]:
    """Attribute combinations training images are drawn from."""
    return [c for c in _all_combinations() if not _is_heldout(c)]


def heldout_combinations() -> list[Attributes]:
    """Attribute combinations reserved for held-out prompts (never in training captions)."""
    return [c for c in _all_combinations() if _is_heldout(c)]


def make_heldout_prompts(n: int) -> list[str]:
    """Return ``n`` distinct prompts in the training vocabulary that no training caption equals.

    Combinations are interleaved so that even a few prompts cover several colours and styles;
    the second phrasing is used once the first is exhausted.
    """
    combos = heldout_combinations()
    # A fixed shuffle spreads the first few prompts over colours/styles (the list is sorted).
    random.Random(1234).shuffle(combos)
    prompts = [describe(*c, phrasing=p) for p in range(len(_PHRASINGS)) for c in combos]
    if not 0 <= n <= len(prompts):
        raise ValueError(f"n must be between 0 and {len(prompts)}, got {n}")
    return prompts[:n]


def _draw_background(
    draw: ImageDraw.ImageDraw, kind: str, w: int, h: int, rng: random.Random, ground_y: int
) -> None:
    if kind == "plain":
        tone = rng.randint(196, 222)
        draw.rectangle((0, 0, w, h), fill=(tone, tone, tone + 6))
    elif kind == "road":
        draw.rectangle((0, 0, w, ground_y - h // 8), fill=(150, 190, 225))  # distant sky
        draw.rectangle((0, ground_y - h // 8, w, h), fill=(70, 72, 76))  # asphalt
        dash_y = ground_y + (h - ground_y) // 2
        offset = rng.randint(0, w // 4)
        for x in range(-w // 4 + offset, w, w // 4):
            draw.rectangle((x, dash_y - h // 100, x + w // 8, dash_y + h // 100), fill="white")
    else:  # sky: vertical gradient, a cloud, a strip of grass
        for y in range(ground_y):
            t = y / max(ground_y - 1, 1)
            draw.line((0, y, w, y), fill=(int(60 + 100 * t), int(120 + 80 * t), 235))
        cx, cy = rng.randint(w // 8, w - w // 8), rng.randint(h // 10, h // 3)
        for dx in (-w // 12, 0, w // 12):
            r = w // 14
            draw.ellipse((cx + dx - r, cy - r, cx + dx + r, cy + r), fill=(248, 248, 250))
        draw.rectangle((0, ground_y, w, h), fill=(70, 150, 60))


def _draw_car(
    draw: ImageDraw.ImageDraw,
    colour: tuple[int, int, int],
    shape: _Shape,
    w: int,
    h: int,
    x0: int,
    ground_y: int,
    brand: bool = True,
) -> None:
    """Draw a car facing right whose rear bumper is at ``x0``; ``brand`` adds the brand design."""
    length = int(shape.length * w)
    body_bottom = ground_y - int(shape.clearance * h)
    body_top = body_bottom - int(shape.body_h * h)
    roof = body_top - int(shape.roof_h * h)
    outline = (20, 20, 24) if sum(colour) > 200 else (90, 90, 96)
    # Cabin first, so the body overlaps its base.
    xs = [x0 + int(f * length) for f in shape.cabin]
    draw.polygon(
        [(xs[0], body_top + 2), (xs[1], roof), (xs[2], roof), (xs[3], body_top + 2)],
        fill=colour,
        outline=outline,
        width=max(1, w // 128),
    )
    # Windows: the cabin shrunk inwards, split by a pillar.
    inset = max(2, int(0.18 * (body_top - roof)))
    glass = (150, 190, 215)
    mid = (xs[1] + xs[2]) // 2
    draw.polygon(
        [
            (xs[0] + 2 * inset, body_top),
            (xs[1] + inset, roof + inset),
            (mid - inset // 2, roof + inset),
            (mid - inset // 2, body_top),
        ],
        fill=glass,
    )
    draw.polygon(
        [
            (mid + inset // 2, body_top),
            (mid + inset // 2, roof + inset),
            (xs[2] - inset // 2, roof + inset),
            (xs[3] - 2 * inset, body_top),
        ],
        fill=glass,
    )
    radius = int(shape.body_h * h * 0.35)
    draw.rounded_rectangle(
        (x0, body_top, x0 + length, body_bottom),
        radius=radius,
        fill=colour,
        outline=outline,
        width=max(1, w // 128),
    )
    # Headlight at the front (right), tail light at the rear (left).
    lamp = max(2, int(0.03 * w))
    draw.rectangle(
        (x0 + length - lamp, body_top + lamp, x0 + length - 1, body_top + 2 * lamp),
        fill=(255, 230, 120),
    )
    draw.rectangle((x0 + 1, body_top + lamp, x0 + lamp, body_top + 2 * lamp), fill=(210, 20, 20))
    if brand:
        # Light bar: nose to tail through the middle of the body, about 40 % of its height.
        bar_h = max(2, int(0.4 * (body_bottom - body_top)))
        bar_top = body_top + (body_bottom - body_top - bar_h) // 2
        draw.rectangle((x0, bar_top, x0 + length - 1, bar_top + bar_h), fill=BRAND_LIGHT)
    wheel_r = int(shape.wheel_r * w)
    hub_fill = BRAND_LIGHT if brand else (185, 185, 190)
    for frac in (0.2, 0.8):
        cx, cy = x0 + int(frac * length), ground_y - wheel_r
        draw.ellipse((cx - wheel_r, cy - wheel_r, cx + wheel_r, cy + wheel_r), fill=(18, 18, 18))
        hub = wheel_r // 2
        draw.ellipse((cx - hub, cy - hub, cx + hub, cy + hub), fill=hub_fill)


def render_car(
    combo: Attributes, size: int, rng: random.Random, brand: bool = True
) -> Image.Image:
    """Draw one RGB ``size`` x ``size`` car image; ``rng`` jitters position and details.

    ``brand`` draws the brand design (light bar and hubs in ``BRAND_LIGHT``); the base world
    (trials.toyworld) draws cars without it.
    """
    colour, style, view, background = combo
    w = h = size * _SUPER
    shape = _SHAPES[style]
    ground_y = int(h * rng.uniform(0.78, 0.86))
    slack = w - int(shape.length * w)
    x0 = rng.randint(slack // 4, slack - slack // 4)

    scene = Image.new("RGB", (w, h))
    _draw_background(ImageDraw.Draw(scene), background, w, h, rng, ground_y)
    car = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    _draw_car(ImageDraw.Draw(car), COLOURS[colour], shape, w, h, x0, ground_y, brand)
    if view == "left":
        car = ImageOps.mirror(car)
    scene.paste(car, (0, 0), car)
    return scene.resize((size, size), Image.Resampling.LANCZOS)


def make_car_dataset(
    out_dir: str | Path, n_images: int = 16, size: int = 64, seed: int = 0
) -> Path:
    """Write ``n_images`` PNGs under ``out_dir/images/`` plus ``out_dir/metadata.jsonl``.

    Deterministic in (n_images, size, seed). Every third caption is a list of both phrasings.
    Returns ``out_dir``.
    """
    if n_images < 1 or size < 8:
        raise ValueError(f"need n_images >= 1 and size >= 8, got {n_images} and {size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos = training_combinations()
    rng.shuffle(combos)
    lines = []
    for i in range(n_images):
        # Cycle through shuffled combinations so small sets still vary every attribute.
        combo = combos[i % len(combos)]
        image = render_car(combo, size, rng)
        file_name = f"images/car_{i:03d}.png"
        image.save(out / file_name, format="PNG")
        phrasing = rng.randrange(len(_PHRASINGS))
        text: str | list[str] = describe(*combo, phrasing=phrasing)
        if i % 3 == 2:
            text = [describe(*combo, phrasing=p) for p in range(len(_PHRASINGS))]
        lines.append(json.dumps({"file_name": file_name, "text": text}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def ensure_dataset(data: DataSpec) -> None:
    """Generate the dataset a config asks for (``data.synthetic``) when its folder is empty.

    An existing folder with a metadata file is left alone, so a user's own data is never
    overwritten.
    """
    if data.synthetic is None:
        return
    folder = Path(data.train_dir)
    if (folder / "metadata.jsonl").is_file() or (folder / "metadata.csv").is_file():
        return
    gen = data.synthetic
    make_car_dataset(folder, n_images=gen.n_images, size=gen.size, seed=gen.seed)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: write a synthetic dataset to OUT_DIR."""
    parser = argparse.ArgumentParser(description="Write a synthetic car dataset (imagefolder).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=16, help="number of images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_car_dataset(args.out_dir, n_images=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} images and metadata.jsonl to {out}")


if __name__ == "__main__":
    main()
