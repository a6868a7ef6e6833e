"""``python -m benchmarks.gpu`` on this CPU: it refuses without CUDA unless asked for the tiny
shapes, and its tiny path runs every section, so it is ready the day a GPU is lent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import gpu
from benchmarks.common import RESULTS


def test_without_cuda_it_refuses_with_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = RESULTS.read_text()
    assert gpu.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: benchmarks.gpu measures SD v1.5 shapes on a CUDA GPU, and "
                          "this machine has none") and "pass --tiny" in err
    assert "\n" not in err and RESULTS.read_text() == before


def test_forecast_rates_price_training_and_drawing_plus_scoring() -> None:
    section = {"train": {"fused_samples_per_second": 20.0},
               "eval": {"eager_images_per_second": 2.0},
               "clip": {"fp32_images_per_second": 8.0}}
    rates = gpu.forecast_rates(section, passes_per_image=60)
    assert rates["train_passes_per_second"] == pytest.approx(60.0)  # 3 passes a sample
    # an image: 0.5 s drawing + 0.125 s scoring = 0.625 s for 60 passes
    assert rates["eval_passes_per_second"] == pytest.approx(96.0)
    assert gpu.forecast_rates({"train": section["train"]}, 60) == {}


def test_a_budget_that_fits_nothing_skips_every_section(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"other": 1}))
    assert gpu.main(["--cpu", "--budget", "0", "--results", str(results)]) == 0
    written = json.loads(results.read_text())
    assert written["other"] == 1  # the rest of the file is kept
    section = written["gpu"]
    assert set(section["skipped"]) == {"train", "eval", "clip", "two_per_gpu", "compile"}
    assert (section["device"], section["model"]) == ("cpu", "tiny")


@pytest.mark.slow
def test_the_tiny_path_measures_every_section(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    before = RESULTS.read_text()
    assert gpu.main(["--cpu", "--seconds", "0.05", "--results", str(results)]) == 0
    section = json.loads(results.read_text())["gpu"]
    assert section["errors"] == {} and section["skipped"] == {}
    train = section["train"]
    assert train["fused_samples_per_second"] > 0 and train["sequential_samples_per_second"] > 0
    assert train["train_sample_in_forward_passes"] > 0
    for mode in ("eager", "channels_last"):
        assert section["eval"][f"{mode}_images_per_second"] > 0
    assert section["compile"]["compile_images_per_second"] > 0
    assert section["eval"]["cuda_settings_applied"] is False  # CUDA-only settings, said so
    assert section["clip"]["fp32_images_per_second"] > 0
    sharing = section["two_per_gpu"]
    assert len(sharing["two_processes_samples_per_second"]) == 2
    assert sharing["two_vs_one"] == pytest.approx(
        sharing["two_processes_total"] / sharing["one_process_samples_per_second"])
    assert section["train_passes_per_second"] > 0 and section["eval_passes_per_second"] > 0
    assert RESULTS.read_text() == before  # tiny shapes never land in benchmarks/results.json
