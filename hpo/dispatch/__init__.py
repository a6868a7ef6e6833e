"""Everything that touches Ray: trials and tasks sent to the cluster's CPUs and GPUs.

:mod:`~hpo.dispatch.tune` runs the sweep with Ray Tune (OptunaSearch, ASHA, the trainable that
calls :func:`trials.train.loop.run_trial` and records each rung in the study), the baseline and
the confirmation tasks; :mod:`~hpo.dispatch.rungs` says what the study keeps of each rung's
:class:`trials.report.RungReport` (and what it drops, and why); :mod:`~hpo.dispatch.referee` is
the racing referee trials ask part-way through a rung; :mod:`~hpo.dispatch.chaos` injects
faults for tests; :mod:`~hpo.dispatch.cluster` starts the nodes of a multi-node cluster and
checks that an ``--address`` is one (a port that answers but is not Ray would hang
``ray.init``). Imports ``hpo.sweep``, ``hpo.study``, ``hpo.verdict`` and ``trials``.
"""
