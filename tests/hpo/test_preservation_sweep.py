"""Preservation end to end: a sweep that measures control prompts, searches the remedy and
requires the winner to keep the base model (real local Ray, SQLite study, the toy world)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.run import main as run_main
from hpo.verdict.preservation import trial_feasible
from hpo.verdict.winner import best_trial
from tests.sweep_files import write_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def preserving_sweep(ray_cluster, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("preserve")
    sweep = write_sweep(folder, **{
        "name": "preserve",
        "preservation": {"trigger": "Hyundai", "class_images": 4, "class_inference_steps": 2,
                         "require": {"control": "not_worse", "leak": "not_above"}},
        "parameters.preservation": {"values": ["none", "dop", "prior"]},
        "parameters.preservation_weight": {"distribution": "log_uniform_values", "min": 0.5,
                                           "max": 5.0},
        "early_terminate.grace_steps": 8,
    })
    code = run_main(["--sweep", str(sweep), "--trials", "4", "--out", str(folder / "runs"),
                     "--address", ray_cluster])
    assert code == 0
    return folder / "runs" / "preserve"


def test_every_scored_trial_carries_its_control_figures_and_constraints(preserving_sweep
                                                                        ) -> None:
    study = optuna.load_study(study_name="preserve",
                              storage=f"sqlite:///{preserving_sweep / 'optuna.db'}")
    assert len(study.user_attrs["baseline_control_per_prompt"]) == 10
    assert study.user_attrs["preservation"]["require"]["leak"] == "not_above"
    scored = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert scored
    for t in scored:
        a = t.user_attrs
        assert {"control_delta", "control_delta_stderr", "drift", "leak"} <= set(a)
        # Optuna's own record of the constraints, the one the samplers and dashboard read
        assert set(t.constraints) == {"control_not_worse", "leak_not_above"}
        assert t.constraints == pytest.approx(a["constraints"])
        # the objective value is the exported rung's score, whatever the constraints are
        assert t.value == pytest.approx(a["score_per_rung"][str(a["best_step"])])
    winner = best_trial(study)
    if winner is not None:  # the winner, if any, keeps the base model
        assert trial_feasible(winner) is True
    best = preserving_sweep / "best.yaml"
    if best.is_file():
        doc = yaml.safe_load(best.read_text())
        assert doc["preservation"]["trigger"] == "Hyundai"
        assert doc["result"]["preservation"]["control_delta"] is not None
        assert (preserving_sweep / "best_lora" / "control.png").is_file()
    page = (preserving_sweep / "report.html").read_text()
    assert "Brand vs control" in page and "control Δ" in page


def test_a_winner_that_breaks_the_base_model_on_fresh_seeds_exits_4(
        preserving_sweep, ray_cluster, tmp_path, capsys) -> None:
    """The confirmation's control prompts say every confirmed candidate now breaks the base
    model (their records lowered to far below the base model's, in a copy of the study): the
    rerun (nothing left to run or score) reports NOT confirmed and exits 4, not 0."""
    import shutil

    from hpo.run import NOT_PRESERVED
    from hpo.verdict import winner

    out = tmp_path / "runs"
    shutil.copytree(preserving_sweep, out / "preserve")
    study = optuna.load_study(study_name="preserve",
                              storage=f"sqlite:///{out / 'preserve' / 'optuna.db'}")
    if winner.confirmation_summary(study) is None:
        pytest.skip("no feasible COMPLETE trial to confirm in this run of the sweep")
    base = study.user_attrs[winner.BASELINE_KEY]["control_per_prompt"]
    for number in winner.confirmations(study):
        key = winner.trial_key(number)
        study.set_user_attr(key, {**study.user_attrs[key],
                                  "control_per_prompt": [v - 30.0 + i % 3 for i, v in
                                                         enumerate(base)]})
    sweep = preserving_sweep.parents[1] / "sweep.yaml"
    code = run_main(["--sweep", str(sweep), "--trials", "4", "--out", str(out), "--address",
                     ray_cluster])
    captured = capsys.readouterr()
    assert code == NOT_PRESERVED == 4, captured.err[-2000:]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fails the preservation requirement on fresh seeds" in errors[0]
    assert "NOT confirmed: trial" in captured.out
    assert "\nconfirmed on fresh seeds" not in captured.out
