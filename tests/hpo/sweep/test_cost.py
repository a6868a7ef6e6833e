"""The sweep's cost forecast: work and UNet passes counted from the sweep file alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from hpo.sweep import cost
from hpo.sweep.fidelity import plan_steps
from hpo.sweep.racing import Racing
from hpo.sweep.spec import load_sweep
from tests.sweep_files import DELETE, REPO, apply, tiny_doc


def _sweep(tmp_path: Path, **changes):
    doc = apply(tiny_doc(), {"eval.prompts": str(REPO / "sweeps/prompts/tiny_heldout.txt"),
                             **changes})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return load_sweep(path)


def test_image_counts_and_passes_come_from_the_eval_settings(tmp_path: Path) -> None:
    demo = load_sweep(REPO / "sweeps" / "tiny.yaml")
    # 48 held-out prompts and their 48 control prompts (preservation), 1 image each at a rung
    assert cost.rung_images(demo) == (48 + 48) * 1
    assert cost.screening_images(demo) == 48  # ASHA's own rung: brand prompts alone
    assert cost.passes_per_image(demo) == 4 * 2  # guidance 5: the UNet runs twice a step
    assert cost.confirmation_images(demo) == (3 + 1) * 96 * 4  # top 3 and the base, 4 each
    steps = _sweep(tmp_path, **{"confirm.inference_steps": 10})
    assert cost.confirmation_passes_per_image(steps) == 10 * 2  # the full size's own steps
    assert cost.confirmation_passes_per_image(demo) == cost.passes_per_image(demo)
    plain = _sweep(tmp_path, **{"eval.guidance_scale": 1.0, "eval.width": 64,
                                "eval.height": 32, "confirm.top_k": 0})
    assert cost.passes_per_image(plain) == 4 * 2  # no guidance, but twice the pixels of 32x32
    assert cost.confirmation_images(plain) == 0


def test_the_demo_forecast_is_ideal_halving_against_every_trial_to_60_steps() -> None:
    demo = load_sweep(REPO / "sweeps" / "tiny.yaml")
    f = cost.forecast(demo, plan_steps(demo), trials=20)
    # 10 trials stop at 15 (1 rung), 5 at 30 (2 rungs), 5 train to 60 (rungs 15/30/45/60);
    # rung 15 screens for ASHA: 48 brand images, no control ones; the others draw 96
    assert f.asha == cost.Work(10 * 15 + 5 * 30 + 5 * 60,
                               10 * 48 + 5 * (48 + 96) + 5 * (48 + 3 * 96), 20)
    assert f.rungs == (60, 40) and f.screening_images == 48
    # without ASHA, steps stay a fidelity: every trial to 60, scored at 30, 45 and 60 only
    assert f.full == cost.Work(20 * 60, 20 * 3 * 96, 20)
    assert f.planned == f.asha and f.racing is None
    passes = f.passes(f.planned)
    # batch 2 x accumulation 1; 3 passes a sample, + the mean of prior's 3 and dop's 4
    assert passes.training == 600 * 2 * 6.5
    assert passes.rungs == f.asha.images * 8
    assert passes.baseline == 96 * 8 and passes.confirmation == 4 * 384 * 8
    assert passes.eval_share == pytest.approx(passes.evaluation / (passes.evaluation + 7800))


def test_hyundai_forecast_counts_its_milestone_rungs() -> None:
    sweep = load_sweep(REPO / "sweeps" / "hyundai.yaml")
    f = cost.forecast(sweep, plan_steps(sweep), trials=20)
    # milestones 200, 400, 800: 10 stop at 200, 5 at 400, 2 at 800 (ceil(20/8) = 3 go on)
    assert f.asha.steps == 10 * 200 + 5 * 400 + 2 * 800 + 3 * 1000
    assert f.rungs[1] == 10 * 1 + 5 * 2 + 2 * 4 + 3 * 5
    # rung 200 is ASHA's alone (screening): 26 brand images; every other rung 26 + 26 control;
    # 20 trials at 200, 10 at 400, 5 at 600 and 800, 3 at 1000
    assert f.asha.images == 20 * 26 + 10 * 52 + 5 * 2 * 52 + 3 * 52
    p = f.passes(f.asha)
    assert f.passes_per_image == 20 * 2 and f.images_per_rung == (26 + 26) * 1  # with control
    assert f.confirmation_passes_per_image == 30 * 2  # the confirmation at full size
    assert p.training == 8600 * 4 * 6.5  # searched prior / dop: 3 + (3 + 4) / 2 a sample
    assert p.confirmation == 4 * 52 * 4 * 60
    # with rung_prompts 13 the screening rung draws 13 of the 26; the rungs count the same
    half = replace(sweep, early_terminate=replace(sweep.early_terminate, rung_prompts=13))
    g = cost.forecast(half, plan_steps(half), trials=20)
    assert g.asha.images == 20 * 13 + 10 * 52 + 5 * 2 * 52 + 3 * 52
    assert g.rungs == f.rungs


def test_the_shipped_sweeps_draw_within_issue_30s_budget() -> None:
    """Counts, not seconds: the forecast of 20 trials with ASHA against the figures measured
    before the rungs became a cheap fidelity (hyundai.yaml 823 k passes, 73 % drawing;
    tiny.yaml 83.1 k)."""
    hyundai = load_sweep(REPO / "sweeps" / "hyundai.yaml")
    f = cost.forecast(hyundai, plan_steps(hyundai), trials=20)
    p = f.passes(f.asha)
    assert p.eval_share <= 0.40 and p.total <= 0.50 * 823e3
    tiny = load_sweep(REPO / "sweeps" / "tiny.yaml")
    g = cost.forecast(tiny, plan_steps(tiny), trials=20)
    assert g.passes(g.asha).total <= 0.60 * 83.1e3


def test_steps_as_a_dimension_average_over_the_candidates(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, **{"train.lr_scheduler": "cosine"})
    steps = plan_steps(sweep)
    assert not steps.fidelity
    f = cost.forecast(sweep, steps, trials=4)
    # 30, 45 or 60 steps, scored every 15: 2, 3 or 4 rungs; no rung screens (every rung's
    # step is the trial's own to export)
    per = cost.rung_images(sweep)
    assert f.full == cost.Work(4 * 45, 4 * 3 * per, 4)
    # halving of 4 at 15 and 30: 2 stop at 15, 1 at 30 (if the trial is longer), 1 goes on
    by_length = [cost.ideal_asha(4, [15], 30, [15, 30], per, 2),
                 cost.ideal_asha(4, [15, 30], 45, [15, 30, 45], per, 2),
                 cost.ideal_asha(4, [15, 30], 60, [15, 30, 45, 60], per, 2)]
    assert f.asha == (by_length[0] + by_length[1] + by_length[2]).scaled(1 / 3)


def test_grid_trials_stop_at_the_grid_and_no_early_stop_has_one_arm(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, **{"method": "grid", "early_terminate": DELETE,
                                "parameters.learning_rate": {"values": [1e-3, 1e-2]}})
    f = cost.forecast(sweep, plan_steps(sweep), trials=500)
    assert f.trials == 3 * 2 * 3  # rank x learning rate x modules (steps are a fidelity)
    assert f.asha is None and f.planned == f.full


def test_throughput_prices_training_and_drawing_at_their_own_rates() -> None:
    rate = cost.Throughput(train=100.0, evaluation=400.0, device="gpu", source="test")
    seconds = rate.seconds(cost.Split(training=1000, rungs=4000, baseline=400, confirmation=800))
    assert seconds == cost.Split(10.0, 10.0, 1.0, 2.0)
    assert seconds.eval_share == pytest.approx(13 / 23)


def test_measured_sums_the_trials_timers_and_the_baseline_and_confirmation() -> None:
    trials = [{"train_seconds": 2.0, "eval_seconds": 5.0, "setup_seconds": 0.5, "last_step": 15,
               "score_per_rung": {"15": 1.0}, "device": "cpu"},
              {"train_seconds": 8.0, "eval_seconds": 20.0, "setup_seconds": 0.1,
               "last_step": 60, "score_per_rung": {"15": 1, "30": 1, "45": 1, "60": 1}},
              {"fail_reason": "died before its first rung"}]
    study = {"baseline_eval_seconds": 3.0, "confirm_trial_1": {"eval_seconds": 4.0},
             "confirm_baseline": {"eval_seconds": 2.5}, "confirm_settings": {"top_k": 1}}
    got = cost.measured(trials, study)
    assert got.seconds == cost.Split(10.0, 25.0, 3.0, 6.5)
    assert (got.steps, got.rungs, got.trials, got.device) == (75, 5, 3, "cpu")
    assert got.setup_seconds == pytest.approx(0.6)


def test_typical_values_take_each_parameters_middle(tmp_path: Path) -> None:
    demo = load_sweep(REPO / "sweeps" / "tiny.yaml")
    values = cost.typical_values(demo)
    assert values["rank"] == 4 and values["target_modules"] == "attn"
    assert values["max_train_steps"] == 45 and values["lora_alpha"] == "rank"
    assert values["learning_rate"] == pytest.approx((1e-4 * 5e-2) ** 0.5)  # geometric middle
    ranged = _sweep(tmp_path, **{"parameters.rank": {"distribution": "int_uniform", "min": 2,
                                                     "max": 9},
                                 "parameters.target_modules": {"values": ["attn_ff", "attn"]}})
    values = cost.typical_values(ranged)
    assert values["rank"] == 6 and isinstance(values["rank"], int)  # round(5.5), banker's
    assert values["target_modules"] == "attn"  # the upper middle of two, as listed
    demo.trial_config(cost.typical_values(demo), output_dir=tmp_path, cache_dir=tmp_path)


def test_prompt_subsets_and_racing_bound_the_forecast(tmp_path: Path) -> None:
    demo = load_sweep(REPO / "sweeps" / "tiny.yaml")
    raced = replace(demo, racing=Racing(chunk=8, min_prompts=12),
                    early_terminate=replace(demo.early_terminate, rung_prompts=16))
    f = cost.forecast(raced, plan_steps(raced), trials=20)
    # rung 15 is ASHA's alone (screening): 16 brand prompts, 1 image each, no control images
    subset, full = 16 * 1, 96
    assert f.asha == cost.Work(600, 10 * subset + 5 * (subset + full)
                               + 5 * (subset + 3 * full), 20)
    # racing's bound: a trial ASHA stops at 15 or 30 drew 16 brand prompts there (12 rounded
    # up to whole chunks of 8), 1 image each, and no control images
    first_look = 16 * 1
    assert cost.racing_first_look(raced) == first_look
    assert f.racing == cost.Work(600, 10 * first_look + 5 * (subset + first_look)
                                 + 5 * (subset + 3 * full), 20)
    assert f.planned == f.asha  # the sweep plans for the upper end
    assert cost.forecast(demo, plan_steps(demo), trials=20).racing is None


def test_preservation_remedies_add_their_passes_to_a_training_sample(tmp_path) -> None:
    assert cost.train_passes_per_sample(None) == cost.train_passes_per_sample("none") == 3
    assert cost.train_passes_per_sample("prior") == 6  # a class sample trained beside it
    assert cost.train_passes_per_sample("dop") == 7  # the base model's forward, the twin trained
    with pytest.raises(KeyError):
        cost.train_passes_per_sample("ema")
    demo = load_sweep(REPO / "sweeps" / "tiny.yaml")  # searches [dop, prior]
    assert cost.sweep_train_passes_per_sample(demo) == 6.5
    fixed = replace(demo, parameters=[p for p in demo.parameters if p.name != "preservation"],
                    preservation=replace(demo.preservation, method="dop"))
    assert cost.sweep_train_passes_per_sample(fixed) == 7
    plain = replace(fixed, preservation=replace(fixed.preservation, method="none"))
    f = cost.forecast(plain, plan_steps(plain), trials=20)
    assert f.passes(f.planned).training == 600 * 2 * 3
