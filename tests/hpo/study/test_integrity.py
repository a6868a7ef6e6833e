"""Study integrity (issue 11), without Ray: what a rerun refuses, what the dry run checks, and
what the study records for a trial. The whole-sweep cases are in ``test_integrity_sweep.py``."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import hpo.dispatch.tune
from hpo.dispatch.recorder import StudyRecorder
from hpo.dispatch.tune import is_sweep_wide, start_ray
from hpo.run import main
from hpo.study import storage as studies
from hpo.study.lock import study_lock
from hpo.sweep.spec import load_sweep
from tests.hpo.conftest import RayStarted, one_line
from tests.hpo.test_preflight import DATA_CASES
from tests.sweep_files import REPO
from trials.data.folder import DataError

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def sweep(offline_sweep: SimpleNamespace) -> SimpleNamespace:
    return offline_sweep


# -- item 2: a changed sweep is refused before Ray starts -------------------------------------

def test_a_changed_sweep_is_refused_naming_each_changed_key(sweep, capsys) -> None:
    with pytest.raises(RayStarted):  # the first run records the fingerprint, then starts Ray
        sweep.run()
    capsys.readouterr()
    changed = sweep.write(**{"metric.goal": "minimize", "data.resolution": 48})
    assert sweep.run(sweep=changed) == 2
    err = one_line(capsys)
    assert "changed data.resolution, metric.goal." in err and "--study NEW_NAME" in err
    # A changed search space: the same refusal (Optuna would fail mid-sweep instead).
    assert sweep.run(sweep=sweep.write(**{"parameters.rank.values": [2, 4, 16]})) == 2
    assert "changed parameters.rank." in one_line(capsys)
    # The prompts' contents count, not their path; so does the training data.
    sweep.prompts.write_text("a red car\n", encoding="utf-8")
    assert sweep.run() == 2
    assert "changed eval.prompts." in one_line(capsys)
    sweep.prompts.write_text((REPO / "sweeps/prompts/tiny_heldout.txt").read_text(),
                             encoding="utf-8")
    caption = sweep.data / "metadata.jsonl"
    caption.write_text(caption.read_text().replace('"text": "', '"text": "a ', 1))
    assert sweep.run() == 2
    assert "changed data.contents." in one_line(capsys)
    # The dry run says the same, and writes nothing.
    assert sweep.run("--dry-run") == 2
    assert "changed data.contents." in one_line(capsys)


def test_retrained_weights_in_the_same_model_folder_are_refused(sweep, capsys,
                                                                tmp_path: Path) -> None:
    """A local model folder counts by its contents (the toy world rebuilt in place, say)."""
    from trials.toyworld import SD_DIR

    model = tmp_path / "my-model"
    shutil.copytree(SD_DIR, model)
    file = sweep.write(**{"model.name": str(model)})
    with pytest.raises(RayStarted):
        sweep.run(sweep=file)
    capsys.readouterr()
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor, as retraining would change them all
    weights.write_bytes(bytes(data))
    assert sweep.run(sweep=file) == 2
    assert "changed model.contents." in one_line(capsys)


def test_local_contents_hashes_names_sizes_and_both_ends(tmp_path: Path) -> None:
    from hpo.study.contents import EDGE_BYTES, local_contents

    big = tmp_path / "m" / "w.bin"
    big.parent.mkdir()
    big.write_bytes(bytes(3 * EDGE_BYTES))
    first = local_contents(tmp_path / "m")
    big.write_bytes(bytes(EDGE_BYTES) + b"\1" + bytes(2 * EDGE_BYTES - 1))
    assert local_contents(tmp_path / "m") == first  # the middle is not read (documented)
    big.write_bytes(bytes(3 * EDGE_BYTES - 1) + b"\1")
    second = local_contents(tmp_path / "m")
    assert second != first
    big.rename(tmp_path / "m" / "v.bin")  # same bytes, another name
    assert local_contents(tmp_path / "m") not in (first, second)


def test_changes_that_do_not_define_a_score_may_continue(sweep, capsys) -> None:
    with pytest.raises(RayStarted):
        sweep.run()
    moved = sweep.prompts.with_name("moved.txt")
    shutil.copy(sweep.prompts, moved)
    free = sweep.write(**{"resources.max_retries": 3, "early_terminate": None,
                          "method": {"type": "random", "seed": 7}, "eval.prompts": str(moved)})
    with pytest.raises(RayStarted):
        sweep.run(sweep=free)


# -- item 4: the one-driver lock lives with the study's storage --------------------------------

def test_a_second_driver_with_another_out_and_the_same_storage_is_refused(sweep, capsys,
                                                                          tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    with study_lock(storage, "tiny-demo", tmp_path / "first"):
        assert sweep.run("--storage", storage, out=tmp_path / "other-out") == 2
        err = one_line(capsys)
        assert "another sweep driver is running on it" in err
        assert str(tmp_path / "shared.db") in err
    with pytest.raises(RayStarted):  # free again once the first driver let go
        sweep.run("--storage", storage, out=tmp_path / "other-out")


# -- item 9: the dry run runs every pre-Ray check -----------------------------------------------

@pytest.mark.parametrize("case", ["missing folder", "missing file", "truncated image"])
def test_dry_run_checks_the_data_folder(sweep, capsys, case) -> None:
    damage, expected = DATA_CASES[case]
    damage(sweep.data)
    assert sweep.run("--dry-run") == 2
    err = capsys.readouterr().err  # a data error lists every problem, one a line
    assert err.startswith(f"error: {sweep.data.parent / 'sweep.yaml'}: data.train_dir: "
                          f"{sweep.data}: ") and expected in err and "Traceback" not in err


def test_dry_run_checks_model_and_clip_and_writes_nothing(sweep, capsys, tmp_path) -> None:
    assert sweep.run("--dry-run", sweep=sweep.write(**{"model.name": str(tmp_path / "nope")})) \
        == 2
    assert "model folder not found" in one_line(capsys)
    assert sweep.run("--dry-run", sweep=sweep.write(**{"eval.clip_model": "ViT-Z-99"})) == 2
    err = one_line(capsys)
    assert "eval.clip_model: open_clip has no model 'ViT-Z-99'" in err
    assert sweep.run("--dry-run", sweep=sweep.write(**{"eval.clip_model": "ViT-B-32",
                                                       "eval.clip_pretrained": "laion9z"})) == 2
    err = one_line(capsys)
    assert "eval.clip_pretrained: 'laion9z' is not a pretrained tag of ViT-B-32" in err
    assert "laion2b_s34b_b79k" in err  # what open_clip offers is listed
    out = tmp_path / "fresh-out"
    assert main(["--sweep", str(sweep.write()), "--out", str(out), "--dry-run"]) == 0
    assert not out.exists()  # spend nothing, write nothing


def test_long_prompts_warn_with_file_and_line(sweep, caplog) -> None:
    long = " ".join(["a very long red car with chrome wheels"] * 12)
    sweep.prompts.write_text(f"# held out\na red car\n{long}\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert sweep.run("--dry-run") == 0
    lines = [r.getMessage() for r in caplog.records if "tokens" in r.getMessage()]
    assert len(lines) == 2, lines  # the SD text encoder and the scorer
    assert all(line.startswith(f"warning: {sweep.prompts}:3: prompt has ") for line in lines)
    assert "the SD text encoder reads 77" in lines[0] and "the scorer toyworld reads 77" in lines[1]


# -- item 10: inputs that hang or eat memory ---------------------------------------------------

def test_an_address_nobody_answers_fails_fast_with_one_line(sweep, capsys) -> None:
    started = time.time()
    assert sweep.run("--address", "127.0.0.1:1") == 2
    assert time.time() - started < 30
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in one_line(capsys)


def test_absurd_q_uniform_is_refused_arithmetically(sweep, capsys) -> None:
    changed = sweep.write(**{"parameters.learning_rate": {
        "distribution": "q_uniform", "min": 1e-4, "max": 1e-3, "q": 1e-12}})
    started = time.time()
    assert sweep.run("--dry-run", sweep=changed) == 2
    assert time.time() - started < 30
    assert "parameters.learning_rate.q: gives 900,000,001 values; at most 1,000,000" in \
        one_line(capsys)
    fine = load_sweep(sweep.write(**{"parameters.learning_rate": {
        "distribution": "q_uniform", "min": 1e-4, "max": 1e-3, "q": 1e-9}}))
    assert fine.parameter("learning_rate").size() == 900_001


# -- item 11: the small ones ---------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "expected"), [
    (("--study", "../../x"), "--study: may use letters and digits (any script), '-', '_' and "
                             "'.', at most 100 bytes as UTF-8, not '.' or '..' (got '../../x': "
                             "'/' is not allowed)"),
    (("--study", ".."), "--study: may use letters and digits (any script)"),
    (("--concurrency", "0"), "--concurrency: must be >= 1 (got 0)"),
    (("--concurrency", "-2"), "--concurrency: must be >= 1 (got -2)"),
])
def test_bad_flags_are_refused(sweep, capsys, flags, expected) -> None:
    assert sweep.run(*flags) == 2
    assert expected in one_line(capsys)


def test_warmup_longer_than_every_trial_is_refused(sweep, capsys) -> None:
    changed = sweep.write(**{"train.lr_scheduler": "linear", "train.lr_warmup_steps": 61})
    assert sweep.run("--dry-run", sweep=changed) == 2
    assert "train.lr_warmup_steps: must be <= the largest max_train_steps (60)" in \
        one_line(capsys)


def test_a_local_ray_is_sized_by_ray_itself(monkeypatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(hpo.dispatch.tune.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(hpo.dispatch.tune.ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(hpo.dispatch.tune.ray, "cluster_resources", lambda: {"CPU": 3.0})
    assert start_ray(None) == {"CPU": 3.0}
    assert seen["num_cpus"] is None  # Ray reads the container's CPU quota


# -- items 6 and 7: what the recorder writes for a trial -------------------------------------

class FakeSearcher:
    """hpo.dispatch.searcher.StudySearch without Tune: asks the study when first named."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
        self.study = study
        self.storage = storage
        self.trials: dict[str, optuna.Trial] = {}

    def optuna_trial(self, trial_id: str) -> optuna.Trial:
        if trial_id not in self.trials:
            self.trials[trial_id] = self.study.ask()
        return self.trials[trial_id]

    def storage_id(self, trial_id: str) -> int:
        return studies.trial_id_of(self.storage, self.study.study_name,
                                   self.optuna_trial(trial_id).number)


def rung(step: int, score: float, steps: int = 8) -> dict[str, Any]:
    return {"step": step, "max_train_steps": steps, "clip_score": score,
            "clip_score_stderr": 0.1, "train_seconds": 1.0, "eval_seconds": 1.0,
            "device": "cpu", "precision": "no"}


def ray_trial(result: dict[str, Any] | None = None, failures: int = 0, trial_id: str = "t1"
              ) -> Any:
    return SimpleNamespace(trial_id=trial_id, last_result=result or {}, config={},
                           run_metadata=SimpleNamespace(num_failures=failures), error_file=None)


@pytest.fixture
def recorder(tmp_path: Path) -> StudyRecorder:
    sweep = load_sweep(REPO / "sweeps/tiny.yaml")
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    return StudyRecorder(FakeSearcher(study, storage), sweep, baseline=None)


def test_everything_recorded_for_a_retried_trial_comes_from_its_last_attempt(recorder) -> None:
    # Issue 11, item 7: Optuna ignores a second report at a step already reported.
    first = ray_trial()
    recorder.on_trial_result(0, [], first, rung(4, 1.0))
    recorder.on_trial_result(0, [], first, rung(8, 9.0))  # the dead attempt got further
    recorder.on_trial_recover(0, [], ray_trial(failures=1))
    retry = ray_trial(rung(4, 2.0, steps=4), failures=1)
    recorder.on_trial_result(0, [], retry, rung(4, 2.0, steps=4))
    recorder.on_trial_complete(0, [], retry)
    trial = recorder.searcher.study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == 2.0
    assert trial.intermediate_values == {4: 2.0}
    assert trial.user_attrs["score_per_rung"] == {"4": 2.0}
    assert trial.user_attrs["attempt"] == 2 and trial.user_attrs["precision"] == "no"


def test_an_error_every_trial_would_share_stops_the_sweep_uncounted(recorder) -> None:
    # Issue 11, item 6: a deleted training image fails every later trial the same way.
    assert is_sweep_wide(DataError("d", [("x.png", "file not found")]))
    assert not is_sweep_wide(RuntimeError("x"))
    error = "DataError: data/metadata.jsonl: line 1: images/car_000.png: file not found"
    trial = ray_trial({"trial_error": error, "sweep_error": True})
    recorder.on_trial_complete(0, [], trial)
    assert recorder.stopper.reason == error and recorder.stopper.stop_all()
    study = recorder.searcher.study
    # the driver does this after the stop
    assert studies.recover_interrupted(study, recorder.searcher.storage) == [0]
    failed, queued = study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == error
    assert not studies.counted_trials(study)  # it does not use up --trials
    assert queued.state == TrialState.WAITING


def test_trials_cut_short_by_a_sweep_wide_stop_are_requeued_not_counted(recorder) -> None:
    """Issue 23: the stop ends the other running trials too (stopped, or their processes
    killed); before their last step that is neither their FAIL nor ASHA's PRUNED."""
    for trial_id in ("broken", "stopped", "killed", "done", "own-error"):
        recorder.on_trial_start(0, [], ray_trial(trial_id=trial_id))
    recorder.on_trial_result(0, [], ray_trial(trial_id="stopped"), rung(4, 1.0))
    recorder.on_trial_result(0, [], ray_trial(trial_id="done"), rung(4, 1.0))
    recorder.on_trial_result(0, [], ray_trial(trial_id="done"), rung(8, 2.0))
    error = "ModelError: model folder m has no 'unet' subfolder"
    recorder.on_trial_complete(0, [], ray_trial({"trial_error": error, "sweep_error": True},
                                                trial_id="broken"))
    recorder.on_trial_complete(0, [], ray_trial(rung(4, 1.0), trial_id="stopped"))
    recorder.on_trial_error(0, [], ray_trial(trial_id="killed"))
    recorder.on_trial_complete(0, [], ray_trial(rung(8, 2.0), trial_id="done"))
    recorder.on_trial_complete(0, [], ray_trial({"trial_error": "TrialDiverged: nan at step 3"},
                                                trial_id="own-error"))
    study = recorder.searcher.study
    number = {key: t.number for key, t in recorder.searcher.trials.items()}
    assert sorted(studies.recover_interrupted(study, recorder.searcher.storage)) == sorted(
        number[k] for k in ("broken", "stopped", "killed"))
    counted = studies.counted_trials(study)
    assert sorted((t.number, t.state) for t in counted) == [
        (number["done"], TrialState.COMPLETE), (number["own-error"], TrialState.FAIL)]
    stopped, killed = study.trials[number["stopped"]], study.trials[number["killed"]]
    assert stopped.user_attrs["fail_reason"].startswith(
        f"stopped with the sweep, before its last step: {error}")
    assert killed.user_attrs["fail_reason"].startswith(
        f"its process ended while the sweep stopped for: {error}")
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 3  # queued again


# -- item 8: a slow reader does not end the sweep ----------------------------------------------

def test_writes_wait_for_a_reader_holding_the_database(tmp_path: Path) -> None:
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    holder = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None,
                             check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # longer than sqlite3's default 5 s busy timeout

    def release() -> None:
        time.sleep(7)
        holder.execute("COMMIT")

    thread = threading.Thread(target=release)
    thread.start()
    started = time.time()
    trial = study.ask()
    study.tell(trial, 1.0)
    thread.join()
    assert time.time() - started >= 6
    assert study.trials[0].value == 1.0
