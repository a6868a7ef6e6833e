"""Steps as a fidelity: when it applies, which rungs are scored, what is exported."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.sweep import fidelity
from hpo.sweep.spec import load_sweep
from tests.sweep_files import write_sweep
from trials.config import rung_steps

REPO = Path(__file__).resolve().parents[3]


def _sweep(folder: Path, **changes):
    folder.mkdir(parents=True, exist_ok=True)
    return load_sweep(write_sweep(folder, **changes))


def test_constant_schedule_makes_steps_a_fidelity_on_asha_and_candidate_rungs() -> None:
    sweep = load_sweep(REPO / "sweeps" / "tiny.yaml")  # values [30, 45, 60]; ASHA 15 x 2^k
    plan = fidelity.plan_steps(sweep)
    assert plan.fidelity and plan.candidates == (30, 45, 60)
    assert plan.rungs == (15, 30, 45, 60)
    run = fidelity.apply(sweep, plan)
    assert "max_train_steps" not in {p.name for p in run.searched}
    assert run.parameter("max_train_steps").value == 60
    assert run.rungs(60) == [15, 30, 45, 60]
    config = run.trial_config({"rank": 4, "learning_rate": 1e-4, "target_modules": "attn"},
                              output_dir=Path("."), cache_dir=Path("."))
    assert config.params.max_train_steps == 60 and config.eval.rungs == (15, 30, 45, 60)


def test_hyundai_rungs_skip_what_neither_asha_nor_a_candidate_needs() -> None:
    plan = fidelity.plan_steps(load_sweep(REPO / "sweeps" / "hyundai.yaml"))
    # every_steps 100 scored 10 rungs; ASHA (200, 400, 800) and the candidates need 5.
    assert plan.fidelity and plan.rungs == (200, 400, 600, 800, 1000)


@pytest.mark.parametrize(("train", "reason"), [
    ({"train.lr_scheduler": "cosine"}, "the cosine schedule depends on max_train_steps"),
    ({"train.lr_scheduler": "constant_with_warmup", "train.lr_warmup_steps": 10},
     "the warmup (10 steps) is longer than the shortest candidate"),
])
def test_schedules_that_change_with_the_length_keep_steps_a_dimension(
        tmp_path, train, reason) -> None:
    sweep = _sweep(tmp_path, **train)
    plan = fidelity.plan_steps(sweep)
    assert not plan.fidelity and reason in plan.describe()
    assert fidelity.apply(sweep, plan) is sweep
    with pytest.raises(ValueError, match="--steps-as fidelity"):
        fidelity.plan_steps(sweep, "fidelity")


def test_warmup_shorter_than_every_candidate_is_a_prefix(tmp_path) -> None:
    sweep = _sweep(tmp_path, **{"train.lr_scheduler": "constant_with_warmup",
                                "train.lr_warmup_steps": 4})
    assert fidelity.plan_steps(sweep).fidelity
    assert not fidelity.plan_steps(sweep, "dimension").fidelity


def test_exported_steps_are_the_best_rung_only_for_prefix_schedules(tmp_path) -> None:
    constant = _sweep(tmp_path / "a")
    cosine = _sweep(tmp_path / "b", **{"train.lr_scheduler": "cosine"})
    assert fidelity.exported_steps(constant, trained_steps=12, best_step=8) == 8
    assert fidelity.exported_steps(cosine, trained_steps=12, best_step=8) == 12


def test_explicit_rungs_stop_at_the_trial_length() -> None:
    assert rung_steps(10, 30, (10, 20, 40)) == [10, 20, 30]
    assert rung_steps(10, 40, (10, 20, 30, 40)) == [10, 20, 30, 40]
    assert rung_steps(10, 30) == [10, 20, 30]


def test_dry_run_says_whether_steps_are_a_fidelity(tmp_path, capsys) -> None:
    from hpo.run import main

    assert main(["--sweep", str(REPO / "sweeps" / "tiny.yaml"), "--dry-run",
                 "--out", str(tmp_path)]) == 0
    assert "max_train_steps is a fidelity" in capsys.readouterr().out
    cosine = write_sweep(tmp_path, **{"train.lr_scheduler": "cosine"})
    assert main(["--sweep", str(cosine), "--dry-run", "--out", str(tmp_path)]) == 0
    assert "max_train_steps is a search dimension (the cosine schedule" in capsys.readouterr().out
    assert main(["--sweep", str(cosine), "--dry-run", "--steps-as", "fidelity",
                 "--out", str(tmp_path)]) == 2
    assert "--steps-as fidelity: the cosine schedule" in capsys.readouterr().err
