"""The winner's-curse benchmark's table (the sweep itself is exercised by tests/hpo)."""

from __future__ import annotations

from benchmarks.winners_curse import CurseRun, table


def test_table_lists_each_run_and_the_mean_curse() -> None:
    runs = [CurseRun(s, 3, 25.0 + s, 24.5, 0.3, 0.5 + s, 0.1, 0.05, 1.0, 0.2, True, 60.0)
            for s in range(2)]
    text = table(runs)
    assert text.count("\n| ") == 2  # two rows (the separator starts with "|-")
    assert "| 0 | 3 | 25.0000 | 24.5000 ± 0.3000 | +0.5000 |" in text
    assert "Mean winner's curse over 2 run(s): +1.0000 (sd 0.7071)" in text
