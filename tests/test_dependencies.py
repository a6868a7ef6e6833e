"""Every third-party package the code imports is declared in pyproject.toml, where it is needed.

The package modules' imports (every one, also inside a function) are read from their syntax
trees and mapped to distributions with ``importlib.metadata.packages_distributions()``; each
must be a requirement of the project or of the extra that code runs under (issue 32:
sqlalchemy was imported by hpo.study and declared nowhere, psutil by the benchmarks).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OWN = {"hpo", "trials", "benchmarks", "tests", "tools"}
# The code in each folder, and the requirement lists (the base is "") installed when it runs.
WHERE = {
    "hpo": ("",),
    "trials": ("",),
    "benchmarks": ("", "bench"),
    "tools": ("",),
    "tests": ("", "dev"),
}


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` is ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """``"ray[tune]>=2.60,<2.61"`` -> ``"ray"``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return canonical(match.group(1))


def declared() -> dict[str, set[str]]:
    """Requirement names by extra ("" for the project's own dependencies)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = {"": {requirement_name(r) for r in project["dependencies"]}}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out[extra] = {requirement_name(r) for r in reqs}
    return out


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def third_party(folder: str) -> dict[str, set[str]]:
    """Third-party import names used under ``folder``, each with the files that use it."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        for name in top_level_imports(path):
            if name not in sys.stdlib_module_names and name not in OWN:
                out.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return out


@pytest.mark.parametrize("folder", sorted(WHERE))
def test_every_third_party_import_is_declared(folder: str) -> None:
    extras = declared()
    allowed = set().union(*(extras[e] for e in WHERE[folder]))
    dists = packages_distributions()
    missing = []
    for name, files in sorted(third_party(folder).items()):
        candidates = {canonical(d) for d in dists.get(name, [])}
        assert candidates, f"{name} (imported by {sorted(files)}) is not installed"
        if not candidates & allowed:
            missing.append(f"{name} -> {sorted(candidates)} (in {sorted(files)[:3]})")
    where = " or ".join(f"[{e}]" if e else "dependencies" for e in WHERE[folder])
    assert missing == [], f"declare in pyproject.toml {where}: {missing}"


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    import sqlalchemy.engine\n"
                      "    from psutil import Process\n    from . import x\n")
    assert top_level_imports(module) == {"os", "sqlalchemy", "psutil"}
    assert requirement_name("psycopg[binary]>=3.2") == "psycopg"
    assert canonical("open_clip_torch") == canonical("open-clip-torch")
