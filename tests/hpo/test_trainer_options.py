"""Sweep-file options that follow other trainers: adapter, caption dropout, interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.export import reference_command
from hpo.space import define_by_run
from hpo.spec import load_sweep
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
    from trials.synthetic import make_car_dataset

    folder = make_car_dataset(tmp_path / "cars", n_images=4, size=48, seed=0)
    sweep = write_sweep(tmp_path, **{"data.train_dir": str(folder), "data.synthetic": None,
                                     "data.aspect_buckets": True, "eval.width": 48,
                                     "eval.height": 24})
    assert main(["--sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "buckets        buckets of ~32^2 px, sides multiple of 4" in out
    assert "buckets        32x32 (1.00:1): 4 image(s)" in out
    assert "images of 48x24px" in out

