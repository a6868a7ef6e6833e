"""trials.api, the one door hpo may use: cheap to import, one error base, pre-flight checks that
read the data and model as a trial does."""

from __future__ import annotations

import inspect
import json
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.sweep_files import REPO
from trials import api
from trials.api import (
    ConfigError,
    DataError,
    DataSpec,
    EvalSpec,
    KohyaExportError,
    ModelError,
    SetupError,
    TrialDiverged,
    TrialError,
    TrialOutOfMemory,
)


def test_importing_the_door_imports_no_torch() -> None:
    # A fresh interpreter: this one has torch already. Reading a sweep file must stay fast.
    heavy = ("torch", "diffusers", "transformers", "peft", "open_clip", "torchvision")
    code = (f"import sys, trials.api; print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_everything_the_door_lists_is_there() -> None:
    assert [name for name in api.__all__ if not hasattr(api, name)] == []


def test_the_door_runs_the_trial_code_with_its_signatures() -> None:
    from trials.train import loop, probe, rescore

    for door, inside in ((api.run_trial, loop.run_trial), (api.run_baseline, loop.run_baseline),
                         (api.rescore, rescore.rescore)):
        assert inspect.signature(door) == inspect.signature(inside), door.__name__
    assert list(inspect.signature(api.probe_blocker).parameters) == \
        list(inspect.signature(probe.not_local).parameters)


def test_every_trial_error_has_one_base_and_says_whether_every_trial_shares_it() -> None:
    shared = (ConfigError, DataError, ModelError, SetupError)
    own = (TrialDiverged, TrialOutOfMemory, KohyaExportError)
    assert all(issubclass(cls, TrialError) for cls in shared + own)
    assert all(cls.every_trial for cls in shared) and not any(cls.every_trial for cls in own)
    # What callers caught before still catches them.
    assert all(issubclass(cls, ValueError) for cls in (*shared, KohyaExportError))
    assert issubclass(TrialDiverged, RuntimeError) and issubclass(TrialOutOfMemory, RuntimeError)
    assert ConfigError("f.yaml", "data.resolution", "must be > 0").key == "data.resolution"


def test_the_old_homes_of_the_errors_name_the_same_classes() -> None:
    from trials import export_kohya
    from trials.data import folder
    from trials.models import components
    from trials.train import loop
    from trials.validation import ConfigError as validation_error

    assert folder.DataError is DataError and components.ModelError is ModelError
    assert loop.TrialDiverged is TrialDiverged and loop.TrialOutOfMemory is TrialOutOfMemory
    assert export_kohya.KohyaExportError is KohyaExportError
    assert validation_error is ConfigError


def test_errors_survive_the_trip_from_a_worker() -> None:
    # Ray pickles what a task raises; an error that cannot be rebuilt loses its message.
    for err in (DataError("d", [("x.png", "file not found")]),
                SetupError("3 held-out image(s) leave no training image", "data.holdout"),
                TrialDiverged(3, float("nan")),
                ConfigError("sweep.yaml", "data.resolution", "must be > 0 (got -1)")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.key == err.key
    config = SimpleNamespace(train=SimpleNamespace(train_batch_size=4),
                             params=SimpleNamespace(rank=64), data=SimpleNamespace(resolution=512))
    oom = TrialOutOfMemory(config)
    assert str(pickle.loads(pickle.dumps(oom))) == str(oom)


@pytest.fixture
def data(synthetic_dataset: Path) -> DataSpec:
    return DataSpec(train_dir=synthetic_dataset, resolution=32)


def _captions(folder: Path) -> list[str]:
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    return [c for row in rows for c in ([row["text"]] if isinstance(row["text"], str)
                                        else row["text"])]


def test_check_data_reads_the_folder_as_a_trial_does(data: DataSpec) -> None:
    from trials.data.folder import folder_fingerprint, load_examples

    caption = _captions(data.train_dir)[0]
    check = api.check_data(data, ["a purple bicycle", caption.upper()])
    assert check is not None
    assert check.fingerprint == folder_fingerprint(load_examples(data.train_dir), "text")
    assert check.examples == 8 and check.held_out == () and check.references == 0
    assert check.overlap == (caption.upper(),)  # case does not hide memorisation
    held = api.check_data(replace(data, holdout=2, holdout_seed=1))
    assert held is not None and len(held.held_out) == 2
    assert held.held_out == api.held_out_files(replace(data, holdout=2, holdout_seed=1))


def test_check_data_names_the_key_at_fault(data: DataSpec, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder does not exist") as caught:
        api.check_data(replace(data, train_dir=tmp_path / "nowhere"))
    assert caught.value.key == "data.train_dir"
    with pytest.raises(DataError) as caught:
        api.check_data(data, reference_dir=tmp_path / "no-references")
    assert caught.value.key == "eval.reference_dir"
    with pytest.raises(SetupError, match="leave no training image") as caught:
        api.check_data(replace(data, holdout=8))
    assert caught.value.key == "data.holdout" and not str(caught.value).startswith("data.")
    with pytest.raises(SetupError, match="does not contain the trigger 'zork'") as caught:
        api.check_data(data, trigger="zork")
    assert caught.value.key == "preservation.trigger"


def test_a_dry_run_leaves_a_synthetic_folder_undrawn(tmp_path: Path) -> None:
    spec = DataSpec(train_dir=tmp_path / "cars", synthetic=api.SyntheticData(n_images=4, size=32))
    assert api.check_data(spec, generate=False) is None and not spec.train_dir.exists()
    check = api.check_data(spec)
    assert check is not None and check.examples == 4


def test_check_model_applies_the_trials_path_rule(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert api.check_model("tiny", tmp_path / "cache", build=False) is None
    assert not (tmp_path / "cache").exists()  # a dry run builds nothing
    assert api.check_model("tiny", tiny_model_dir.parent) == str(tiny_model_dir)
    assert api.check_model("toyworld", tmp_path) == str(api.TOYWORLD_SD_DIR)
    assert api.check_model("org/name", tmp_path) == "org/name"  # a hub id: the download says
    broken = tmp_path / "models" / "sd"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelError, match="has no 'unet' subfolder") as caught:
        api.check_model(str(broken), tmp_path)
    assert caught.value.key == "model.name"


def test_check_scorer_and_long_prompts(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    long = " ".join(["a very long red car with chrome wheels"] * 12)
    prompts.write_text(f"a red car\n{long}\n", encoding="utf-8")
    spec = EvalSpec(prompts=prompts, prompt_list=("a red car", long), clip_model="tiny",
                    clip_pretrained=None)
    api.check_scorer(spec, "sweep.yaml")
    with pytest.raises(ConfigError, match="open_clip has no model 'ViT-Z-99'") as caught:
        api.check_scorer(replace(spec, clip_model="ViT-Z-99"), "sweep.yaml")
    assert caught.value.key == "eval.clip_model"
    lines = api.long_prompts(spec)
    assert lines and all(line.startswith(f"warning: {prompts}:2: prompt has ") for line in lines)


def test_bucket_lines_come_from_the_model_and_the_folder(data: DataSpec) -> None:
    lines = api.bucket_lines(replace(data, aspect_buckets=True), "tiny")
    assert lines and any("tiny model" in line for line in lines)
