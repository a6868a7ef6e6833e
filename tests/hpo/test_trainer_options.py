"""Sweep-file options that follow other trainers: adapter, caption dropout, interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.outputs.export import reference_command
from hpo.sweep.space import define_by_run
from hpo.sweep.spec import load_sweep
from tests.sweep_files import write_sweep
from trials.validation import ConfigError


def _sweep(tmp_path: Path, **changes):
    return load_sweep(write_sweep(tmp_path, **changes))


def test_reference_behaviour_is_the_default(tmp_path) -> None:
    sweep = _sweep(tmp_path)
    config = sweep.trial_config({"rank": 4, "learning_rate": 1e-4, "max_train_steps": 8,
                                 "target_modules": "attn"}, output_dir=tmp_path,
                                cache_dir=tmp_path)
    assert config.params.adapter == "lora"
    assert config.caption_dropout == 0.0
    assert sweep.data.image_interpolation_mode == "lanczos"


def test_adapter_and_caption_dropout_are_searchable(tmp_path) -> None:
    import optuna

    sweep = _sweep(tmp_path, **{"parameters.adapter": {"values": ["lora", "dora"]},
                                "parameters.caption_dropout": {"distribution": "uniform",
                                                               "min": 0.0, "max": 0.2},
                                "train.caption_dropout": 0.05})
    study = optuna.create_study()
    seen = set()
    space = define_by_run(sweep)
    for _ in range(12):
        trial = study.ask()
        space(trial)
        config = sweep.trial_config(trial.params, output_dir=tmp_path, cache_dir=tmp_path)
        seen.add(config.params.adapter)
        assert 0.0 <= config.caption_dropout <= 0.2  # the searched value wins over train's
        study.tell(trial, 0.0)
    assert seen == {"lora", "dora"}


def test_fixed_train_caption_dropout_applies_when_not_searched(tmp_path) -> None:
    sweep = _sweep(tmp_path, **{"train.caption_dropout": 0.1})
    config = sweep.trial_config({"rank": 4, "learning_rate": 1e-4, "max_train_steps": 8,
                                 "target_modules": "attn"}, output_dir=tmp_path,
                                cache_dir=tmp_path)
    assert config.caption_dropout == 0.1


@pytest.mark.parametrize(("changes", "expected"), [
    ({"parameters.adapter": {"value": "lokr"}},
     "parameters.adapter.value: must be one of lora, dora (got 'lokr')"),
    ({"parameters.adapter": {"distribution": "uniform", "min": 0, "max": 1}},
     "parameters.adapter.distribution: adapter takes value or values, not a distribution"),
    ({"train.caption_dropout": 1.5}, "train.caption_dropout: must be <= 1 (got 1.5)"),
    ({"data.image_interpolation_mode": "linear"},
     "data.image_interpolation_mode: must be one of"),
])
def test_bad_values_are_one_line(tmp_path, changes, expected) -> None:
    with pytest.raises(ConfigError) as info:
        _sweep(tmp_path, **changes)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_reference_command_carries_the_interpolation_mode(tmp_path) -> None:
    sweep = _sweep(tmp_path, **{"data.image_interpolation_mode": "bicubic",
                                "parameters.adapter": {"value": "dora"},
                                "train.caption_dropout": 0.1})
    values = {p.name: p.value for p in sweep.parameters if p.is_fixed}
    values.update(rank=4, learning_rate=1e-4, max_train_steps=8, target_modules="attn")
    command, notes = reference_command(sweep, values, 8)
    assert '--image_interpolation_mode="bicubic"' in command
    assert any("adapter 'dora'" in n for n in notes)
    assert any("caption_dropout 0.1" in n for n in notes)


def test_dry_run_shows_the_buckets_and_their_counts(tmp_path, capsys) -> None:
    from hpo.run import main
    from trials.data.synthetic import make_car_dataset

    folder = make_car_dataset(tmp_path / "cars", n_images=4, size=48, seed=0)
    sweep = write_sweep(tmp_path, **{"data.train_dir": str(folder), "data.synthetic": None,
                                     "data.aspect_buckets": True, "eval.width": 48,
                                     "eval.height": 24})
    assert main(["--sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    # tiny.yaml's toyworld model: VAE factor 4 x UNet factor 2.
    assert "buckets        buckets of ~32^2 px, sides multiple of 8" in out
    assert "buckets        32x32 (1.00:1): 4 image(s)" in out
    assert "image(s) of 48x24px" in out


@pytest.mark.slow
def test_sweep_over_adapters_with_buckets_caption_dropout_and_wandb(ray_cluster, tmp_path,
                                                                    monkeypatch) -> None:
    import optuna
    import yaml
    from diffusers import StableDiffusionPipeline
    from optuna.trial import TrialState
    from PIL import Image

    from hpo.run import main
    from tests.trials.data.test_buckets import write_mixed_folder
    from trials.models.components import TINY_MODEL, resolve_model_path

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = write_mixed_folder(tmp_path / "mixed")
    sweep = write_sweep(tmp_path, **{
        "method": "grid", "early_terminate": None, "data.train_dir": str(data),
        "data.synthetic": None, "data.aspect_buckets": True, "eval.width": 48,
        "eval.height": 24, "train.caption_dropout": 0.1,
        "parameters.adapter": {"values": ["lora", "dora"]}, "parameters.rank": {"value": 2},
        "parameters.learning_rate": {"value": 1e-3}, "parameters.max_train_steps": {"value": 4},
        "parameters.target_modules": {"value": "attn"}})
    out = tmp_path / "runs"
    assert main(["--sweep", str(sweep), "--trials", "2", "--out", str(out), "--address",
                 ray_cluster, "--wandb"]) == 0
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{out / 'e2e' / 'optuna.db'}")
    assert sorted(t.params["adapter"] for t in study.trials) == ["dora", "lora"]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    dora = next(t for t in study.trials if t.params["adapter"] == "dora")
    lora = next(t for t in study.trials if t.params["adapter"] == "lora")
    print(f"cpu_seconds lora {lora.user_attrs['cpu_seconds']:.1f} "
          f"dora {dora.user_attrs['cpu_seconds']:.1f}")
    best_lora = out / "e2e" / "best_lora"
    pipe = StableDiffusionPipeline.from_pretrained(
        resolve_model_path(TINY_MODEL, out / "cache"), safety_checker=None,
        requires_safety_checker=False)
    pipe.load_lora_weights(best_lora)  # the winner, DoRA or not, loads in diffusers
    winner = study.best_trial.params["adapter"]
    assert (best_lora / "lora_kohya.safetensors").is_file() == (winner == "lora")
    with Image.open(best_lora / "samples.png") as grid:
        assert grid.width == 48  # eval at 48 x 24, one image per prompt (the FAST sweep)
    runs = list((out / "e2e" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    best = yaml.safe_load((out / "e2e" / "best.yaml").read_text())
    assert best["data"]["aspect_buckets"] is True
    assert "--image_interpolation_mode" in best["result"]["reference_command"]
