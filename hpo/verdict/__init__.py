"""Which trial won, and how sure we are.

:mod:`~hpo.verdict.paired` computes paired differences over prompts (Δ, stderr, p);
:mod:`~hpo.verdict.winner` reads the winner from the study alone (the ``select`` rule, the Pareto
front, confirmed scores); :mod:`~hpo.verdict.confirm` decides what to rescore on fresh seeds and
records it (the scoring itself is passed in by the caller); :mod:`~hpo.verdict.racing` decides,
part-way through a rung, whether a trial is significantly worse than the rung's best. Imports
``hpo.sweep`` and ``hpo.study``; never Ray.
"""
