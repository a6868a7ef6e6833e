"""The sweep orchestrator: sweep files, Ray Tune + Optuna dispatch, the study and its exports.

Wings, bottom to top (a wing imports only the wings below it, and of ``trials`` only its door,
:mod:`trials.api`: the trial's settings, its run, baseline and rescoring, the pre-flight checks
of data, model and scorer, and ``TrialError``, the base of every error a trial raises):

- :mod:`hpo.sweep`: the sweep file as typed objects, the search space, steps as a fidelity,
  the cost forecast's arithmetic;
- :mod:`hpo.study`: the Optuna storage, the lock, the fingerprint;
- :mod:`hpo.verdict`: paired statistics, the winner, confirmation on fresh seeds;
- :mod:`hpo.dispatch`: everything that touches Ray (Tune, ASHA, tasks, fault injection, nodes);
- :mod:`hpo.outputs`: best.yaml, the LoRA, trials.csv, report.html, the dashboard, trackers;
- the front: :mod:`hpo.run` (``python -m hpo.run``), :mod:`hpo.plan` (dry run, pre-flight
  checks, closing summary) and :mod:`hpo.forecast` (the cost before the sweep and as measured,
  for both); ``hpo.dashboard``, ``hpo.report`` and ``hpo.cluster`` are the
  other commands, each a few lines over its wing; :mod:`hpo.scripts` holds the installed
  commands' entry points that are more than a module's ``main``.

``tests/test_architecture.py`` checks these rules.
"""
