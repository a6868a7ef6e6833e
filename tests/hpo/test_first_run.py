"""Issue 23, item 2: the faults a new user still hit, each as a run of ``python -m hpo.run``.

Each example stands for a kind: the outcome asserted is the one line (file, key, what is
allowed), the exit code, that nothing was written or lost, and that nothing was counted that
should not be. No Ray: ``offline_sweep`` refuses to start it, and the sweep's trials and
confirmation are stood in for where a case needs them (the whole-sweep paths are in
``test_sweep.py`` and ``test_integrity_sweep.py``).
"""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml

import hpo.dispatch.tune
import hpo.run
from hpo.study import storage as studies
from hpo.study.lock import lock_path, mysql_lock_name
from hpo.sweep.space import define_by_run
from tests.hpo.conftest import RayStarted, one_line

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def sweep(offline_sweep: SimpleNamespace) -> SimpleNamespace:
    return offline_sweep


def nothing_written(out: Path) -> bool:
    return not any(out.rglob("optuna.db")) and not any(out.rglob("*.lock"))


# -- a hang: --address at a port that answers but is not Ray ----------------------------------

@pytest.mark.parametrize("dry", [True, False])
def test_an_address_that_answers_but_is_not_ray_fails_fast(sweep, capsys, loopback_server,
                                                           dry) -> None:
    address = loopback_server("http")  # python -m http.server's handler
    started = time.time()
    assert sweep.run("--address", address, *(["--dry-run"] if dry else [])) == 2
    assert time.time() - started < 30
    err = one_line(capsys)
    assert err.startswith(f"error: --address {address}: a web server answers there, not Ray")
    assert nothing_written(sweep.out)


# -- a traceback: a study name too long for a file name ---------------------------------------

@pytest.mark.parametrize("dry", [True, False])
def test_a_study_name_too_long_for_a_file_name_is_refused_up_front(sweep, capsys, dry) -> None:
    extra = ["--dry-run"] if dry else []
    assert sweep.run("--study", "s" * 250, *extra) == 2
    assert one_line(capsys).startswith(
        "error: --study: is 250 bytes as UTF-8, at most 100: it names the folder OUT/NAME")
    assert sweep.run(*extra, sweep=sweep.write(name="n" * 101)) == 2
    assert "sweep.yaml: name: is 101 bytes as UTF-8, at most 100" in one_line(capsys)
    assert sweep.run("--study", "é" * 51, *extra) == 2  # 102 bytes: the limit is bytes
    assert "is 102 bytes as UTF-8" in one_line(capsys)
    assert nothing_written(sweep.out)


def test_a_long_database_file_name_still_gives_a_lock_file_name_that_fits(tmp_path) -> None:
    db = tmp_path / ("d" * 240 + ".db")
    lock = lock_path(f"sqlite:///{db}", "x" * 100, tmp_path)
    assert lock is not None and lock.parent == tmp_path and len(lock.name.encode()) <= 255
    assert lock != lock_path(f"sqlite:///{db}", "x" * 99 + "y", tmp_path)
    short = lock_path(f"sqlite:///{tmp_path / 'optuna.db'}", "s", tmp_path)
    assert short == tmp_path / "optuna.db.s.lock"  # as before for ordinary names
    a, b = mysql_lock_name("m" * 60 + "a"), mysql_lock_name("m" * 60 + "b")
    assert len(a) <= 64 and a != b  # MySQL's GET_LOCK takes 64 characters: no shared prefix


# -- wrong reasons: the name rule says letters, and means letters of any script ---------------

def test_study_names_in_any_script_are_accepted_and_composed(sweep, capsys) -> None:
    for name in ("café-车", unicodedata.normalize("NFD", "café-车"), "हिन्दी_1"):
        assert sweep.run("--study", name, "--dry-run") == 0
    capsys.readouterr()
    with pytest.raises(RayStarted):  # the study and its lock file are made; then Ray would start
        sweep.run("--study", unicodedata.normalize("NFD", "café-车"))
    assert (sweep.out / "café-车" / "optuna.db").is_file()  # one folder for both spellings
    study = optuna.load_study(study_name="café-车",
                              storage=f"sqlite:///{sweep.out / 'café-车' / 'optuna.db'}")
    assert study.study_name == "café-车"


@pytest.mark.parametrize(("name", "expected"), [
    ("a b", "--study: may use letters and digits (any script), '-', '_' and '.', at most 100 "
            "bytes as UTF-8, not '.' or '..' (got 'a b': ' ' is not allowed)"),
    ("a/b", "(got 'a/b': '/' is not allowed)"),
    # what argv holds when a non-UTF-8 terminal's bytes cannot be decoded
    ("\udce8\udcbd\udca6", "--study: is not text in this terminal's encoding"),
])
def test_a_refused_study_name_says_which_character(sweep, capsys, name, expected) -> None:
    assert sweep.run("--study", name, "--dry-run") == 2
    assert expected in one_line(capsys)


# -- silently accepted ------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "expected"), [
    ("data.resolution", 100000, "data.resolution: must be <= 2048 (got 100000); a side in "
                                "pixels from 8 to 2048, a multiple of 8"),
    ("eval.width", 4096, "eval.width: must be <= 2048 (got 4096)"),
    ("data.synthetic", {"size": 100000}, "data.synthetic.size: must be <= 2048"),
    ("train", None, "train: is empty (null); give its settings, write {} to take every "
                    "default, or leave the key out"),
    ("model", None, "model: is empty (null)"),
    ("metric", None, "metric: is empty (null)"),
    ("method", None, "method: is empty (null)"),
    ("parameters.rank", None, "parameters.rank: is empty (null)"),
])
def test_values_that_were_silently_accepted_are_refused(sweep, capsys, key, value,
                                                        expected) -> None:
    assert sweep.run("--dry-run", sweep=sweep.write(**{key: value})) == 2
    err = one_line(capsys)
    assert err.startswith(f"error: {sweep.data.parent / 'sweep.yaml'}: ") and expected in err


def test_null_still_means_off_where_it_is_documented(sweep) -> None:
    """``early_terminate: null`` is no early stop and ``data.synthetic: null`` no generated
    data (tests and users write them), unlike a null settings section."""
    assert sweep.run("--dry-run", sweep=sweep.write(early_terminate=None)) == 0
    assert sweep.run("--dry-run", sweep=sweep.write(train={})) == 0  # {}: every default


def test_a_prompts_file_of_repeated_lines_is_refused(sweep, capsys) -> None:
    sweep.prompts.write_text("# held out\n" + "a red car\n" * 10_000, encoding="utf-8")
    assert sweep.run("--dry-run") == 2
    assert (f"eval.prompts: prompts file {sweep.prompts}: line 3 repeats line 2 ('a red car'), "
            f"and 9,998 more repeated line(s); give each held-out prompt once "
            f"(eval.images_per_prompt draws more images of each)") in one_line(capsys)


# -- wrong reasons: the data folders --------------------------------------------------------

def test_a_missing_training_folder_names_the_sweep_file_and_key(sweep, capsys) -> None:
    missing = sweep.data.parent / "nope"
    assert sweep.run("--dry-run", sweep=sweep.write(**{"data.train_dir": str(missing)})) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sweep.data.parent / 'sweep.yaml'}: data.train_dir: "
                          f"{missing}: 1 problem(s) in the training data:")
    assert "folder does not exist" in err


def test_an_emptied_reference_folder_is_not_called_training_data(sweep, capsys) -> None:
    reference = sweep.data.parent / "reference"
    reference.mkdir()
    assert sweep.run("--dry-run", sweep=sweep.write(**{"eval.reference_dir": str(reference)})) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sweep.data.parent / 'sweep.yaml'}: eval.reference_dir: "
                          f"{reference}: 1 problem(s) in the held-out reference images "
                          "(eval.reference_dir):")
    assert "no metadata.jsonl or metadata.csv" in err and "training data" not in err


# -- misleading: the closing line counts this run's trials; a silent confirmation failure -----

def fake_trials(sweep_spec: Any, n: int) -> Any:
    """A stand-in for ``hpo.run.run_trials``: ``n`` COMPLETE trials, each with a LoRA path."""
    def run_trials(spec, name, storage, study, study_dir, cache_dir, remaining, args,
                   ray_output=None) -> None:
        space = define_by_run(spec)
        for i in range(min(n, remaining)):
            trial = study.ask()
            space(trial)
            trial.set_user_attr("lora_path", str(study_dir / f"lora-{trial.number}"))
            trial.set_user_attr("best_step", 60)
            trial.set_user_attr("score_per_rung", {"60": 50.0 + i})
            study.tell(trial, 50.0 + i)
    return run_trials


def scorer(fail: set[str], seen: list[str]) -> Any:
    """A stand-in for the confirmation's Ray tasks: an error for the keys in ``fail``."""
    def make(sweep_spec: Any, address: str | None, output: Any = None) -> Any:
        def score(jobs: dict, seed: int, images: int) -> Any:
            for key in sorted(jobs):
                seen.append(key)
                if key in fail:
                    yield key, {"error": "ModelError: model folder /m has no 'unet' subfolder"}
                else:
                    yield key, {"clip_score": 40.0 + len(key) % 7, "clip_score_stderr": 1.0,
                                "per_prompt": [40.0 + len(key) % 7 + d for d in (0.0, 1.0, 2.0)]}
        return score
    return make


def test_a_confirmation_that_did_not_run_is_not_a_confirmed_winner(sweep, capsys,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(hpo.run, "run_trials", fake_trials(None, 3))
    seen: list[str] = []
    every = {"confirm_trial_0", "confirm_trial_1", "confirm_trial_2", "confirm_baseline"}
    monkeypatch.setattr(hpo.dispatch.tune, "confirmation_scorer", scorer(every, seen))
    assert sweep.run("--trials", "3") == hpo.run.UNCONFIRMED == 3
    out, err = capsys.readouterr()
    assert "NOT confirmed on fresh seeds: trial 2 is the best search score only" in out
    assert ("  trial 2, trial 1, trial 0, the base model: ModelError: model folder /m has no "
            "'unet' subfolder") in out
    assert "confirmed on fresh seeds (seed" not in out
    assert err.strip().splitlines()[-1].startswith(
        "error: the confirmation on fresh seeds is incomplete: 4 of its task(s) have no result")
    study_dir = sweep.out / "tiny-demo"
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert best["result"]["confirmation"]["confirmed"] is False
    assert set(best["result"]["confirmation"]["missing"]) == every
    assert "# NOT confirmed on fresh seeds" in (study_dir / "best.yaml").read_text()

    # Fixed, the same command runs only the confirmation, and counts no trial as this run's.
    seen.clear()
    monkeypatch.setattr(hpo.dispatch.tune, "confirmation_scorer", scorer(set(), seen))
    assert sweep.run("--trials", "3") == 0
    out = capsys.readouterr().out
    assert sorted(seen) == sorted(every)
    assert "sweep tiny-demo: no trial finished in " in out
    assert " s this run; 3 in the study (3 COMPLETE)" in out
    assert "confirmed on fresh seeds (seed 1235" in out and "NOT confirmed" not in out
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert "missing" not in best["result"]["confirmation"]

    # A base model that fails alone: the winner is ranked, but the run still says it lacks one.
    monkeypatch.setattr(hpo.run, "run_trials", fake_trials(None, 1))
    monkeypatch.setattr(hpo.dispatch.tune, "confirmation_scorer",
                        scorer({"confirm_baseline"}, seen))
    studies_db = f"sqlite:///{study_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny-demo", storage=studies_db)
    study.set_user_attr("confirm_baseline", {"error": "x", "seed": 1235,
                                             "images_per_prompt": 2})
    assert sweep.run("--trials", "4") == 3
    out = capsys.readouterr().out
    assert "sweep tiny-demo: 1 trial(s) finished (1 COMPLETE) in " in out
    assert "this run; 4 in the study (4 COMPLETE)" in out
    assert "the confirmation is incomplete; it lacks" in out and "the base model: " in out
    assert len(studies.counted_trials(optuna.load_study(study_name="tiny-demo",
                                                        storage=studies_db))) == 4


def test_confirmation_off_is_not_reported_missing(sweep, capsys, monkeypatch) -> None:
    monkeypatch.setattr(hpo.run, "run_trials", fake_trials(None, 2))
    monkeypatch.setattr(hpo.dispatch.tune, "confirmation_scorer", scorer(set(), []))
    assert sweep.run("--trials", "2") == 0  # confirmed
    off = sweep.write(**{"confirm.top_k": 0})
    assert sweep.run("--trials", "2", sweep=off) == 0  # off now: nothing is missing
    out = capsys.readouterr().out
    assert "NOT confirmed" not in out.split("sweep tiny-demo:")[-1]
