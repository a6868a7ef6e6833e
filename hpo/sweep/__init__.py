"""What a sweep asks for: the sweep file as typed objects, the search space, steps as a fidelity.

:mod:`~hpo.sweep.spec` validates the YAML once into a :class:`~hpo.sweep.spec.Sweep`;
:mod:`~hpo.sweep.objectives` reads objectives and the winner rule; :mod:`~hpo.sweep.space` turns
parameters into Optuna's define-by-run space and samplers; :mod:`~hpo.sweep.fidelity` decides
whether steps are a fidelity; :mod:`~hpo.sweep.holdout` records the held-out images;
:mod:`~hpo.sweep.cost` counts what the sweep will spend, in UNet sample-passes;
:mod:`~hpo.sweep.racing` reads racing and prompts as a fidelity;
:mod:`~hpo.sweep.optuna_private` holds every use of Optuna's private names (here, the lowest
wing that uses Optuna, so that every wing above can import it). Imports only ``trials.config``,
``trials.validation`` and ``trials.data`` (pure data, no Ray).
"""
