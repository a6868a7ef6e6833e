"""hpo.outputs.export's trials.csv on the edge cases a stopped sweep leaves."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from hpo.outputs.export import write_trials_csv


def test_trials_csv_of_a_study_stopped_before_its_first_trial(tmp_path: Path) -> None:
    """Ctrl-C while the baseline is scored leaves a study with no trial: no KeyError."""
    study = optuna.create_study(direction="maximize")
    path = write_trials_csv(study, tmp_path)
    assert path == tmp_path / "trials.csv" and path.is_file()


def test_trials_csv_marks_the_counted_trials(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    frame = pd.read_csv(write_trials_csv(study, tmp_path))
    assert list(frame["number"]) == [0, 1] and "counted" in frame
