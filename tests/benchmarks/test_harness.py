"""The benchmark harness runs on tiny settings and writes every figure; timings are not checked.

The sweeps themselves (the demo, the early-stopping arms) take minutes, so here the functions
that turn a study into the overhead and early-stopping figures run on a small real Optuna
study (SQLite) built with the user attrs a sweep records.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from benchmarks import run as bench
from benchmarks.common import Results, Settings, SweepRun, study_records
from benchmarks.demo import DemoRun
from benchmarks.early_stop import EarlyStopResult, arm
from benchmarks.eval_cost import measure_eval_cost, sweep_share
from benchmarks.overhead import from_run, overhead
from benchmarks.render import ROWS, render
from benchmarks.search import measure_search, surrogate
from benchmarks.throughput import ThroughputResult, measure_sd15, measure_tiny

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def make_study(states: list[str], storage: str | None = None) -> optuna.Study:
    """A real study whose trials carry what StudyRecorder writes: timings, cpu_seconds, steps.

    Trial i starts at T0 + 10 + 5 i s and lasts 6 s, of which 2 s train, 2 s score, 1 s setup.
    """
    study = optuna.create_study(direction="maximize", storage=storage)
    for i, state in enumerate(states):
        start = T0 + dt.timedelta(seconds=10 + 5 * i)
        pruned = state == "PRUNED"
        study.add_trial(FrozenTrial(
            number=i, trial_id=i, state=TrialState[state],
            value=None if pruned else 20.0 + i, datetime_start=start,
            datetime_complete=start + dt.timedelta(seconds=6),
            params={"rank": 4 if i % 2 else 2},
            distributions={"rank": CategoricalDistribution([2, 4])},
            user_attrs={"train_seconds": 2.0, "eval_seconds": 2.0, "setup_seconds": 1.0,
                        "wall_seconds": 5.5, "cpu_seconds": 2.5 if pruned else 5.0,
                        "gpu_seconds": 0.0, "last_step": 10 if pruned else 20},
            system_attrs={}, intermediate_values={}))
    study.set_user_attr("baseline_eval_seconds", 1.0)
    return study


def sweep_run(study: optuna.Study, trials: int) -> SweepRun:
    records = study_records(study)
    start = T0.timestamp()
    end = max(r.end for r in records) + 3
    return SweepRun(wall_seconds=end - start, started_at=start, ended_at=end, slots=2,
                    records=records, study_attrs=dict(study.user_attrs), peak_tree_rss_mb=900,
                    peak_process_rss_mb=500, summary="sweep x: done\nbest: trial 3",
                    trials=trials)


def test_overhead_from_a_study(tmp_path: Path) -> None:
    study = make_study(["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"],
                       storage=f"sqlite:///{tmp_path / 'study.db'}")
    # Read back from the database, as the harness does after a sweep.
    reloaded = optuna.load_study(study_name=study.study_name,
                                 storage=f"sqlite:///{tmp_path / 'study.db'}")
    o = from_run(sweep_run(reloaded, 4))
    assert o.trials == 4 and o.slots == 2
    assert o.startup_seconds == pytest.approx(10.0)
    assert o.tail_seconds == pytest.approx(3.0)
    assert o.per_trial_median == pytest.approx(2.0)  # span 6 - train 2 - eval 2
    assert o.per_trial_setup_median == pytest.approx(1.0)
    assert o.per_trial_rest_median == pytest.approx(1.0)
    # Trials run from 10 s to 31 s on 2 slots: 42 slot-seconds, 16 of them useful.
    assert o.amortised_per_trial == pytest.approx((42 - 16) / 4)
    assert o.share == pytest.approx(1 - 17 / (2 * 34))
    with pytest.raises(ValueError):
        overhead([], started_at=0.0, ended_at=1.0, slots=1)


def test_early_stop_figures_from_two_studies() -> None:
    asha = arm("ASHA", sweep_run(make_study(["COMPLETE", "PRUNED", "PRUNED", "COMPLETE"]), 4))
    full = arm("none", sweep_run(make_study(["COMPLETE"] * 4), 4))
    assert (asha.complete, asha.pruned, asha.failed) == (2, 2, 0)
    assert asha.cpu_seconds == pytest.approx(15.0) and full.cpu_seconds == pytest.approx(20.0)
    assert asha.steps_trained == 60 and full.steps_trained == 80
    assert asha.best_value == pytest.approx(23.0) and full.best_params == {"rank": 4}
    result = EarlyStopResult(asha, full)
    assert result.cpu_saving == pytest.approx(0.25)
    assert result.score_difference == pytest.approx(0.0)


def test_surrogate_has_the_documented_shape() -> None:
    def f(rank=16, lr=7e-5, steps=600, modules="attn"):
        return surrogate({"rank": rank, "learning_rate": lr, "max_train_steps": steps,
                          "target_modules": modules})

    assert f(lr=2e-5, steps=200) < f()  # too low a learning rate under-fits
    assert f(lr=1e-4, steps=2000) < f()  # too many steps over-fit
    assert f(rank=32) - f(rank=16) < f(rank=8) - f(rank=4)  # rank saturates
    assert f(modules="attn", rank=4) > f(modules="cross_attn", rank=4)


def test_search_runs_the_sweep_samplers() -> None:
    result = measure_search(seeds=2, n_trials=5)
    assert [m.method for m in result.methods] == ["tpe", "random", "grid", "tpe"]
    for m in result.methods:
        assert len(m.regrets) == 2
        assert all(r >= -1e-6 for r in m.regrets)  # nothing beats the optimum
        assert set(m.regrets_by_trials) == {2, 5, 10}
    assert result.best_value > result.median_config


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Every piece on its smallest settings, with the sweeps replaced by built studies."""
    work = tmp_path_factory.mktemp("bench")
    settings = Settings(chunk_steps=2, chunks=2, search_seeds=2, search_trials=5,
                        eval_repeats=1, demo_repeats=1, demo_trials=4,
                        early_stop_trials=4, eval_prompts=1)
    res = Results(settings, quick=True)
    res.throughput = measure_tiny(work / "throughput", chunk_steps=2, chunks=2)
    if torch.cuda.is_available():  # the SD v1.5-shaped run is too big for a test
        res.throughput_sd15 = ThroughputResult("SD v1.5 shapes", "none", "512 px", 2, 4, 0,
                                               note="not measured: no GPU")
    else:
        res.throughput_sd15 = measure_sd15(work / "sd15", chunk_steps=2, chunks=2)
    res.search = measure_search(seeds=2, n_trials=5)
    demo_run = sweep_run(make_study(["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]), 4)
    res.eval_cost = measure_eval_cost(work / "eval", repeats=1, prompts=1,
                                      records=demo_run.records)
    res.demo = [DemoRun(demo_run.wall_seconds, 900, 500, 4, demo_run.summary, demo_run)]
    res.overhead = [from_run(demo_run)]
    res.early_stop = EarlyStopResult(
        arm("ASHA", sweep_run(make_study(["COMPLETE", "PRUNED", "PRUNED", "COMPLETE"]), 4)),
        arm("no early stopping", sweep_run(make_study(["COMPLETE"] * 4), 4)))
    res.elapsed = 1.0
    return res


def test_throughput_pieces(measured: Results) -> None:
    t = measured.throughput
    assert t.measured and t.device == "cpu"
    assert len(t.ours) == len(t.reference) == 2 and t.steps == 6
    assert t.ours_sps > 0 and t.reference_sps > 0 and math.isfinite(t.ratio)
    assert t.cache_build_seconds > 0 and t.run_trial_sps and t.run_trial_sps > 0
    gpu = measured.throughput_sd15
    assert not gpu.measured and gpu.note == "not measured: no GPU"


def test_eval_cost_pieces(measured: Results) -> None:
    c = measured.eval_cost
    assert c.prompts == 1 and c.rungs == 2  # tiny.yaml scores every 15 steps; 30 steps
    assert 0 < c.share < 1 and c.ips > 0
    assert c.generate_ips[0] > 0 and c.score_ips[0] > 0
    assert c.sweep_share == pytest.approx(2 / 5)
    assert sweep_share([]) is None


def test_markdown_has_every_figure(measured: Results) -> None:
    text = render(measured)
    assert "## Summary" not in text  # the file's Summary is rebuilt from results.json
    table = text.split("## Sections 1-6 at a glance (`python -m benchmarks.run`, ", 1)[1].split(
        "\n## ", 1)[0]
    for label in ROWS.values():
        rows = [line for line in table.splitlines() if line.startswith(f"| {label} |")]
        assert rows, f"no summary row for {label}"
        assert not any("not measured (skipped)" in r or "failed" in r for r in rows), rows
    assert "SD v1.5 shapes" in table
    for heading in ("## 1. Trainer throughput", "## 2. Orchestration overhead",
                    "## 3. Early stopping", "## 4. Search efficiency", "## 5. Demo sweep",
                    "## 6. Evaluation cost"):
        assert heading in text
    assert "capacity = 1 - exp(-r * k / 8)" in text  # the surrogate is documented in the file
    assert "Failures" not in text


def test_measure_and_main_run_one_section(tmp_path: Path, monkeypatch) -> None:
    import benchmarks.common

    small = Settings(search_seeds=2, search_trials=5)
    monkeypatch.setattr(bench, "QUICK", small)
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "results.json")
    (tmp_path / "results.json").write_text('{"trainer_vs_reference": 2.5, "fused_vs_sequential":'
                                           ' 1.5, "trainer": {"fused_sps": 5.0, '
                                           '"reference_sps": 2.0}}')
    out = tmp_path / "BENCHMARKS.md"
    speed = "<!-- speed:begin -->\n## Speed\n\nkept\n<!-- speed:end -->\n"
    out.write_text("# Benchmarks\n\n## Summary\n\n| stale 1.35x |\n\n## 1. x\n\n" + speed)
    assert bench.main(["--quick", "--only", "search", "--out", str(out)]) == 0
    text = out.read_text()
    # The other benchmarks' sections are kept, and the Summary is results.json's, on top.
    assert text.endswith(speed) and text.count("<!-- speed:begin -->") == 1
    assert text.index("## Summary") < text.index("## Sections 1-6 at a glance")
    assert "stale 1.35x" not in text and "**2.50x** (5.00 vs 2.00 samples/s" in text
    assert "| 4. Search efficiency | median simple regret" in text
    assert "| 1. Trainer throughput | tiny model on CPU: not measured (skipped)" in text
