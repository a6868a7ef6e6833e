"""hpo/dispatch/recorder.py: what the recorder tells the racing referee (no Ray run; the
referee and the searcher are stand-ins that keep what they are given)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hpo.dispatch.recorder import StudyRecorder
from hpo.sweep.spec import load_sweep
from tests.sweep_files import write_sweep
from trials.report import RungReport


class _Referee:
    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.record = SimpleNamespace(remote=lambda *args: self.records.append(args))


def test_a_raced_rung_reaches_the_referee_as_a_partial_record(tmp_path) -> None:
    # The trainable reports a raced rung as its RungReport's dict: the prompts it drew at the
    # top level, the decision in `raced`; the referee must get them, or ASHA's cutoff as racing
    # sees it never falls (benchmark seed 1 at 7586b2a: every trial raced against the first one
    # to reach step 30).
    sweep = load_sweep(write_sweep(tmp_path, racing={"chunk": 2, "min_prompts": 4,
                                                     "against": "cutoff"}))
    searcher = SimpleNamespace(optuna_trial=lambda trial_id: SimpleNamespace(number=7))
    referee = _Referee()
    recorder = StudyRecorder(searcher, sweep, baseline=None, referee=referee)
    rung = RungReport(step=30, max_train_steps=60, clip_score=51.0, clip_score_stderr=0.5,
                      per_prompt=[50.0, 52.0, 51.0, 51.0], prompt_indices=[3, 0, 5, 1],
                      n_images=4, images_drawn=4,
                      raced={"step": 30, "delta": -3.0, "p_value": 0.001})
    result = {**rung.to_dict(), "node_id": "n1", "training_iteration": 2}  # as Tune has it
    recorder.on_trial_result(0, [], SimpleNamespace(trial_id="t7"), result)
    assert referee.records == [(30, 7, [50.0, 52.0, 51.0, 51.0], [3, 0, 5, 1], False, True)]
    record = recorder.raced["t7"].report.raced_record()
    assert record["p_value"] == 0.001 and record["prompt_indices"] == [3, 0, 5, 1]
    assert "t7" not in recorder.rungs  # never a full rung


def test_a_resumed_retry_keeps_the_rungs_of_the_attempt_that_died_each_once(tmp_path) -> None:
    # Issue 31: the retry goes on from its last rung checkpoint; it says so first, then reports
    # only the later rungs.
    import optuna
    from optuna.trial import TrialState

    from hpo.study import storage as studies
    from tests.hpo.study.test_integrity import FakeSearcher, ray_trial, rung

    storage = studies.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    told: list[tuple[int, int]] = []
    console = SimpleNamespace(
        trial_resumed=lambda t, step: told.append((t.number, step)),
        rung_saved=lambda *a: None, trial_finished=lambda *a: None)
    recorder = StudyRecorder(FakeSearcher(study, storage),
                             load_sweep(write_sweep(tmp_path, early_terminate=None)),
                             baseline=None, observers=[console])
    first = ray_trial()
    for step, score in ((4, 1.0), (8, 3.0)):
        recorder.on_trial_result(0, [], first, rung(step, score, steps=12))
        recorder.on_checkpoint(0, [], first, SimpleNamespace(path=str(tmp_path / f"c{step}")))
    recorder.on_trial_recover(0, [], ray_trial(failures=1))
    retry = ray_trial(failures=1)
    recorder.on_trial_result(0, [], retry, {"resumed_from_step": 8, "node_id": "n2",
                                            "training_iteration": 3})
    assert study.trials[0].user_attrs["node_id"] == "n2"  # where the retry runs, said at once
    last = rung(12, 2.0, steps=12)
    recorder.on_trial_result(0, [], retry, last)
    recorder.on_checkpoint(0, [], retry, SimpleNamespace(path=str(tmp_path / "c12")))
    recorder.on_trial_complete(0, [], ray_trial(last, failures=1))
    trial = study.trials[0]
    assert told == [(0, 8)]
    assert trial.state == TrialState.COMPLETE and trial.value == 3.0
    assert trial.intermediate_values == {4: 1.0, 8: 3.0, 12: 2.0}
    assert trial.user_attrs["score_per_rung"] == {"4": 1.0, "8": 3.0, "12": 2.0}
    assert trial.user_attrs["resumed_from_step"] == 8 and trial.user_attrs["attempt"] == 2
    assert trial.user_attrs["lora_path"] == str(tmp_path / "c8")  # the best rung's folder
    assert trial.user_attrs["last_step"] == 12
