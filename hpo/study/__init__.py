"""The Optuna study: its storage, its lock, and the fingerprint that guards a rerun.

:mod:`~hpo.study.storage` opens SQLite or PostgreSQL storages and records the study's attrs;
:mod:`~hpo.study.lock` keeps a second driver off a study; :mod:`~hpo.study.fingerprint` refuses a
rerun whose sweep would change what a score means. Imports ``hpo.sweep`` and ``trials`` paths.
"""
