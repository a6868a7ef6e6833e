"""``python -m trials.train FILE.yaml``: train and score one LoRA without Ray.

FILE is a sweep file (searched parameters given with ``--set name=value``) or an exported
``best.yaml`` (every parameter fixed), so a sweep's winner can be reproduced by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from trials.config import load_trial_config
from trials.report import CLIP_SCORE, RungReport
from trials.validation import ConfigError, load_yaml_mapping


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trials.train", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("file", type=Path, help="a sweep file or an exported best.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="NAME=VALUE",
                        help="fix a parameter, e.g. --set rank=8 --set learning_rate=1e-4")
    parser.add_argument("--out", type=Path, default=None,
                        help="where checkpoints and result.json go (default runs/manual/NAME)")
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"),
                        help="model and latent cache folder (default runs/cache)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def replaced_values(raw: dict[str, Any], overrides: list[str]) -> list[str]:
    """A note for each ``--set`` that replaces a ``value`` the file fixes."""
    params = raw.get("parameters")
    notes = []
    for pair in overrides:
        name, _, text = pair.partition("=")
        spec = params.get(name.strip()) if isinstance(params, dict) else None
        if isinstance(spec, dict) and "value" in spec:
            notes.append(f"note: --set {name.strip()}={text.strip()} replaces the file's fixed "
                         f"value {spec['value']!r} (parameters.{name.strip()}.value)")
    return notes


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    from trials.config import parse_overrides
    from trials.data.folder import heldout_overlap, load_examples
    from trials.data.synthetic import ensure_dataset
    from trials.train.loop import run_trial

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        raw = load_yaml_mapping(args.file)
        name = str(raw.get("name") or args.file.stem)
        out = (args.out or Path("runs/manual") / name).resolve()
        config = load_trial_config(
            args.file, parse_overrides(args.overrides, args.file),
            output_dir=out, cache_dir=args.cache.resolve())
        train = config.train
        if train.lr_scheduler != "constant" and train.lr_warmup_steps > \
                config.params.max_train_steps:
            raise ConfigError(args.file, "train.lr_warmup_steps", (
                f"must be <= max_train_steps ({config.params.max_train_steps}), or the "
                f"trial never finishes warming up (got {train.lr_warmup_steps})"))
        ensure_dataset(config.data)
        overlap = heldout_overlap(list(config.eval.prompt_list),
                                  load_examples(config.data.train_dir, config.data.caption_column))
    except (ConfigError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2

    if overlap:
        print(f"warning: {len(overlap)} held-out prompt(s) equal a training caption, e.g. "
              f"{overlap[0]!r}: they measure memorization, not generalisation", file=sys.stderr)
    for line in replaced_values(raw, args.overrides):
        print(line, file=sys.stderr)
    expected: dict[str, Any] = raw.get("result") or {}
    print(f"training {config.params} -> {out}")

    def report(step: int, rung: RungReport, checkpoint: Path) -> bool:
        print(f"step {step:>6}: {CLIP_SCORE} {rung.clip_score:.4f} "
              f"± {rung.clip_score_stderr:.4f}  loss {_num(rung.train_loss)}  "
              f"{_num(rung.samples_per_second, '.2f')} samples/s  -> {checkpoint}")
        return False

    try:
        result = run_trial(config, report)
    except Exception as err:
        if args.debug:
            raise
        print(f"error: trial failed: {err}", file=sys.stderr)
        return 1
    best = result.best
    summary = {"params": vars(config.params), "rungs": [r.to_dict() for r in result.rungs],
               "best": None if best is None else best.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(summary, indent=2, default=str))
    if best is not None:
        print(f"best: {CLIP_SCORE} {best.clip_score:.4f} at step {best.step} "
              f"(LoRA in {out / f'step-{best.step:06d}'})")
    if expected.get("best_step") is not None:
        rung = next((r for r in result.rungs if r.step == expected["best_step"]), None)
        if rung is not None:
            print(f"the sweep scored {expected.get(CLIP_SCORE)} at step "
                  f"{expected['best_step']}; this run: {rung.clip_score}")
    return 0


def _num(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
