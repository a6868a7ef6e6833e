"""The installed project: its commands and the files its wheel carries (issue 32).

The toy world's weights ship in the wheel (``model.name: toyworld`` resolves beside
``trials/toyworld/__init__.py``), and so does ``benchmarks/results.json`` (the cost forecast
reads it); the sweep files and their prompts (``sweeps/``) ship with the repository only.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Each command and the ``python -m`` module it is.
COMMANDS = {
    "hpo-run": "hpo.run",
    "hpo-dashboard": "hpo.dashboard",
    "hpo-report": "hpo.report",
    "hpo-cluster": "hpo.cluster",
    "trials-train": "trials.train",
    "trials-export-kohya": "trials.export_kohya",
    "trials-synthetic-data": "trials.data.synthetic",
}


def test_every_command_has_a_script_that_names_a_function() -> None:
    scripts = PROJECT["scripts"]
    assert set(scripts) == set(COMMANDS)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    for module in COMMANDS.values():  # and `python -m` keeps working
        assert importlib.util.find_spec(module) is not None, module


def _tracked(folder: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return set(out.stdout.split())


@pytest.mark.slow
def test_the_wheel_carries_the_code_the_toy_world_and_the_commands(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: an in-tree build leaves build/ behind, stale files too
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "runs", ".cache", "site", "__pycache__",
        ".pytest_cache", ".ruff_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(tmp_path / "whl"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "whl").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = z.read(entry_points).decode()
    for package in ("hpo", "trials", "benchmarks"):
        modules = {p for p in _tracked(package) if p.endswith(".py")}
        assert modules <= names, sorted(modules - names)[:5]
    weights = _tracked("trials/toyworld/weights")
    assert weights and weights <= names, sorted(weights - names)
    assert "benchmarks/results.json" in names
    assert not any(n.startswith(("sweeps/", "tests/", "tools/", "docs/")) for n in names)
    for name, target in PROJECT["scripts"].items():
        assert f"{name} = {target}" in scripts
