"""What a sweep leaves for people: best.yaml, the LoRA, trials.csv, the report, the dashboard.

:mod:`~hpo.outputs.export` (best.yaml, ``best_lora/``, kohya file, trials.csv),
:mod:`~hpo.outputs.artifacts` (image grids and notes in the study, for optuna-dashboard),
:mod:`~hpo.outputs.pareto` (a Pareto sweep's files and figure), :mod:`~hpo.outputs.report`
(``report.html``), :mod:`~hpo.outputs.dashboard` (``python -m hpo.dashboard``) and
:mod:`~hpo.outputs.tracking` (MLflow, W&B). Imports every wing below it; never Ray.
"""
