"""The dry run's plan: what each rung draws, and the confirmation's fidelity."""

from __future__ import annotations

from dataclasses import replace

from hpo import plan
from hpo.sweep.fidelity import plan_steps
from hpo.sweep.spec import load_sweep
from tests.sweep_files import REPO


def test_the_demo_rungs_say_which_screen_and_which_decide() -> None:
    demo = load_sweep(REPO / "sweeps" / "tiny.yaml")
    lines = plan.rung_lines(demo, plan_steps(demo))
    assert lines[0].startswith("  rungs          30, 45, 60: candidate step counts, 48 brand + "
                               "48 control prompts x 1 image(s)")
    assert lines[1].strip().startswith("15: screening, 48 brand prompt(s) x 1 image(s), no "
                                       "control images")
    # with a prompt budget the screening rung draws that many
    subset = replace(demo, early_terminate=replace(demo.early_terminate, rung_prompts=16))
    assert "15: screening, 16 brand prompt(s)" in plan.rung_lines(subset, plan_steps(subset))[1]
    # without ASHA no rung screens
    plain = replace(demo, early_terminate=None)
    assert len(plan.rung_lines(plain, plan_steps(plain))) == 1


def test_the_confirmation_line_says_it_draws_at_full_size() -> None:
    hyundai = load_sweep(REPO / "sweeps" / "hyundai.yaml")
    assert hyundai.confirm.inference_steps == 30 and hyundai.eval.inference_steps == 20
    assert plan._fidelity_note(hyundai) == (" (full size; the rungs draw 1 at 20 steps, a "
                                            "cheaper fidelity)")
    same = replace(hyundai, confirm=replace(hyundai.confirm, images_per_prompt=1,
                                            inference_steps=20))
    assert plan._fidelity_note(same) == " (as the rungs)"
