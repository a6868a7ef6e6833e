"""mkdocs hooks (``hooks:`` in mkdocs.yml): tidy what mkdocstrings renders from the docstrings.

The project's docstrings cross-reference with Sphinx roles (``:func:`run_trial```), which
mkdocstrings leaves as text before the code span; the role is dropped, the name kept.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|data|meth|attr|exc|obj|const):(?=<code)")


def on_page_content(html: str, **kwargs: object) -> str:
    """Drop Sphinx roles left in front of code spans."""
    return _ROLE.sub("", html)
