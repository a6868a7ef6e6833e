"""The Optuna study: its storage, its lock, and the fingerprint that guards a rerun.

:mod:`~hpo.study.storage` opens SQLite or PostgreSQL storages and records the study's attrs;
:mod:`~hpo.study.lock` keeps a second driver off a study; :mod:`~hpo.study.fingerprint` refuses a
rerun whose sweep would change what a score means; :mod:`~hpo.study.folders` checks the folders
a run writes before it makes them, and names a failed write (a full disk) in one line.
Imports ``hpo.sweep`` and ``trials`` paths.
"""
