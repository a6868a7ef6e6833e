"""The installed commands' entry points (``[project.scripts]`` in pyproject.toml).

Most commands point straight at their module's ``main``; this module holds the ones whose
``python -m`` form does more than ``raise SystemExit(main())``. ``hpo-run`` is ``python -m
hpo.run``: it also freezes the garbage collector before the interpreter exits, as that module's
``__main__`` block does (the driver's last full collection took seconds and frees nothing).
"""

from __future__ import annotations

import gc


def run(argv: list[str] | None = None) -> int:
    """``hpo-run``: :func:`hpo.run.main`, then ``gc.freeze()`` before exit."""
    from hpo.run import main

    code = main(argv)
    gc.freeze()
    return code
