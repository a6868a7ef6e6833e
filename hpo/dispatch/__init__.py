"""Everything that touches Ray: trials and tasks sent to the cluster's CPUs and GPUs.

:mod:`~hpo.dispatch.tune` runs the sweep with Ray Tune (ASHA, the trainable that calls
:func:`trials.train.loop.run_trial`), the baseline and the confirmation tasks;
:mod:`~hpo.dispatch.searcher` asks the Optuna study for each trial and
:mod:`~hpo.dispatch.recorder` records each rung in it (:mod:`~hpo.dispatch.rungs` says what
the study keeps of each rung's :class:`trials.report.RungReport`, what it drops, and why);
:mod:`~hpo.dispatch.ray_output` sends Ray's own output to driver.log, through
:mod:`~hpo.dispatch.ray_private`, which holds every use of Ray's private names;
:mod:`~hpo.dispatch.referee` is the racing referee trials ask part-way through a rung;
:mod:`~hpo.dispatch.chaos` injects faults for tests;
:mod:`~hpo.dispatch.cluster` starts the nodes of a multi-node cluster and checks that an
``--address`` is one (a port that answers but is not Ray would hang ``ray.init``). Imports
``hpo.sweep``, ``hpo.study``, ``hpo.verdict`` and ``trials``.
"""
