"""Bad input is caught before Ray starts or a trial runs, with a clear message and exit code 2."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from hpo.plan import PreflightError, check_resources
from hpo.run import main
from hpo.sweep.spec import load_sweep
from tests.hpo.conftest import RayStarted
from tests.sweep_files import REPO


@pytest.fixture
def setup(offline_sweep: SimpleNamespace) -> SimpleNamespace:
    """A valid sweep in tmp_path with its own copy of the data: ``write``, ``data``, ``run``."""
    return offline_sweep


def _meta(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]


def _write_meta(data: Path, rows: list[dict]) -> None:
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _first_image(data: Path) -> Path:
    return data / _meta(data)[0]["file_name"]


DATA_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing folder": (lambda d: shutil.rmtree(d), "folder does not exist"),
    "empty folder": (lambda d: [shutil.rmtree(d), d.mkdir()],
                     "no metadata.jsonl or metadata.csv in the folder"),
    "no metadata": (lambda d: (d / "metadata.jsonl").unlink(),
                    "no metadata.jsonl or metadata.csv in the folder"),
    "empty caption": (lambda d: _write_meta(d, [{**_meta(d)[0], "text": "  "}, *_meta(d)[1:]]),
                      "empty caption"),
    "missing file": (lambda d: _first_image(d).unlink(), "file not found"),
    "escaping file_name": (lambda d: _write_meta(d, [{**_meta(d)[0], "file_name": "../x.png"},
                                                     *_meta(d)[1:]]),
                           "must stay inside the training folder"),
    "truncated image": (lambda d: _first_image(d).write_bytes(_first_image(d).read_bytes()[:200]),
                        "truncated"),
    "zero-byte image": (lambda d: _first_image(d).write_bytes(b""), "empty file"),
    "non-image": (lambda d: _first_image(d).write_text("hello"), "not an image"),
    "duplicate file_name": (lambda d: _write_meta(d, [*_meta(d), _meta(d)[0]]), "duplicate"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_data_folder_problems_stop_before_ray(setup, case, capsys) -> None:
    damage, expected = DATA_CASES[case]
    damage(setup.data)
    assert setup.run() == 2
    err = capsys.readouterr().err
    sweep_file = setup.data.parent / "sweep.yaml"  # the file and key, then the folder
    assert err.startswith(f"error: {sweep_file}: data.train_dir: {setup.data}: "), err
    assert "problem(s) in the training data:" in err and expected in err, err
    assert "Traceback" not in err


def test_wrong_caption_column_names_the_columns_found(setup, capsys) -> None:
    assert setup.run(sweep=setup.write(**{"data.caption_column": "caption"})) == 2
    err = capsys.readouterr().err
    assert "missing column(s) 'caption'" in err and "found: file_name, text" in err


def test_cmyk_16bit_and_paletted_images_are_handled(setup) -> None:
    rows = _meta(setup.data)
    for row, mode in zip(rows, ("CMYK", "I;16", "P"), strict=False):
        path = setup.data / row["file_name"]
        image = Image.open(path).convert("RGB")
        if mode == "I;16":
            image = image.convert("L").point(lambda v: v).convert("I;16")
        else:
            image = image.convert(mode)
        suffix = ".tif" if mode == "CMYK" else ".png"
        target = path.with_suffix(suffix)
        path.unlink()
        image.save(target)
        row["file_name"] = str(target.relative_to(setup.data))
    _write_meta(setup.data, rows)
    with pytest.raises(RayStarted):  # every check passed; the sweep would start now
        setup.run()


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(("changes", "expected"), [
    ({"paramters": {}}, "paramters: unknown key (did you mean 'parameters'?)"),
    ({"train.train_batch_size": "two"}, "train.train_batch_size: must be an integer (got 'two')"),
    ({"parameters.learning_rate.min": -1e-4}, "parameters.learning_rate.min: must be > 0"),
    ({"parameters.target_modules.values": ["cross_atn"]},
     "parameters.target_modules.values[0]: unknown preset 'cross_atn'"),
    ({"resources.gpu_per_trial": 0}, "resources.gpu_per_trial: must be > 0 (got 0)"),
])
def test_sweep_file_mistakes_are_one_line(setup, capsys, changes, expected) -> None:
    assert setup.run(sweep=setup.write(**changes)) == 2
    err = one_line(capsys)
    assert err.startswith("error: ") and str(setup.data.parent / "sweep.yaml") in err
    assert expected in err


@pytest.mark.parametrize(("content", "expected"), [
    (None, "prompts file not found"),
    ("# only a comment\n\n", "has no prompts"),
    (b"\xff\xfe bad bytes\n", "is not UTF-8"),
])
def test_prompts_file_problems(setup, capsys, tmp_path, content, expected) -> None:
    prompts = tmp_path / "bad-prompts.txt"
    if isinstance(content, bytes):
        prompts.write_bytes(content)
    elif content is not None:
        prompts.write_text(content)
    assert setup.run(sweep=setup.write(**{"eval.prompts": str(prompts)})) == 2
    assert expected in one_line(capsys)


def test_missing_model_folder_and_subfolder(setup, capsys, tmp_path, tiny_model_dir) -> None:
    assert setup.run(sweep=setup.write(**{"model.name": str(tmp_path / "nope")})) == 2
    assert f"model.name: model folder not found: {tmp_path / 'nope'}" in one_line(capsys)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    shutil.rmtree(partial / "vae")
    assert setup.run(sweep=setup.write(**{"model.name": str(partial)})) == 2
    assert "has no 'vae' subfolder" in one_line(capsys)


def test_unreachable_database_hides_the_password(setup, capsys) -> None:
    assert setup.run("--storage", "postgresql://sweep:s3cret@127.0.0.1:9/none") == 2
    err = one_line(capsys)
    assert "cannot open the study storage" in err and "s3cret" not in err
    assert "postgresql://sweep:***@127.0.0.1:9/none" in err


@pytest.mark.parametrize("dry", [False, True])
def test_an_output_folder_that_is_a_file_says_so(setup, capsys, tmp_path, dry) -> None:
    """Not "not writable (Permission denied)": the reason is that --out names a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "runs"):
        assert main(["--sweep", str(setup.write()), "--out", str(out),
                     *(["--dry-run"] if dry else [])]) == 2
        assert f"output folder: {blocker} is a file, not a folder (--out must name a folder" \
            in one_line(capsys)
    assert blocker.read_text() == "not a folder"


def test_bad_fault_spec_and_trial_count(setup, capsys) -> None:
    assert setup.run("--inject-faults", "explode=0.5") == 2
    assert "--inject-faults: expected KIND[@AT[:STEP]]=RATE with KIND one of" in one_line(capsys)
    assert main(["--sweep", str(setup.write()), "--trials", "0"]) == 2
    assert "--trials: must be >= 1 (got 0)" in one_line(capsys)


def test_more_gpus_per_trial_than_any_node_has(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    sweep = load_sweep(REPO / "sweeps/hyundai.yaml")
    nodes = [{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 8}]
    check_resources(sweep, nodes)  # 1 GPU per trial fits
    big = sweep.__class__(**{**sweep.__dict__, "resources": sweep.resources.__class__(
        gpu_per_trial=16, cpu_per_trial=4)})
    with pytest.raises(PreflightError, match="16 GPUs per trial, but the largest node has 8"):
        check_resources(big, nodes)


def test_summary_says_why_every_trial_failed(tmp_path: Path) -> None:
    """With no COMPLETE trial the closing lines give each distinct fail reason once."""
    import optuna

    from hpo.plan import fail_reason_lines, summary

    study = optuna.create_study(direction="maximize")
    reasons = ["TargetModuleError: attn2.to_qq match no module\nTraceback ...",
               "TargetModuleError: attn2.to_qq match no module\nTraceback ...",
               "TrialDiverged: loss is nan at step 3"] + [f"other {i}" for i in range(3)]
    for reason in reasons:
        trial = study.ask()
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    text = summary(study, tmp_path, None, tmp_path / "trials.csv", "sqlite:///x.db", 1.0)
    assert "no trial completed" in text
    assert "  failed: trial(s) 0, 1: TargetModuleError: attn2.to_qq match no module" in text
    assert "  failed: trial(s) 2: TrialDiverged: loss is nan at step 3" in text
    assert "Traceback" not in text
    assert "... and 2 other reason(s): see trials.csv" in text
    assert fail_reason_lines(study.trials[:0]) == []


def test_dry_run_checks_cpus_per_trial_against_this_machine(setup, capsys) -> None:
    """Without --address the run would start Ray here, so the dry run refuses what the run
    would refuse after starting it."""
    from hpo.plan import local_node_resources

    too_many = int(local_node_resources()["CPU"]) + 1
    assert setup.run("--dry-run", sweep=setup.write(**{"resources.cpu_per_trial": too_many})) \
        == 2
    err = one_line(capsys)
    assert f"resources.cpu_per_trial: {too_many} CPUs per trial, but the largest node has" in err
    assert setup.run("--dry-run") == 0  # 1 CPU per trial fits
