"""Issue 31's kinds of bad input, each refused by the dry run and by the run before Ray starts,
with one ``error:`` line (file, key, what is allowed) and exit code 2, and no folder left behind.

Every case runs twice: ``--dry-run`` and the run itself (whose Ray start the ``offline_sweep``
fixture refuses: reaching it means every check passed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpo.run import main
from tests.hpo.conftest import RayStarted, one_line

BOTH = pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])


def refused(setup: SimpleNamespace, capsys: pytest.CaptureFixture[str], dry: bool,
            sweep: Path | None = None, *extra: str) -> str:
    """Run (or dry-run) the sweep, expect exit 2 and one error line; return that line."""
    assert setup.run(*extra, *(["--dry-run"] if dry else []), sweep=sweep) == 2
    line = one_line(capsys)
    assert line.startswith("error: ")
    return line


def _meta(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]


def _write_meta(data: Path, rows: list[dict]) -> None:
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# --- target_modules that wrap nothing ---------------------------------------------------------

@BOTH
@pytest.mark.parametrize(("value", "expected"), [
    ({"value": ["to_qq"]}, "to_qq match no module of this UNet; valid names end with one of:"),
    ({"values": ["attn", ["to_q", "ff.net.9"]]}, "ff.net.9 match no module of this UNet"),
])
def test_target_modules_that_match_no_unet_module(setup_sweep, capsys, dry, value,
                                                  expected) -> None:
    sweep = setup_sweep.write(**{"parameters.target_modules": value})
    line = refused(setup_sweep, capsys, dry, sweep)
    assert f"{sweep}: parameters.target_modules: " in line and expected in line, line
    assert "(model toyworld)" in line


def test_every_preset_matches_the_shipped_models(setup_sweep) -> None:
    from trials.api import check_target_modules

    for model in ("toyworld", "tiny"):
        check_target_modules(model, ["cross_attn", "attn", "attn_ff", "to_q,to_v"])


# --- the data folder as a trial reads it -----------------------------------------------------

@BOTH
@pytest.mark.parametrize("kind", ["symlink loop", "dangling link", "unreadable"])
def test_files_of_the_data_folder_a_trial_cannot_read(setup_sweep, capsys, dry, kind) -> None:
    data = setup_sweep.data
    if kind == "symlink loop":
        (data / "loop.png").symlink_to(data / "loop.png")
        expected = "loop.png: cannot read (Too many levels of symbolic links)"
    elif kind == "dangling link":
        (data / "gone.png").symlink_to(data / "nowhere.png")
        expected = "gone.png: cannot read (No such file or directory)"
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        first = data / _meta(data)[0]["file_name"]
        first.chmod(0)
        expected = f"{_meta(data)[0]['file_name']}: cannot read (Permission denied)"
    err = setup_sweep.run(*(["--dry-run"] if dry else [])) == 2 and capsys.readouterr().err
    assert err and "Traceback" not in err, err
    assert "data.train_dir:" in err and expected in err, err


# --- folders the run writes ----------------------------------------------------------------

@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder no write can go into, and the reason the message must give: a read-only tmpfs
    where this process may mount one (root), else a folder without write permission."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                  str(folder)], capture_output=True, check=False)
        if mounted.returncode != 0:
            pytest.skip("root without mount: no read-only folder to test with")
        try:
            yield folder, "is on a read-only file system"
        finally:
            subprocess.run(["umount", str(folder)], check=False)
        return
    folder.chmod(0o555)
    try:
        yield folder, "is not writable by this user (permission denied)"
    finally:
        folder.chmod(0o755)


@BOTH
@pytest.mark.parametrize("where", ["--out", "--storage-path", "--storage"])
def test_storage_paths_that_cannot_be_written(setup_sweep, capsys, unwritable, dry,
                                              where) -> None:
    folder, reason = unwritable
    target = folder / "sub"
    out = setup_sweep.out
    if where == "--out":
        args = ["--sweep", str(setup_sweep.write()), "--out", str(target)]
        label = "output folder is not writable"
    elif where == "--storage-path":
        args = ["--sweep", str(setup_sweep.write()), "--out", str(out), "--storage-path",
                str(target / "ray")]
        label = "--storage-path is not writable"
    else:
        args = ["--sweep", str(setup_sweep.write()), "--out", str(out), "--storage",
                f"sqlite:///{target / 'optuna.db'}"]
        label = "--storage is not writable"
    assert main([*args, "--trials", "2", *(["--dry-run"] if dry else [])]) == 2
    line = one_line(capsys)
    assert label in line and f"{folder} {reason}" in line, line
    assert not out.exists()  # nothing made: no study folder, no cache


def test_a_refused_run_leaves_no_study_or_cache_folder(setup_sweep, capsys, tmp_path) -> None:
    out = tmp_path / "fresh-out"
    sweep = setup_sweep.write(**{"parameters.target_modules": {"value": ["to_qq"]}})
    assert main(["--sweep", str(sweep), "--out", str(out)]) == 2
    assert "parameters.target_modules" in one_line(capsys)
    assert not out.exists()
    # refused after the checks, by the storage: the folders made for it are removed again
    assert main(["--sweep", str(setup_sweep.write()), "--out", str(out), "--storage",
                 "postgresql://sweep:x@127.0.0.1:9/none"]) == 2
    assert "cannot open the study storage" in one_line(capsys)
    assert not out.exists()


# --- racing that can never decide ----------------------------------------------------------

@BOTH
@pytest.mark.parametrize("racing", [{"chunk": 100}, {"chunk": 48}, {"chunk": 10,
                                                                     "min_prompts": 45}])
def test_racing_chunks_that_leave_no_decision(setup_sweep, capsys, dry, racing) -> None:
    sweep = setup_sweep.write(racing=racing)
    line = refused(setup_sweep, capsys, dry, sweep)
    assert f"{sweep}: racing.chunk: racing never decides: a rung of 48 prompts drawn " \
        f"{racing['chunk']} at a time" in line, line
    assert "allowed: a chunk that ends between" in line


# --- the trigger where the text encoder cannot see it ---------------------------------------

def _preserved(setup: SimpleNamespace, **changes: object) -> Path:
    return setup.write(**{"preservation": {"trigger": "Hyundai"}, **changes})


@BOTH
def test_control_prompts_that_still_name_the_trigger(setup_sweep, capsys, tmp_path,
                                                     dry) -> None:
    controls = tmp_path / "controls.txt"
    lines = [p.replace(" Hyundai", "") for p in setup_sweep.prompts.read_text().splitlines()
             if p and not p.startswith("#")]
    lines[3] = "a red Hyundai coupe on a plain background"
    controls.write_text("\n".join(lines) + "\n")
    sweep = _preserved(setup_sweep, preservation={"trigger": "Hyundai",
                                                  "control_prompts": str(controls)})
    line = refused(setup_sweep, capsys, dry, sweep)
    assert f"preservation.control_prompts: {controls}: 1 control prompt(s) still contain the " \
        "trigger 'Hyundai', e.g. 'a red Hyundai coupe on a plain background'" in line, line


@BOTH
def test_a_prompt_whose_trigger_lies_past_77_tokens(setup_sweep, capsys, tmp_path, dry) -> None:
    prompts = tmp_path / "long-prompts.txt"
    long = "a car " + "very " * 80 + "shiny Hyundai"
    prompts.write_text(setup_sweep.prompts.read_text() + long + "\n")
    sweep = _preserved(setup_sweep, **{"eval.prompts": str(prompts)})
    line = refused(setup_sweep, capsys, dry, sweep)
    number = len(prompts.read_text().splitlines())
    assert f"eval.prompts: {prompts}:{number}: the trigger 'Hyundai' ends at token " in line
    assert re.search(r"ends at token 8\d, past the SD text encoder's 77 tokens \(the encoder "
                     r"never sees it\)", line), line


@BOTH
def test_a_caption_whose_trigger_lies_past_77_tokens(setup_sweep, capsys, dry) -> None:
    rows = _meta(setup_sweep.data)
    rows[0]["text"] = "a car " + "very " * 80 + "shiny Hyundai"
    _write_meta(setup_sweep.data, rows)
    line = refused(setup_sweep, capsys, dry, _preserved(setup_sweep))
    assert "data.train_dir: " in line and "the trigger 'Hyundai' ends at token 8" in line, line
    assert "past the SD text encoder's 77 tokens" in line, line


def test_a_10000_word_caption_is_one_warning_line(setup_sweep, capsys, caplog) -> None:
    rows = _meta(setup_sweep.data)
    for row in rows[:2]:
        row["text"] = f"{row['text']}, " + "glossy " * 10_000
    _write_meta(setup_sweep.data, rows)
    with pytest.raises(RayStarted):  # a warning, not a refusal: the rest is cut off
        setup_sweep.run()
    warnings = [r.getMessage() for r in caplog.records if "caption(s) longer" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: data.train_dir: 2 caption(s) longer than the SD "
                                  "text encoder's 77 tokens, the longest 10,0"), warnings[0]


# --- a directory where a file belongs ------------------------------------------------------

@BOTH
@pytest.mark.parametrize("key", ["eval.prompts", "preservation.control_prompts",
                                 "data.train_dir"])
def test_a_folder_for_a_file_and_a_file_for_a_folder(setup_sweep, capsys, tmp_path, dry,
                                                     key) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    if key == "data.train_dir":
        given, expected = setup_sweep.prompts, f"{setup_sweep.prompts} is a file, not a directory"
    else:
        given, expected = folder, f"{folder} is a directory, not a file"
    changes = {key: str(given)}
    if key.startswith("preservation."):
        changes = {"preservation": {"trigger": "Hyundai", "control_prompts": str(given)}}
    sweep = setup_sweep.write(**changes)
    line = refused(setup_sweep, capsys, dry, sweep)
    assert f"{sweep}: {key}: {expected}" in line, line


@BOTH
def test_a_file_given_as_the_model_folder(setup_sweep, capsys, dry) -> None:
    sweep = setup_sweep.write(**{"model.name": str(setup_sweep.prompts)})
    line = refused(setup_sweep, capsys, dry, sweep)
    assert f"model.name: {setup_sweep.prompts} is a file, not a directory" in line, line


@BOTH
def test_a_folder_given_as_the_sweep_file(capsys, tmp_path, dry) -> None:
    assert main(["--sweep", str(tmp_path), *(["--dry-run"] if dry else [])]) == 2
    assert one_line(capsys) == f"error: {tmp_path}: is a directory, not a file"


@pytest.fixture
def setup_sweep(offline_sweep: SimpleNamespace) -> SimpleNamespace:
    return offline_sweep


def test_every_path_key_of_the_sweep_file_says_what_it_must_name() -> None:
    """The kind, not the example: each Path key of every section declares file or folder."""
    import dataclasses
    from pathlib import Path as P

    from hpo.sweep import spec
    from trials import config, settings

    sections = [config.DataSpec, config.EvalSpec, config.PreservationSpec, config.ModelSpec,
                config.TrainSpec, *(c for c in vars(spec).values()
                                    if dataclasses.is_dataclass(c) and isinstance(c, type))]
    for cls in sections:
        try:
            fields = list(settings.declared(cls))
        except TypeError:  # a dataclass of the sweep that is no section of the file
            continue
        for f, s, hint in fields:
            base, _ = settings._base(hint)
            if base is P and not s.derived:
                assert s.path in ("file", "folder"), f"{cls.__name__}.{f.name}"
