"""The world's CLIP scorer: a small open_clip CLIP trained contrastively on drawn cars.

Trained on cars with and without the brand design, captioned accordingly ("a red Hyundai
sedan, ..." vs "a red sedan, ..."), so its text-image cosine tracks colour, body style, view,
background and the brand design. Loss: CLIP's symmetric cross-entropy over image-text logits
(Radford et al. 2021) with soft targets: images in a batch that share a true caption are all
positives, since a world of 384 captions repeats captions within a batch. Half the training
images are blurred (down- and up-sampled) so that the blurry images a small generator draws
are scored by content, not sharpness. Saved as an open_clip config JSON plus a safetensors
state dict and loaded like real weights: ``create_model_and_transforms(CLIP_ARCH,
pretrained=<file>)``.

Run in its own process during a build: ``python -m trials.toyworld.scorer OUT_DIR --steps N``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from trials.toyworld import CLIP_ARCH, RESOLUTION
from trials.toyworld.world import draw_world

CLIP_CONFIG: dict[str, object] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": RESOLUTION, "layers": 2, "width": 64, "head_width": 16,
                   "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, 3, h, w]`` -> what open_clip's preprocess gives (OpenAI mean/std)."""
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _blur_some(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur a random half of the batch by 2x down/up-sampling (bilinear)."""
    mask = torch.rand(len(x), generator=gen) < 0.5
    if mask.any():
        small = torch.nn.functional.interpolate(x[mask], scale_factor=0.5, mode="bilinear",
                                                antialias=True)
        x = x.clone()
        x[mask] = torch.nn.functional.interpolate(small, size=x.shape[-2:], mode="bilinear")
    return x


def train_clip(n_images: int, steps: int, batch_size: int, lr: float, seed: int,
               log_every: int = 25) -> tuple[open_clip.CLIP, dict[str, float]]:
    """Train the scorer from ``seed``; returns it (eval mode) and stats (loss, accuracy)."""
    world = draw_world(n_images, RESOLUTION, seed, brand_fraction=0.5)
    ids = world.caption_ids()
    tokenizer = open_clip.SimpleTokenizer(context_length=77)
    tokens = tokenizer(world.captions)
    images = normalise(world.images)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**CLIP_CONFIG)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * max(0.0, 1 - s / steps)))
    gen = torch.Generator().manual_seed(seed + 1)
    start, recent, acc = time.time(), [], []
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        img = _blur_some(images[idx], gen)
        image_features, text_features, logit_scale = model(img, tokens[idx])[:3]
        logits = logit_scale * image_features @ text_features.T
        same = (ids[idx][:, None] == ids[idx][None, :]).float()
        target = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(dim=1), dim=1).mean()
                      + torch.sum(-target * logits.log_softmax(dim=0).T, dim=1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP caps the temperature at 100
            hit = same[torch.arange(batch_size), logits.argmax(dim=1)]
        recent = [*recent, loss.item()][-50:]
        acc = [*acc, float(hit.mean())][-50:]
        if step % log_every == 0 or step == steps - 1:
            print(f"clip step {step}/{steps} loss {sum(recent) / len(recent):.4f} "
                  f"in-batch acc {sum(acc) / len(acc):.3f} ({time.time() - start:.0f} s)",
                  flush=True)
    model.eval()
    return model, {"loss": sum(recent) / len(recent), "in_batch_accuracy": sum(acc) / len(acc),
                   "seconds": time.time() - start}


def save_clip(model: open_clip.CLIP, out_dir: Path) -> tuple[Path, Path]:
    """Write ``CLIP_ARCH.json`` (open_clip model config) and ``CLIP_ARCH.safetensors`` (fp16)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / f"{CLIP_ARCH}.json"
    weights = out_dir / f"{CLIP_ARCH}.safetensors"
    config.write_text(json.dumps(CLIP_CONFIG, indent=2) + "\n")
    # fp16 halves the file; open_clip's load_state_dict copies into its fp32 parameters.
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    return config, weights


def main(argv: list[str] | None = None) -> None:
    """Train and save the scorer; prints its stats as one JSON line at the end."""
    parser = argparse.ArgumentParser(description="Train the toy world's CLIP scorer.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, default=6144)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, stats = train_clip(args.images, args.steps, args.batch_size, args.lr, args.seed)
    save_clip(model, args.out_dir)
    print("STATS " + json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
