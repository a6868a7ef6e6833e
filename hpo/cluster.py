"""``python -m hpo.cluster head|worker|auto``: start a Ray node of a multi-node sweep.

A command only; the code is :mod:`hpo.dispatch.cluster`.
"""

from hpo.dispatch.cluster import main

if __name__ == "__main__":
    raise SystemExit(main())
