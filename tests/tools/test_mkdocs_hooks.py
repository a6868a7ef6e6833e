"""The docs hook drops the Sphinx roles mkdocstrings leaves in front of code spans."""

from __future__ import annotations

from tools.mkdocs_hooks import on_page_content


def test_sphinx_roles_before_code_spans_are_dropped() -> None:
    html = "calls :func:<code>run_trial</code>, a :class:<code>TrialError</code>; ratio 1:2"
    assert on_page_content(html) == (
        "calls <code>run_trial</code>, a <code>TrialError</code>; ratio 1:2")
