"""The cost forecast's front: where its throughput comes from, the dry run's lines, the summary."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch

from hpo import forecast
from hpo.sweep import cost
from hpo.sweep.fidelity import plan_steps
from hpo.sweep.racing import Racing
from hpo.sweep.spec import load_sweep
from tests.sweep_files import REPO


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    values = {"gpu_throughput": None, "address": None, "trials": 20, "out": tmp_path / "runs"}
    values.update(kw)
    return argparse.Namespace(**values)


def test_a_stated_rate_must_be_a_positive_number() -> None:
    assert forecast.check_rate(None) is None and forecast.check_rate(180.0) is None
    for bad in (0.0, -3.0, float("nan"), float("inf")):
        assert forecast.check_rate(bad).startswith(
            "--gpu-throughput: UNet sample-passes per second at the sweep's resolution, a "
            "number > 0 (got")


def test_bad_rate_stops_the_command_with_one_line(offline_sweep, capsys) -> None:
    assert offline_sweep.run("--dry-run", "--gpu-throughput", "-3") == 2
    assert capsys.readouterr().err.strip() == (
        "error: --gpu-throughput: UNet sample-passes per second at the sweep's resolution, a "
        "number > 0 (got -3)")


def test_where_the_rate_comes_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sweep = load_sweep(REPO / "sweeps" / "hyundai.yaml")
    f = cost.forecast(sweep, plan_steps(sweep), 20)
    stated, _ = forecast.throughput(sweep, f, _args(tmp_path, gpu_throughput=180.0), tmp_path)
    assert (stated.train, stated.evaluation, stated.device) == (180.0, 180.0, "gpu")
    assert "stated with --gpu-throughput" in stated.source
    # a cluster's trials run on its GPUs: the published A100 figure, at 512 px as published
    cluster, _ = forecast.throughput(sweep, f, _args(tmp_path, address="auto"), tmp_path)
    assert cluster.train == pytest.approx(11.6 * 4 * 2) and cluster.device == "gpu"
    assert "diffusers docs" in cluster.source
    # no GPU here and a hub model that cannot be timed here: still the GPU figure, saying why
    here, _ = forecast.throughput(sweep, f, _args(tmp_path), tmp_path)
    assert here.device == "gpu" and "no GPU here, and model" in here.source
    # at 32 px a pass is 256 times cheaper (by area)
    demo = load_sweep(REPO / "sweeps" / "tiny.yaml")
    small, _ = forecast.throughput(demo, cost.forecast(demo, plan_steps(demo), 20),
                                   _args(tmp_path, address="auto"), tmp_path)
    assert small.train == pytest.approx(92.8 * 256)


def test_gpu_figures_measured_here_are_used_for_a_gpu_of_that_name(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"gpu": {"device": "NVIDIA H200", "date": "2027-01-01",
                                           "model": "sd15",
                                           "train_passes_per_second": 300.0,
                                           "eval_passes_per_second": 500.0}}))
    assert forecast.measured_gpu("NVIDIA H200", results)["eval_passes_per_second"] == 500.0
    assert forecast.measured_gpu("NVIDIA A100-SXM4-80GB", results) is None
    assert forecast.measured_gpu("NVIDIA H200", tmp_path / "missing.json") is None
    tiny = tmp_path / "tiny.json"  # a --tiny check of the command is no measurement
    tiny.write_text(results.read_text().replace('"sd15"', '"tiny"'))
    assert forecast.measured_gpu("NVIDIA H200", tiny) is None


def test_dry_run_lines_for_the_hyundai_sweep_at_a_stated_rate(tmp_path: Path) -> None:
    sweep = load_sweep(REPO / "sweeps" / "hyundai.yaml")
    lines = forecast.dry_run_lines(sweep, None, _args(tmp_path, gpu_throughput=92.8))
    text = "\n".join(lines)
    assert lines[0].startswith("  cost           20 trials, in UNet sample-passes at 512 px: a "
                               "training sample = 6.5 (forward + backward 3, + preservation's "
                               "remedy: prior 3, dop 4; a searched one averaged), an image = 20 "
                               "sampler steps x 2 (guidance 7.5) = 40; 52 images a rung")
    # training: 8,600 steps x batch 4 x (3 + the mean of prior's 3 and dop's 4) passes
    # rungs: 1,716 images x 40 passes (rung 200 screens: 26 brand images, no control ones);
    # the baseline at the rungs' fidelity, 52 x 40; the confirmation at full size, 4 x 52 x 4
    # x 60
    assert "with ASHA     training 224 k, evaluation 121 k (rungs 68.6 k, baseline 2.08 k, " \
           "confirmation 49.9 k)" in text
    assert "8,600 steps, 43 rungs (ideal successive halving: an estimate)" in text
    assert "racing" not in text  # hyundai.yaml as shipped does not race
    # (223,600 + 120,640 passes) / 92.8 per second = 1.03 GPU-hours, 35 % evaluation
    assert "  time           about 1.03 GPU-hours (2.21 GPU-hours without early stopping), " \
           "35 % of it drawing images" in text
    # with racing and rung 200 (screening) on 13 brand prompts
    raced = replace(sweep, racing=Racing(chunk=5, min_prompts=10),
                    early_terminate=replace(sweep.early_terminate, rung_prompts=13))
    text = "\n".join(forecast.dry_run_lines(raced, None, _args(tmp_path, gpu_throughput=92.8)))
    assert "with ASHA     training 224 k, evaluation 110 k" in text
    assert "8,600 steps, 43 rungs (ideal successive halving: an estimate)" in text
    # a trial stopped at a milestone drew 10 brand images there (2 chunks of 5)
    assert "racing        training 224 k, evaluation 97.3 k" in text and "its bound" in text
    # the time is the ASHA line's, racing's upper end: (223,600 + 110,240) / 92.8 per second
    assert "  time           about 0.999 GPU-hours" in text


def test_the_cpu_dry_run_times_this_machine_and_writes_nothing(offline_sweep, capsys) -> None:
    sweep = offline_sweep.write(**{"model.name": "toyworld", "eval.clip_model": "toyworld"})
    assert offline_sweep.run("--dry-run", sweep=sweep) == 0
    out = capsys.readouterr().out
    assert "  time           about " in out and " s of trial time on this CPU" in out
    assert "    rate          measured here just now (" in out
    # only the tiny model the fixture links in: no probe folder, no study, no CLIP built
    assert [p.relative_to(offline_sweep.out).as_posix()
            for p in offline_sweep.out.rglob("*")] == ["cache", "cache/tiny-sd"]


def test_summary_sets_the_measured_split_beside_the_recorded_forecast(tmp_path: Path) -> None:
    sweep = load_sweep(REPO / "sweeps" / "hyundai.yaml")
    study = optuna.create_study(direction="maximize")
    forecast.at_start(study, sweep, plan_steps(sweep), _args(tmp_path, gpu_throughput=92.8,
                                                            trials=2))
    record = study.user_attrs[forecast.RECORD_KEY]
    assert record["trials"] == 2 and record["device"] == "gpu"
    for steps, rungs in ((200, [200]), (1000, [200, 400, 600, 800, 1000])):
        study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={
            "train_seconds": steps * 0.5, "eval_seconds": len(rungs) * 100.0,
            "setup_seconds": 10.0, "last_step": steps, "device": "cuda",
            "score_per_rung": {str(r): 1.0 for r in rungs}}))
    study.set_user_attr("baseline_eval_seconds", 90.0)
    lines = forecast.summary_lines(study, study.trials)
    assert lines[0] == ("cost: 2 trial(s) trained 1,200 steps and were scored at 6 rungs "
                        "(forecast for 2: 1,200 steps, 6 rungs, ideal successive halving)")
    # 600 s training + 600 s rungs + 90 s baseline on one GPU each = 0.358 GPU-hours
    assert lines[1].startswith("  measured: 0.358 GPU-hours: training 0.17 h, evaluation "
                               "0.19 h (rungs 0.17 h, baseline 0.03 h, confirmation 0.00 h): "
                               "53 % drawing images; setup 0.01 h")
    assert lines[2].startswith("  forecast: ") and "GPU-hours" in lines[2]
