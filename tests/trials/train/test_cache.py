"""The frozen-work cache: built once, hit by the next trial, rebuilt when the data changes."""

from __future__ import annotations

import shutil

import torch
from PIL import Image

from trials.config import DataSpec, ModelSpec
from trials.data.folder import load_examples
from trials.models.components import load_components
from trials.train import cache
from trials.train.loop import run_baseline


def _encode(folder, cache_dir, tiny_model_dir, **data):
    spec = DataSpec(train_dir=folder, resolution=32, **data)
    components = load_components("tiny", cache_dir=tiny_model_dir.parent)
    examples = load_examples(folder)
    return cache.load_or_build(examples, ModelSpec("tiny"), spec, components, cache_dir,
                               torch.device("cpu"), torch.float32)


def test_second_trial_hits_the_cache_and_a_changed_image_rebuilds_it(
        synthetic_dataset, tiny_model_dir, tmp_path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(synthetic_dataset, folder)
    first = _encode(folder, tmp_path / "cache", tiny_model_dir, random_flip=True)
    second = _encode(folder, tmp_path / "cache", tiny_model_dir, random_flip=True)
    assert not first.cache_hit and second.cache_hit
    assert first.cache_file == second.cache_file
    assert torch.equal(first.latent_mean, second.latent_mean)
    assert first.latent_mean.shape[:2] == (8, 2)  # 8 images x (plain, flipped)
    n_captions = sum(len(ex.captions) for ex in first.examples)
    assert first.text_embeds.shape[0] == n_captions

    image_path = first.examples[0].path
    image = Image.open(image_path).convert("RGB")
    image.putpixel((0, 0), (255, 0, 255))
    image.save(image_path)
    changed = _encode(folder, tmp_path / "cache", tiny_model_dir, random_flip=True)
    assert not changed.cache_hit and changed.cache_file != first.cache_file
    assert not torch.equal(changed.latent_mean[0], first.latent_mean[0])
    assert torch.equal(changed.latent_mean[1:], first.latent_mean[1:])


def test_settings_are_part_of_the_key(synthetic_dataset, tiny_model_dir, tmp_path) -> None:
    plain = _encode(synthetic_dataset, tmp_path, tiny_model_dir)
    flipped = _encode(synthetic_dataset, tmp_path, tiny_model_dir, random_flip=True)
    assert plain.cache_file != flipped.cache_file
    assert plain.latent_mean.shape[1] == 1


def test_random_crop_caches_text_but_not_latents(synthetic_dataset, tiny_model_dir,
                                                 tmp_path) -> None:
    encoded = _encode(synthetic_dataset, tmp_path, tiny_model_dir, center_crop=False)
    assert encoded.latent_mean is None and encoded.text_embeds.shape[0] > 0


def test_baseline_gives_identical_scores_twice(make_trial_config, tmp_path) -> None:
    first = run_baseline(make_trial_config(output_dir=tmp_path / "a"))
    second = run_baseline(make_trial_config(output_dir=tmp_path / "b"))
    assert first["clip_score"] == second["clip_score"]
    assert first["per_prompt"] == second["per_prompt"]
    assert (tmp_path / "a" / "samples.png").read_bytes() == \
        (tmp_path / "b" / "samples.png").read_bytes()


def test_a_damaged_cache_file_is_rebuilt_and_named(synthetic_dataset, tiny_model_dir, tmp_path,
                                                   caplog) -> None:
    # Issue 11, item 5: `truncate -s 100` on the shared file made every later trial fail.
    first = _encode(synthetic_dataset, tmp_path / "cache", tiny_model_dir)
    with open(first.cache_file, "r+b") as handle:
        handle.truncate(100)
    with caplog.at_level("WARNING"):
        again = _encode(synthetic_dataset, tmp_path / "cache", tiny_model_dir)
    assert not again.cache_hit and again.cache_file == first.cache_file
    assert torch.equal(again.latent_mean, first.latent_mean)
    assert f"rebuilding the damaged cache file {first.cache_file}" in caplog.text
    assert _encode(synthetic_dataset, tmp_path / "cache", tiny_model_dir).cache_hit

    # A file that reads but holds the wrong shapes (e.g. written for other data) is rebuilt too.
    from safetensors.torch import save_file

    save_file({"text_embeds": torch.zeros(1, 77, 32)}, first.cache_file)
    assert not _encode(synthetic_dataset, tmp_path / "cache", tiny_model_dir).cache_hit
