"""``python -m trials.train SWEEP_OR_TRIAL.yaml``: one LoRA without Ray
(:mod:`trials.train.cli`)."""

from trials.train.cli import main

raise SystemExit(main())
