"""A trial's tasks: the training loop, the baseline, and the rescoring of a saved LoRA.

Open :mod:`~trials.train.loop` first (:func:`~trials.train.loop.run_trial`, a loop to read top
to bottom). Beside it: the latent/text cache every trial shares (:mod:`~trials.train.cache`),
fused micro-batches (:mod:`~trials.train.accumulate`), the frozen parts kept between trials
(:mod:`~trials.train.warm`), fault injection (:mod:`~trials.train.faults`), the confirmation's
rescoring (:mod:`~trials.train.rescore`), a step and a rung image timed for the cost forecast
(:mod:`~trials.train.probe`) and ``python -m trials.train`` (:mod:`~trials.train.cli`).
Imports every other wing of ``trials``; nothing in ``trials`` but its commands imports it.
"""
