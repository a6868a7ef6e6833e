"""``python -m hpo.dashboard [RUN_DIR]``: optuna-dashboard on a sweep's study, with its images.

A command only; the code is :mod:`hpo.outputs.dashboard`.
"""

from hpo.outputs.dashboard import main

if __name__ == "__main__":
    raise SystemExit(main())
