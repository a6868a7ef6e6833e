"""``python -m hpo.report RUN_DIR``: write a study's ``report.html`` again.

A command only; the code is :mod:`hpo.outputs.report`.
"""

from hpo.outputs.report import main

if __name__ == "__main__":
    raise SystemExit(main())
