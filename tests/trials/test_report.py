"""trials/report.py: a rung's report survives the Ray border, and every measure it carries
reaches the study or is dropped by a named decision (hpo.dispatch.rungs.NOT_RECORDED)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from trials import report as r
from trials.report import RungReport


def full_report(step: int = 10, **changes: Any) -> RungReport:
    """A rung with every measure present (none left at None)."""
    values: dict[str, Any] = dict(
        step=step, max_train_steps=10, clip_score=30.5, clip_score_stderr=0.4,
        per_prompt=[30.0, 31.0], prompt_indices=None, n_images=4, images_drawn=8,
        samples="/tmp/step/samples.png", clip_i=70.0, clip_i_holdout=65.0, dino_holdout=40.0,
        n_holdout_images=3, control_score=28.0, control_score_stderr=0.3,
        control_per_prompt=[27.5, 28.5], drift=90.0, drift_per_prompt=[89.0, 91.0], leak=0.5,
        leak_per_prompt=[0.4, 0.6], preservation="dop", preservation_weight=1.0,
        preservation_loss=0.02, train_loss=0.11, grad_norm=0.7, learning_rate_now=1e-4,
        accumulation="fused", train_seconds=12.0, eval_seconds=3.0, setup_seconds=2.0,
        samples_per_second=5.0, peak_memory_mb=900.0, device="cpu", precision="no",
        cache_hit=True, raced=None)
    values.update(changes)
    return RungReport(**values)


def test_a_report_round_trips_through_a_json_dict() -> None:
    rung = full_report(prompt_indices=[1, 0], raced={"delta": -2.0, "p_value": 0.01})
    data = json.loads(json.dumps(rung.to_dict()))  # what Tune keeps is JSON
    assert RungReport.from_dict({**data, "node_id": "n1", "training_iteration": 3}) == rung
    assert data[r.CLIP_SCORE] == 30.5 and data[r.PER_PROMPT] == [30.0, 31.0]


def test_absent_measures_are_left_out_and_read_back_as_none() -> None:
    rung = RungReport(step=3, max_train_steps=6, clip_score=20.0, clip_score_stderr=1.0)
    data = rung.to_dict()
    assert r.DRIFT not in data and r.CLIP_I not in data  # ASHA reads a key that is there
    back = RungReport.from_dict(data)
    assert back == rung and back.drift is None and back.scored_every_prompt


def test_the_report_is_frozen_and_keeps_tuples() -> None:
    rung = full_report()
    assert rung.per_prompt == (30.0, 31.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rung.clip_score = 1.0  # type: ignore[misc]


def test_the_constants_are_the_field_names_and_every_field_is_documented() -> None:
    names = RungReport.names()
    constants = {v for k, v in vars(r).items() if k.isupper() and isinstance(v, str)
                 and v in names}
    assert constants == set(names)  # one constant per field
    assert all(RungReport.doc(n) for n in names)
    assert set(RungReport.preservation_fields()) >= {r.CONTROL_SCORE, r.DRIFT, r.LEAK}
    assert RungReport.baseline_fields()[:2] == (r.CLIP_SCORE, r.CLIP_SCORE_STDERR)


def test_a_raced_rung_is_no_candidate_and_its_record_has_the_partial_scores() -> None:
    rung = full_report(prompt_indices=[2, 0], raced={"p_value": 0.001})
    assert rung.is_raced and not rung.scored_every_prompt
    record = rung.raced_record()
    assert record["p_value"] == 0.001 and record[r.PROMPT_INDICES] == [2, 0]
    assert record[r.CLIP_SCORE] == 30.5 and record[r.N_IMAGES] == 4


def _recorded_attrs(tmp_path) -> list[dict[str, Any]]:
    """Two trials through the recorder into an in-memory study: one with a prompt-subset rung
    and a full rung, one raced; their user attrs."""
    from hpo.dispatch.recorder import StudyRecorder
    from hpo.sweep.spec import load_sweep
    from tests.hpo.study.test_integrity import FakeSearcher
    from tests.sweep_files import write_sweep

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(direction="maximize", storage=storage)
    study.set_user_attr("baseline_per_prompt", [29.0, 30.0])
    study.set_user_attr("baseline_control_per_prompt", [28.0, 28.0])
    searcher = FakeSearcher(study, storage)
    recorder = StudyRecorder(searcher, load_sweep(write_sweep(tmp_path)), baseline=29.5)
    results = {"a": [full_report(5, prompt_indices=[1]), full_report(10)],
               "b": [full_report(5, prompt_indices=[0], raced={"p_value": 0.001})]}
    for trial_id, rungs in results.items():
        trial = SimpleNamespace(trial_id=trial_id, last_result=None, error_file=None,
                                run_metadata=SimpleNamespace(num_failures=0), config={})
        for rung in rungs:
            trial.last_result = {**rung.to_dict(), "node_id": "node-1"}
            recorder.on_trial_result(0, [], trial, trial.last_result)
        recorder.on_trial_complete(0, [], trial)
    return [t.user_attrs for t in study.get_trials()]


def test_every_field_reaches_the_study_or_is_dropped_by_name(tmp_path) -> None:
    from hpo.dispatch.rungs import NOT_RECORDED, recorded_attr

    assert set(NOT_RECORDED) <= set(RungReport.names())
    assert all(reason.strip() for reason in NOT_RECORDED.values())
    full, raced = _recorded_attrs(tmp_path)
    for name in RungReport.names():
        if name in NOT_RECORDED:
            continue
        attr = recorded_attr(name)
        assert attr is not None, f"{name}: neither recorded nor in NOT_RECORDED"
        assert attr in full or attr in raced, f"{name}: no user attr {attr!r} in the study"
    # The training diagnostics the trial computes (issue 29) reach the study per rung.
    assert full["grad_norm_per_rung"] == {"5": 0.7, "10": 0.7}
    assert full["learning_rate_per_rung"]["10"] == 1e-4
    assert full["accumulation"] == "fused" and full["cache_hit"] is True
    assert full["best_step"] == 10 and full["subset_rungs"] == {"5": 1}
    assert full["control_score_stderr"] == 0.3 and full["n_holdout_images"] == 3
    assert raced["raced"]["p_value"] == 0.001 and raced["raced"][r.PROMPT_INDICES] == [0]
