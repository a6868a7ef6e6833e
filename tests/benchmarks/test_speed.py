"""Pieces of ``python -m benchmarks.speed`` that run in seconds: the work count of two sweep
arms, the UNet-only rung timing, the rendering of the floors, and re-rendering alone."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import early_stop, speed
from benchmarks.common import TrialRecord, short_commit
from benchmarks.eval_cost import eval_config, unet_seconds_per_rung


def _record(number: int, rungs: list[int], seconds_per_step: float = 0.1,
            seconds_per_rung: float = 4.0) -> TrialRecord:
    attrs = {"last_step": rungs[-1], "score_per_rung": {str(r): 70.0 for r in rungs},
             "train_seconds": seconds_per_step * rungs[-1],
             "eval_seconds": seconds_per_rung * len(rungs), "setup_seconds": 0.2}
    state = "COMPLETE" if rungs[-1] == 60 else "PRUNED"
    return TrialRecord(number, state, 70.0, {}, 0.0, 1.0, attrs)


def test_asha_work_counts_both_arms_at_the_same_rates() -> None:
    asha = SimpleNamespace(records=[_record(0, [15]), _record(1, [15, 30]),
                                    _record(2, [15, 30, 45, 60])])
    none = SimpleNamespace(records=[_record(i, [30, 45, 60]) for i in range(3)])
    w = early_stop.asha_work(asha, none, trials=3)
    # sweeps/tiny.yaml without preservation: 48 prompts x 1 image at a rung (a screening rung
    # draws as many: it only leaves out control images)
    assert w["images_per_rung"] == 48
    assert w["asha"] == {"steps": 105.0, "images": 7 * 48.0, "setups": 3.0}
    assert w["none"] == {"steps": 180.0, "images": 9 * 48.0, "setups": 3.0}
    c = w["unit_costs"]
    assert c["per_step"] == pytest.approx(0.1) and c["per_image"] == pytest.approx(4.0 / 48)
    expected = (105 * 0.1 + 7 * 4.0 + 0.6) / (180 * 0.1 + 9 * 4.0 + 0.6)
    assert w["fraction"] == pytest.approx(expected)
    assert w["rungs_asha"] == [15, 30, 45, 60] and w["rungs_none"] == [30, 45, 60]
    assert w["milestones"] == [15, 30]
    # ideal halving of 3 trials: 1 stops at 15, 1 at 30, 1 trains to 60
    assert w["ideal_asha"] == {"steps": 105.0, "images": 7 * 48.0, "setups": 3.0}
    assert w["ideal_fraction_if_rungs_were_free"] == pytest.approx(105 / 180)


def test_unet_seconds_per_rung_leaves_the_kept_unet_clean(tmp_path: Path) -> None:
    from peft.tuners.lora import LoraLayer

    from trials.train import warm
    from trials.train.loop import pick_device, weight_dtype_for

    config, _ = eval_config(tmp_path, prompts=1)
    seconds = unet_seconds_per_rung(config, repeats=1)
    assert seconds > 0
    device = pick_device()
    dtype = weight_dtype_for(config.train.mixed_precision, device)
    with warm.kept_components(config, device, dtype) as parts:
        assert not any(isinstance(m, LoraLayer) for m in parts.unet.modules())
    warm.forget()


def _results() -> dict:
    run = {"date": "2026-11-30 22:58 UTC", "git_commit": "07ba0cf6a4+dirty",
           "load_average_at_start": [0.4, 0.6, 1.0], "load_average_at_end": [2.0, 1.8, 1.5]}
    return {
        "date": run["date"], "git_commit": run["git_commit"], "machine": "test machine",
        "load_average_at_start": [0.4, 0.6, 1.0], "load_average_at_end": [2.0, 1.8, 1.5],
        "eval": {"rungs": [15, 30, 45, 60], "measured_on": "toy", "run": run,
                 "default": {"share": 0.77}, "default_again": {"share": 0.79},
                 "merge_lora": {"share": 0.79}, "images_per_rung": 96,
                 "unet_seconds_per_rung": 3.17,
                 "floor": {"unet_only": 0.70, "unet_fraction_of_rung": 0.68,
                           "images_for_target": 9.1, "target": 0.25}},
        "notes": ["a note"],
    }


def test_render_states_the_floors_and_where_each_figure_was_measured() -> None:
    text = speed.render(_results())
    assert "if a rung cost only its UNet forward passes (3.17 s, 68 % of a measured rung): " \
           "**70 %**; the share meets 25 % at 9 rung images or fewer" in text
    assert "evaluation share 2026-11-30 22:58 UTC at git 07ba0cf+dirty" in text
    assert "- a note" in text


def test_sections_none_rerenders_without_touching_the_figures(tmp_path: Path,
                                                               monkeypatch) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results()))
    written: list[str] = []
    monkeypatch.setattr(speed, "RESULTS", results)
    monkeypatch.setattr(speed, "write_section", lambda begin, end, text: written.append(text))
    assert speed.main(["--sections", "none"]) == 0
    assert json.loads(results.read_text()) == _results()  # date and commit kept
    assert written and "Last run on 2026-11-30 22:58 UTC at git 07ba0cf+dirty" in written[0]


def test_short_commit_keeps_the_dirty_mark() -> None:
    assert short_commit("07ba0cf6a46897a3") == "07ba0cf"
    assert short_commit("07ba0cf6a46897a3+dirty", 10) == "07ba0cf6a4+dirty"
    assert short_commit("") == ""


def test_render_says_where_the_gpu_figures_are() -> None:
    assert "not measured yet (no GPU lent); `python -m benchmarks.gpu` measures them on one." \
        in speed.render(_results())
    measured = {**_results(), "gpu": {"model": "sd15", "device": "NVIDIA H200",
                                      "date": "2027-01-02 10:00 UTC"}}
    assert "measured on a NVIDIA H200 (2027-01-02 10:00 UTC): `gpu` in " \
           "`benchmarks/results.json`." in speed.render(measured)
    tiny = {**_results(), "gpu": {"model": "tiny", "device": "cpu"}}
    assert "not measured yet" in speed.render(tiny)  # a --tiny check is no measurement


def test_trainer_sweep_file_is_what_the_reference_script_trains(tmp_path: Path) -> None:
    """The file ``python -m trials.train`` gets beside the reference script: every parameter
    fixed at the reference's settings and no preservation (the reference has none), valid for
    the sweep file's one definition as it is today (a merge over tiny.yaml once kept both
    ``value`` and ``values``)."""
    from trials.config import load_trial_config

    file = speed._ours_file(tmp_path, tmp_path / "data", 10, "on")
    config = load_trial_config(file, output_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert (config.params.rank, config.params.learning_rate, config.params.max_train_steps,
            config.params.target_modules) == (4, 1e-4, 10, "attn")
    assert config.preservation_method == "none"
    assert config.train.gradient_accumulation_steps == 4
    assert config.train.fused_accumulation == "on"
