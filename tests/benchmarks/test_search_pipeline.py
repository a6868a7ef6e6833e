"""The pipeline search benchmark's table logic (training the table is the benchmark itself)."""

from __future__ import annotations

import itertools
import math

import pytest

from benchmarks import search_pipeline as sp


@pytest.fixture(autouse=True)
def _work(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "WORK", tmp_path)  # the sweep files it writes


def test_lr_grid_spans_the_range_in_log_space() -> None:
    grid = sp.lr_grid(1e-4, 5e-2, 8)
    assert len(grid) == 8 and grid[0] == 1e-4 and grid[-1] == 5e-2
    ratios = [b / a for a, b in itertools.pairwise(grid)]
    assert max(ratios) / min(ratios) == pytest.approx(1.0, abs=1e-3)


def test_lookup_snaps_the_learning_rate_to_the_nearest_grid_value_in_log_space() -> None:
    grid = [1e-4, 1e-3, 1e-2]
    rows = {sp.key({"rank": 4, "target_modules": "attn", "learning_rate": lr}):
            {"params": {"rank": 4, "target_modules": "attn", "learning_rate": lr}, "value": i}
            for i, lr in enumerate(grid)}
    at = {"rank": 4, "target_modules": "attn"}
    assert sp.lookup(rows, grid, {**at, "learning_rate": 3e-4})["value"] == 0  # below sqrt(10)
    assert sp.lookup(rows, grid, {**at, "learning_rate": 3.3e-4})["value"] == 1
    assert sp.lookup(rows, grid, {**at, "learning_rate": 0.05})["value"] == 2


def _table() -> dict[str, dict]:
    """A made-up table over the real space: best at rank 8, attn_ff, the 5th learning rate."""
    rows = {}
    for params in sp.grid_configs():
        lr_index = sp.lr_grid(1e-4, 5e-2).index(params["learning_rate"])
        value = (50 + params["rank"] + 3 * (params["target_modules"] == "attn_ff")
                 - 2 * abs(lr_index - 4))
        rows[sp.key(params)] = {"params": params, "value": float(value)}
    return rows


def test_grid_walks_distinct_configurations_and_every_method_improves() -> None:
    rows = _table()
    grid_lrs = sp.lr_grid(1e-4, 5e-2)
    assert len(rows) == 3 * 3 * sp.LR_POINTS
    picked = sp.run_study("grid", 0, 30, rows, grid_lrs)
    assert len(picked) == 30
    values = [rows[k]["value"] for k in picked]
    assert values == sorted(values)  # the pick after each trial is the best so far
    best = max(r["value"] for r in rows.values())
    for method in ("tpe", "random"):
        trace = [rows[k]["value"] for k in sp.run_study(method, 1, 30, rows, grid_lrs)]
        assert trace[-1] > trace[0] or trace[0] == best
        assert not math.isnan(trace[-1])


def test_a_table_from_another_sweep_is_started_again_not_resumed(
        capsys: pytest.CaptureFixture[str]) -> None:
    now = {"format": "2", "eval.images_per_prompt": "1", "data.contents": "sha256:ab"}
    rows = {"2|attn|0.001": {"value": 50.0}}
    same = sp.resumable({"rows": rows, "fingerprint": dict(now)}, now)
    assert same["rows"] == rows
    other = sp.resumable(
        {"rows": rows, "fingerprint": {**now, "eval.images_per_prompt": "2"}}, now)
    assert other == {"rows": {}, "fingerprint": now}
    assert "changed: eval.images_per_prompt" in capsys.readouterr().out
    unstamped = sp.resumable({"rows": rows}, now)  # measured before stamping
    assert unstamped["rows"] == {} and "no fingerprint recorded" in capsys.readouterr().out
    assert sp.resumable({"rows": {}}, now) == {"rows": {}, "fingerprint": now}


def test_the_table_fingerprint_holds_the_rung_settings_not_the_search_space() -> None:
    fp = sp.sweep_fingerprint()
    assert {"eval.images_per_prompt", "eval.inference_steps", "data.contents",
            "model.contents"} <= set(fp)
    assert not [k for k in fp if k.startswith("parameters.")]
    assert sp.sweep_fingerprint() == fp  # the same sweep, the same fingerprint
