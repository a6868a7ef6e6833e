"""The house rules: imports run one way, wing by wing, with no circles; trials never imports
hpo or ray, and hpo enters trials by one door, ``trials.api``.

Every import counts, also one inside a function (a lazy import is still a dependency). A module
may import its own wing and the wings below it; the layers are listed bottom to top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trials", "hpo", "benchmarks", "tools")

# Bottom to top. A module's layer is the first entry that is it or a package above it;
# ``trials.toyworld`` alone is the toy world's paths, its submodules are its builders (top).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("trials.errors", "trials.validation", "trials.settings", "trials.parameters", "trials.trigger",
     "trials.config", "trials.report", "trials.toyworld"),
    ("trials.data",),
    ("trials.models",),
    ("trials.eval",),
    ("trials.train",),
    ("trials", "trials.api", "trials.preflight", "trials.export_kohya", "trials.toyworld.*"),
    ("hpo.sweep",),
    ("hpo.study",),
    ("hpo.verdict",),
    ("hpo.dispatch",),
    ("hpo.outputs",),
    ("hpo", "hpo.plan", "hpo.run", "hpo.dashboard", "hpo.report", "hpo.cluster", "hpo.scripts"),
    ("benchmarks",),
    ("tools",),  # developer tools that write into a checkout (docs/cli.md); not in the wheel
)


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import module`` counts the module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                found.add(full if full in known else module)
    return {m for m in found if m in known and m != name} | {
        m for m in found if m.split(".")[0] == "ray"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if entry.endswith(".*"):
                hit = module.startswith(entry[:-1])
                length = len(entry) - 1
            else:
                hit = module == entry or module.startswith(entry + ".")
                length = len(entry)
            if hit and length > depth:
                best, depth = i, length
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_one_that_imports_it_back(graph) -> None:
    assert cycles(graph) == []


def test_cycles_are_found() -> None:
    # The check itself: a circle through three modules is reported, a chain is not.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_wing_imports_a_wing_above_it(graph) -> None:
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m, deps in sorted(graph.items()) for d in sorted(deps)
              if d.split(".")[0] != "ray" and layer_of(d) > layer_of(m)]
    assert upward == []


def test_trials_never_imports_hpo_or_ray(graph) -> None:
    bad = [f"{m} imports {d}" for m, deps in sorted(graph.items()) if m.split(".")[0] == "trials"
           for d in sorted(deps) if d.split(".")[0] in ("hpo", "ray")]
    assert bad == []


def test_hpo_imports_trials_only_through_its_door(graph) -> None:
    inside = sorted(f"{m} imports {d}" for m, deps in graph.items()
                    if m.split(".")[0] == "hpo"
                    for d in deps if d.split(".")[0] == "trials" and d != "trials.api")
    assert inside == [], "import these through trials.api (add to it what is missing)"


def test_only_dispatch_imports_ray(graph) -> None:
    users = sorted(m for m, deps in graph.items() if any(d.split(".")[0] == "ray" for d in deps))
    assert users and all(m.startswith("hpo.dispatch.") or m.startswith("benchmarks.")
                         for m in users), users


def test_every_wing_says_what_it_is_for() -> None:
    for init in sorted([*(REPO / "trials").glob("*/__init__.py"),
                        *(REPO / "hpo").glob("*/__init__.py")]):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), f"{init}: say what the wing is for and imports"
