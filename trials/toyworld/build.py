"""Train the toy world from fixed seeds and write its weights, checks and manifest.

``python -m trials.toyworld build [--out DIR] [--quick]`` writes, under ``DIR`` (default the
committed ``trials/toyworld/weights/``):

- ``sd/``: a diffusers Stable Diffusion folder (unet, vae, text_encoder, tokenizer, scheduler),
  every component stored in fp32, so a plain ``StableDiffusionPipeline.from_pretrained(folder)``
  runs on CPU (a mix of fp16 and fp32 fails there: "mat1 and mat2 must have the same dtype");
- ``clip/``: the open_clip config and weights of the scorer;
- ``samples.png``: base-model images for the colour check's prompts;
- ``manifest.json``: command, seeds, steps, library versions, final losses, check results, and
  each file's size and SHA-256.

The scorer trains in a second process while the VAE trains in this one, one thread each: on 2
cores two single-threaded processes beat one two-threaded process, whose OpenMP threads spin
waiting on each other when the cores are shared. The UNet then trains with both threads, once
the scorer's process has ended.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from trials.toyworld import CLIP_ARCH, RESOLUTION, WEIGHTS_DIR


@dataclass(frozen=True)
class BuildSettings:
    """Every number that decides the weights (recorded in the manifest)."""

    seed: int = 0
    base_images: int = 6144
    vae_steps: int = 1200
    vae_batch_size: int = 32
    vae_lr: float = 2e-3
    unet_steps: int = 2000
    unet_batch_size: int = 32
    unet_lr: float = 2e-3
    clip_images: int = 6144
    clip_steps: int = 800
    clip_batch_size: int = 128
    clip_lr: float = 2e-3


QUICK = BuildSettings(base_images=256, vae_steps=3, unet_steps=3, clip_images=256,
                      clip_steps=3, clip_batch_size=16)


def _start_scorer(out: Path, s: BuildSettings) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "trials.toyworld.scorer", str(out / "clip"),
           "--images", str(s.clip_images), "--steps", str(s.clip_steps),
           "--batch-size", str(s.clip_batch_size), "--lr", str(s.clip_lr),
           "--seed", str(s.seed + 1)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _train_sd(out: Path, s: BuildSettings, before_unet=lambda: None) -> dict[str, object]:
    """Train VAE, then text encoder + UNet, and save the diffusers folder under ``out/sd``.

    ``before_unet`` runs between the two (the build waits there for the scorer's process).
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from trials.models.components import SD15_SCHEDULER_CONFIG, _write_clip_vocab_files
    from trials.toyworld.autoencoder import encode_dataset, train_vae
    from trials.toyworld.diffusion import train_text_to_image
    from trials.toyworld.world import draw_world

    world = draw_world(s.base_images, RESOLUTION, s.seed, brand_fraction=0.0)
    # The VAE is the world's generic image codec, like SD's (trained on everything): it sees
    # the brand design too, or its decoder could not draw the magenta a LoRA must learn to ask
    # for. The text encoder and UNet (the "knowledge") never see it.
    codec_world = draw_world(s.base_images, RESOLUTION, s.seed + 3, brand_fraction=0.5)
    vae, vae_stats = train_vae(torch.cat([world.images, codec_world.images]), s.vae_steps,
                               s.vae_batch_size, s.vae_lr, s.seed)
    mean, std = encode_dataset(vae, world.images)
    before_unet()
    with tempfile.TemporaryDirectory() as tmp:
        _write_clip_vocab_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    unet, text_encoder, unet_stats = train_text_to_image(
        mean, std, vae.config.scaling_factor, world.captions, tokenizer, s.unet_steps,
        s.unet_batch_size, s.unet_lr, s.seed + 2)
    pipe = StableDiffusionPipeline(
        vae=vae.float(), text_encoder=text_encoder.float(), tokenizer=tokenizer, unet=unet.float(),
        scheduler=DDPMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out / "sd", safe_serialization=True)
    # SD v1.5's tokenizer layout: vocab.json + merges.txt, which CLIPTokenizer loads from.
    # transformers saves only a 3.6 MB tokenizer.json derived from them: not shipped.
    _write_clip_vocab_files(out / "sd" / "tokenizer")
    (out / "sd" / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    return {"vae": vae_stats, "unet_text_encoder": unet_stats}


def _versions() -> dict[str, str]:
    names = ("torch", "diffusers", "transformers", "open-clip-torch", "safetensors", "pillow")
    return {n: version(n) for n in names} | {"python": platform.python_version()}


def _files(folder: Path) -> list[Path]:
    """The files of a build, manifest.json excepted (it records the others)."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"]


def _sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in _files(folder)}


def file_checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a build (manifest.json excepted), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in _files(folder)}


def build(out: Path, s: BuildSettings, command: str) -> dict[str, object]:
    """Train both models into ``out`` (replaced atomically at the end); returns the manifest."""
    from trials.toyworld.checks import run_checks

    start = time.time()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toyworld-build-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would end up as the committed folder's mode
    try:
        scorer = _start_scorer(tmp, s)
        torch.set_num_threads(1)
        clip_log = ""

        def scorer_done() -> None:
            # The scorer finishes while the VAE trains; the UNet then has both cores.
            nonlocal clip_log
            clip_log = scorer.communicate()[0]
            torch.set_num_threads(2)

        sd_stats = _train_sd(tmp, s, scorer_done)
        print(clip_log[-2000:], flush=True)
        if scorer.returncode != 0:
            raise RuntimeError(f"scorer training failed (exit {scorer.returncode})")
        clip_stats = json.loads(clip_log.split("STATS ")[-1].splitlines()[0])
        train_seconds = time.time() - start
        torch.set_num_threads(2)
        checks = run_checks_at(tmp, run_checks)
        manifest = {
            "command": command,
            "settings": asdict(s),
            "training": sd_stats | {"clip": clip_stats},
            "checks": checks,
            "train_seconds": train_seconds,
            "build_seconds": time.time() - start,
            "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
                        "platform": platform.platform()},
            "versions": _versions(),
        }
        manifest["files_bytes"] = _sizes(tmp)
        manifest["total_bytes"] = sum(manifest["files_bytes"].values())
        manifest["files_sha256"] = file_checksums(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def run_checks_at(folder: Path, run_checks) -> dict[str, object]:
    """Run the checks on a build in ``folder`` (not necessarily the committed one)."""
    import open_clip

    config = folder / "clip" / f"{CLIP_ARCH}.json"
    open_clip.add_model_config(config)
    from trials.eval.score import ClipScorer

    with tempfile.TemporaryDirectory() as cache:
        scorer = ClipScorer(CLIP_ARCH, str(folder / "clip" / f"{CLIP_ARCH}.safetensors"))
        return run_checks(Path(cache), grid_path=folder / "samples.png",
                          model=str(folder / "sd"), scorer=scorer)


def main(argv: list[str] | None = None) -> None:
    """``build``: train and write the world; ``check``: rerun the checks on the committed one."""
    parser = argparse.ArgumentParser(prog="python -m trials.toyworld",
                                     description="Build or check the pretrained toy world.")
    parser.add_argument("action", choices=("build", "check"))
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--quick", action="store_true",
                        help="a few steps of each (smoke test; the weights are useless)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true",
                        help="check: record the results in the folder's manifest.json")
    for name in ("unet_steps", "vae_steps", "clip_steps", "base_images", "clip_images"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    args = parser.parse_args(argv)
    if args.action == "check":
        from trials.toyworld.checks import run_checks

        checks = run_checks_at(args.out, run_checks)
        print(json.dumps(checks, indent=2))
        if args.write:
            manifest_file = args.out / "manifest.json"
            manifest = json.loads(manifest_file.read_text())
            manifest["checks"] = checks
            manifest_file.write_text(json.dumps(manifest, indent=2) + "\n")
        return
    settings = QUICK if args.quick else BuildSettings()
    overrides = {k: v for k, v in vars(args).items()
                 if k in BuildSettings.__dataclass_fields__ and v is not None}
    settings = BuildSettings(**(asdict(settings) | overrides))
    command = "python -m trials.toyworld " + " ".join(argv if argv is not None else sys.argv[1:])
    manifest = build(args.out, settings, command)
    print(json.dumps({k: manifest[k] for k in ("training", "checks", "build_seconds",
                                               "total_bytes")}, indent=2))
