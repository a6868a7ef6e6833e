"""Developer tools that write into a checkout (the docs site's generated pages).

Not installed with the package (pyproject.toml's ``packages.find`` leaves it out). A tool may
import any module of ``hpo``, ``trials`` and ``benchmarks``; nothing imports it but its tests.
"""
