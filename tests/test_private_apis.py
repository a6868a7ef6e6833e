"""Optuna and Ray through their public APIs: their private names appear in one module each.

``hpo.sweep.optuna_private`` and ``hpo.dispatch.ray_private`` list each private use and why it
has no public way, and their pin tests fail when a release moves one. Everywhere else in
``hpo``, ``trials`` and ``benchmarks`` a private name of either library is refused here, so an
upgrade of Optuna or Ray has two modules to check, not the whole project.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpo", "trials", "benchmarks")
ALLOWED = {"hpo/sweep/optuna_private.py", "hpo/dispatch/ray_private.py"}

# Private names of Optuna and Ray that this project has used (or would be tempted to): the
# attributes behind Study, Trial, the storages and GridSampler, Ray's OptunaSearch state and
# CLIReporter's table, and Ray's worker-output printers.
PRIVATE = re.compile(r"""
    \._storage\b | \._study_id\b | \._trial_id\b | \._backend\b | \._get_trial\b
  | \._cached_frozen_trial\b | (?<!\w)_ot_\w+ | \._progress_str\b
  | \._all_grids\b | \._param_names\b | \._search_space\b | \._grid_value_equal\b
  | \bray\._private\b | \boptuna\.\w+\._\w+ | \bray\.[\w.]*?\._\w+
  | \bray_logging\b | \bprint_to_stdstream\b | \bfilter_autoscaler_events\b
  | \bglobal_worker_stdstream_dispatcher\b | \b_CachedStorage\b
""", re.VERBOSE)


def private_imports(tree: ast.AST) -> list[str]:
    """Imports of a private module or name of Optuna or Ray (``from optuna.x._y import z``,
    ``from ray.tune import _x``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            parts = node.module.split(".")
            if parts[0] in ("optuna", "ray") and (
                    any(p.startswith("_") for p in parts)
                    or any(a.name.startswith("_") for a in node.names)):
                found.append(f"from {node.module} import "
                             f"{', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in ("optuna", "ray")
                      and any(p.startswith("_") for p in a.name.split("."))]
    return found


def uses(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    hits = [f"{i}: {m.group(0)}" for i, line in enumerate(text.splitlines(), 1)
            for m in PRIVATE.finditer(line.split("#")[0])]
    return hits + private_imports(ast.parse(text))


def test_private_optuna_and_ray_names_live_in_one_module_each() -> None:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            if name not in ALLOWED and (hits := uses(path)):
                found[name] = hits
    assert found == {}, "use the public API, or move the use into " + " or ".join(sorted(ALLOWED))


def test_the_two_modules_hold_the_uses_they_list() -> None:
    for name in ALLOWED:
        assert uses(REPO / name), f"{name}: no private use left; remove it and its pin test"


def test_the_check_catches_what_it_is_for() -> None:
    caught = [
        "study._storage.set_trial_system_attr(trial._trial_id, 'k', 1)",
        "page = f'/studies/{study._study_id}'",
        "from ray._private import worker",
        "from optuna.storages._rdb import models",
        "state.pop('_ot_trials')",
        "self._ot_study.tell(t, 1.0)",
        "print(self._progress_str(trials, done))",
        "storage._get_trial(1)",
        "optuna.storages._CachedStorage(rdb)",
    ]
    for line in caught:
        tree_hits = private_imports(ast.parse(line)) if line.startswith("from") else []
        assert PRIVATE.search(line) or tree_hits, line
    for line in ("self._storage_ids = {}", "storage.get_trial(trial_id)",
                 "from ray.tune.search import Searcher", "study.trials[0].number",
                 "pipe._execution_device"):
        assert not PRIVATE.search(line) and not private_imports(ast.parse(line)), line
