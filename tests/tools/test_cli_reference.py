"""docs/cli.md is what ``python -m tools.cli_reference`` writes, and the prose documents every
flag of ``python -m hpo.run``."""

from __future__ import annotations

import argparse
import re

from tools.cli_reference import COMMANDS, OUTPUT, REPO, Command, parser_of, reference

DOCS = REPO / "docs"


def test_the_committed_page_is_current() -> None:
    assert OUTPUT.read_text(encoding="utf-8") == reference(), (
        "docs/cli.md is stale: run python -m tools.cli_reference")


def test_every_hpo_run_help_flag_is_documented_in_a_written_page() -> None:
    from hpo.run import build_parser

    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", build_parser().format_help()))
    flags -= {"--help"}
    assert "--sweep" in flags and "--dry-run" in flags
    written = "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md"))
                        if p != OUTPUT)
    missing = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", written))
    assert missing == [], f"say what these do in a page under docs/ (not only cli.md): {missing}"


def test_a_parser_built_inside_main_is_found_without_running_the_command() -> None:
    parser = parser_of(Command("trials.export_kohya", None, "trials.export_kohya"))
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.prog == "python -m trials.export_kohya"
    assert argparse.ArgumentParser.parse_args.__name__ == "parse_args"  # unpatched again


def test_every_installed_script_is_documented() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {c.script for c in COMMANDS if c.script} == set(scripts)
