"""``python -m benchmarks.adapters``: what DoRA costs against LoRA, and what buckets save.

Not yet part of ``benchmarks.run``/BENCHMARKS.md; it prints its two tables.

1. CPU milliseconds per training step (forward, backward, fused AdamW) of the tiny model with a
   rank-4 ``attn_ff`` adapter, LoRA and DoRA side by side in interleaved rounds, one thread,
   process CPU time (less sensitive than wall time to other work on the machine).
2. The share of a photo's area cropped away at 512 px: the reference's square crop against
   aspect-ratio buckets (:mod:`trials.data.buckets`), for common photo shapes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trials.config import TrainSpec
from trials.data.buckets import SD_SIDE_MULTIPLE, crop_fraction, make_buckets, nearest_bucket
from trials.models.components import load_components
from trials.models.lora import attach_lora
from trials.parameters import HyperParams
from trials.train.loop import diffusion_loss, make_optimizer

PHOTOS = [(1024, 512), (2048, 820), (1920, 1080), (1200, 800), (800, 1200), (512, 512)]


class _Config:  # the fields diffusion_loss reads
    train = TrainSpec()


def step_ms(adapter: str, cache_dir: Path, steps: int, warmup: int = 5) -> float:
    """CPU ms per training step of a fresh tiny UNet with this adapter."""
    components = load_components("tiny", cache_dir=cache_dir)
    torch.manual_seed(0)
    params = attach_lora(components.unet, HyperParams(4, 4.0, 1e-3, 1, "attn_ff",
                                                      adapter=adapter))
    optimizer = make_optimizer(params, 1e-3)
    latents, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    components.unet.train()
    for i in range(warmup + steps):
        if i == warmup:
            started = time.process_time()
        loss = diffusion_loss(components.unet, components.noise_scheduler, latents, text,
                              _Config)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.process_time() - started) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adapters")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"lora": [], "dora": []}
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(args.rounds):
            for adapter in times:
                times[adapter].append(step_ms(adapter, Path(cache), args.steps))
    print("adapter  CPU ms/step (rounds)          median")
    for adapter, values in times.items():
        print(f"{adapter:<8} {', '.join(f'{v:.1f}' for v in values):<30} "
              f"{statistics.median(values):.1f}")
    ratio = statistics.median(times["dora"]) / statistics.median(times["lora"])
    print(f"DoRA / LoRA: {ratio:.2f}x\n")
    buckets = make_buckets(512, SD_SIDE_MULTIPLE)
    print("photo       bucket    cropped (bucket)  cropped (square 512)")
    for w, h in PHOTOS:
        bucket = buckets[nearest_bucket(w, h, buckets)]
        print(f"{w}x{h:<6} {bucket[0]}x{bucket[1]:<5} {crop_fraction(w, h, bucket):>8.1%}"
              f"          {crop_fraction(w, h, (512, 512)):>8.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
