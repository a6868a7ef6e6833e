"""Does teaching the brand work, and does it have an optimum? Measured on a real sweep file.

For each learning rate, one LoRA is trained with the sweep's other settings through
:func:`trials.train.loop.run_trial` (the code path of every sweep trial) and scored at its last rung
on the sweep's held-out brand prompts; the base model without LoRA is scored with
:func:`trials.train.loop.run_baseline` on the same prompts and seeds. Differences are paired by
prompt (common random numbers): ``gain = mean_p(lora_p - base_p)`` with standard error
``sd_p(lora_p - base_p) / sqrt(P)``.

``python -m trials.toyworld.teaching sweeps/tiny.yaml --lr 3e-5 1e-3 3e-2 [--set rank=4 ...]``
prints one JSON object (and writes it with ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trials.config import load_trial_config, parse_overrides
from trials.data.synthetic import ensure_dataset
from trials.report import CLIP_SCORE, CLIP_SCORE_STDERR, PER_PROMPT, SAMPLES, STEP


def paired(lora: Sequence[float], base: Sequence[float]) -> dict[str, float]:
    """Mean paired difference, its standard error, and their ratio (``z``)."""
    diffs = [a - b for a, b in zip(lora, base, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else math.nan
    return {"gain": mean, "paired_stderr": se, "z": mean / se if se > 0 else math.nan}


def measure(sweep: Path, learning_rates: list[float], fixed: dict[str, Any],
            work: Path) -> dict[str, Any]:
    """Baseline plus one trial per learning rate; returns scores and paired gains."""
    from trials.train.loop import TrialDiverged, run_baseline, run_trial

    cache = work / "cache"

    def config_for(lr: float | None, name: str):
        overrides = dict(fixed)
        overrides.setdefault("learning_rate", lr if lr is not None else 1e-4)
        return load_trial_config(sweep, overrides, output_dir=work / name, cache_dir=cache)

    base_config = config_for(None, "baseline")
    ensure_dataset(base_config.data)
    started = time.perf_counter()
    base = run_baseline(base_config)
    out: dict[str, Any] = {
        "sweep": str(sweep), "fixed": fixed,
        "baseline": {k: base[k] for k in (CLIP_SCORE, CLIP_SCORE_STDERR, SAMPLES)},
        "trials": []}
    for lr in learning_rates:
        config = config_for(lr, f"lr-{lr:g}")
        entry: dict[str, Any] = {"learning_rate": lr, "params": vars(config.params)}
        try:
            result = run_trial(config, lambda step, metrics, checkpoint: False)
        except TrialDiverged as err:
            entry["diverged"] = str(err)
        else:
            last = result.rungs[-1]
            entry |= {CLIP_SCORE: last.clip_score, STEP: last.step, SAMPLES: last.samples,
                      **paired(last.per_prompt, base[PER_PROMPT])}
        out["trials"].append(entry)
        print(json.dumps(entry), flush=True)
    out["seconds"] = time.perf_counter() - started
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description="Measure LoRA gain vs learning rate.")
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--lr", type=float, nargs="+", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    fixed = parse_overrides(args.overrides, args.sweep)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.sweep, args.lr, fixed, args.work or Path(tmp))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
