"""The docs site (mkdocs.yml, docs/): every page is in the navigation, and it builds offline.

``make test`` runs ``mkdocs build --strict`` itself; these checks say what is wrong sooner and
keep the build from reaching out: no theme fonts, no plugin that downloads at build time.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
OFFLINE_PLUGINS = {"search", "mkdocstrings"}  # social cards, privacy, ... fetch at build time


class _Loader(yaml.SafeLoader):
    """mkdocs.yml may hold ``!!python/name:`` tags; they are kept as strings here."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)


def config() -> dict:
    return yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)


def nav_pages(entries: list) -> list[str]:
    out = []
    for entry in entries:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            out.extend(nav_pages(value) if isinstance(value, list) else [value])
    return out


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    pages = nav_pages(config()["nav"])
    assert len(pages) == len(set(pages))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")
               if not p.name.startswith("_")}
    assert set(pages) == on_disk


def test_the_build_is_strict_and_offline() -> None:
    cfg = config()
    assert cfg["strict"] is True
    assert cfg["theme"]["font"] is False  # Material would link Google Fonts
    names = {p if isinstance(p, str) else next(iter(p)) for p in cfg["plugins"]}
    assert names <= OFFLINE_PLUGINS, names - OFFLINE_PLUGINS
    python = cfg["plugins"][[n if isinstance(n, str) else next(iter(n))
                             for n in cfg["plugins"]].index("mkdocstrings")]
    assert "import" not in python["mkdocstrings"]["handlers"]["python"]  # inventories: network


def test_make_test_builds_the_docs() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "mkdocs build --strict" in test_recipe
    assert "--quiet" not in test_recipe and " -q" not in test_recipe  # hides strict's warnings
