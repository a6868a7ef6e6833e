"""Fault injection's crash mark: every attempt of a trial must look for it in one place."""

from __future__ import annotations

from pathlib import Path

from trials.train.faults import CRASHED, FaultPlan


def test_the_spec_s_mark_dir_wins_over_the_output_folder(tmp_path: Path) -> None:
    spec = {"fault": {"kind": "crash", "step": 3, "at": "rung", "mark_dir": str(tmp_path / "m")}}
    assert FaultPlan.from_extras(spec, mark_dir=tmp_path / "out").mark_dir == tmp_path / "m"
    plain = {"fault": {"kind": "crash", "step": 3}}
    assert FaultPlan.from_extras(plain, mark_dir=tmp_path / "out").mark_dir == tmp_path / "out"


def test_a_retry_that_finds_the_mark_goes_past_the_crash(tmp_path: Path) -> None:
    # The first attempt left its mark and died; the retry, with the same mark_dir, must not die
    # again (were the mark missing, this would SIGKILL the test process).
    (tmp_path / CRASHED).write_text("rung 5\n", encoding="utf-8")
    plan = FaultPlan.from_extras({"fault": {"kind": "crash", "step": 5, "at": "rung",
                                            "mark_dir": str(tmp_path)}})
    plan.after_rung(5)
    plan.maybe_fail(5)
