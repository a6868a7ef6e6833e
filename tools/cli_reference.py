"""``python -m tools.cli_reference``: write ``docs/cli.md`` from the commands' argparse parsers.

Like ``python -m hpo.sweep.schema`` for the sweep file, the reference is generated from the
definition, so it cannot drift: ``tests/tools/test_cli_reference.py`` fails when the committed
page differs from what this writes. Each command's parser comes from its module's
``build_parser()`` where it has one, else from its ``main`` stopped at ``parse_args``.

The page is rendered from the parsers' actions (flags, metavars, defaults, help), not from
``format_help()``, whose layout changes with the terminal width and the Python version.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "cli.md"


@dataclass(frozen=True)
class Command:
    """A documented command: its ``python -m`` module, installed script and the code behind it."""

    module: str
    script: str | None
    source: str  # the module whose build_parser() or main() holds the parser


COMMANDS = (
    Command("hpo.run", "hpo-run", "hpo.run"),
    Command("hpo.dashboard", "hpo-dashboard", "hpo.outputs.dashboard"),
    Command("hpo.report", "hpo-report", "hpo.outputs.report"),
    Command("hpo.cluster", "hpo-cluster", "hpo.dispatch.cluster"),
    Command("trials.train", "trials-train", "trials.train.cli"),
    Command("trials.export_kohya", "trials-export-kohya", "trials.export_kohya"),
    Command("trials.data.synthetic", "trials-synthetic-data", "trials.data.synthetic"),
    # Developer commands: they write into a checkout, and have no installed script.
    Command("trials.toyworld", None, "trials.toyworld.build"),
    Command("hpo.sweep.schema", None, "hpo.sweep.schema"),
    Command("tools.cli_reference", None, "tools.cli_reference"),
)


class _Parsed(Exception):
    """Raised by a patched ``parse_args`` to hand the parser back instead of parsing."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


@contextmanager
def _stop_at_parse_args() -> Iterator[None]:
    original = argparse.ArgumentParser.parse_args

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = grab  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]


def parser_of(command: Command) -> argparse.ArgumentParser:
    """The command's parser, without running the command."""
    module = importlib.import_module(command.source)
    build: Callable[[], argparse.ArgumentParser] | None = getattr(module, "build_parser", None)
    if build is not None:
        return build()
    with _stop_at_parse_args():
        try:
            module.main([])
        except _Parsed as parsed:
            return parsed.parser
    raise RuntimeError(f"{command.source}.main() never called parse_args")


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion: %(default)s, %(prog)s, ...
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = parser.prog
        text = text % params
    return text


def _default(action: argparse.Action) -> str:
    if (action.default is None or action.default is False or action.default == argparse.SUPPRESS
            or action.nargs == 0):
        return ""  # no default, or a switch
    default = action.default
    if isinstance(default, Path) and default.is_absolute() and default.is_relative_to(REPO):
        default = default.relative_to(REPO)  # a checkout's own folder, wherever it is
    if isinstance(default, list | tuple) and not default:
        return ""
    return f"`{default}`"


def _name(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        return f"`{name} ...`" if action.nargs in ("+", "*") else f"`{name}`"
    if action.nargs == 0:
        return ", ".join(f"`{s}`" for s in action.option_strings)
    value = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper())
    if action.nargs in ("+", "*"):
        value += " ..."
    return ", ".join(f"`{s} {value}`" for s in action.option_strings)


def _meaning(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text, with the choices where the argument's name does not show them."""
    text = _help(parser, action)
    if not action.choices or (action.option_strings and not action.metavar):
        return text  # no choices, or already in the flag's value
    choices = ", ".join(f"`{c}`" for c in action.choices)
    return f"{text}; one of: {choices}" if text else f"One of: {choices}"


def render_command(command: Command) -> str:
    """One command's section: synopsis, description and a table of its arguments."""
    parser = parser_of(command)
    lines = [f"## `python -m {command.module}`", ""]
    if command.script:
        lines += [f"Installed as `{command.script}`.", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    actions = [a for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]
    if actions:
        lines += ["| Argument | Default | Meaning |", "| --- | --- | --- |"]
    else:
        lines += ["No arguments but `--help`."]
    for action in actions:
        lines.append(f"| {_name(action)} | {_default(action)} | "
                     f"{_cell(_meaning(parser, action))} |")
    if parser.epilog:
        lines += ["", " ".join(parser.epilog.split())]
    return "\n".join(lines) + "\n"


def reference() -> str:
    """The whole page."""
    head = (
        "# Command-line reference\n\n"
        "<!-- Generated by `python -m tools.cli_reference` from the commands' argparse "
        "parsers: do not edit by hand. -->\n\n"
        "Every command runs as `python -m MODULE` from a checkout; the installed package also "
        "puts the user-facing ones on the `PATH` under the script names given "
        "(`pip install .`). `--help` prints the same as below.\n")
    return "\n".join([head, *(render_command(c) for c in COMMANDS)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.cli_reference",
        description="Write docs/cli.md from the commands' argparse parsers.")
    parser.parse_args(argv)
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(reference(), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
