"""Resuming a trial from its last rung checkpoint (issue 31): the same LoRA and score as a trial
that never stopped, no rung reported twice, a torn checkpoint never read."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from trials.config import RESUME_DIR, PreservationSpec
from trials.models.lora import WEIGHTS_NAME
from trials.report import RungReport
from trials.train import resume
from trials.train.loop import run_trial
from trials.trigger import remove_trigger

LORA_TOLERANCE = 1e-5
SCORE_TOLERANCE = 1e-3


def _collect(stop: bool = False) -> tuple[list[tuple[int, RungReport]], object]:
    """The rungs reported, and a ``report`` that keeps them (``stop``: and ends the trial)."""
    seen: list[tuple[int, RungReport]] = []

    def report(step: int, metrics: RungReport, checkpoint: Path) -> bool:
        seen.append((step, metrics))
        return stop

    return seen, report


@pytest.fixture
def config_for(make_trial_config, tmp_path: Path):
    """A 9-step trial with rungs at 3, 6 and 9 that draws from every RNG the loop has: two
    micro-batches a step, caption dropout, flips, a warm-up and cosine schedule; with a
    preservation ``method``, its class images or trigger-less captions too."""
    def build(method: str | None, output_dir: Path, **extras: object):
        config = make_trial_config(
            max_train_steps=9, output_dir=output_dir, cache_dir=tmp_path / "cache",
            train={"gradient_accumulation_steps": 2, "caption_dropout": 0.3,
                   "lr_scheduler": "cosine", "lr_warmup_steps": 2},
            extras=extras)
        if method is None:
            return config
        prompts = config.eval.prompt_list
        pres = PreservationSpec(trigger="Hyundai",
                                control_prompt_list=tuple(remove_trigger(p, "Hyundai")
                                                          for p in prompts),
                                brand_prompt_list=prompts, class_images=4,
                                class_inference_steps=2)
        return replace(config, preservation=pres,
                       params=replace(config.params, preservation=method,
                                      preservation_weight=2.0))
    return build


def _max_lora_difference(a: Path, b: Path) -> float:
    left, right = load_file(a / WEIGHTS_NAME), load_file(b / WEIGHTS_NAME)
    assert left.keys() == right.keys()
    return max(float((left[k] - right[k]).abs().max()) for k in left)


# Preservation's remedies draw class images or run the base model too: minutes on 2 cores.
@pytest.mark.parametrize("method", [None, pytest.param("dop", marks=pytest.mark.slow),
                                    pytest.param("prior", marks=pytest.mark.slow)])
def test_a_trial_stopped_after_its_second_rung_resumes_to_the_same_lora_and_score(
        config_for, tmp_path: Path, method: str | None) -> None:
    whole, report = _collect()
    run_trial(config_for(method, tmp_path / "whole"), report)
    assert [s for s, _ in whole] == [3, 6, 9]

    first, report = _collect()
    stopped = config_for(method, tmp_path / "stopped",
                         fault={"kind": "error", "step": 6, "at": "rung"})
    with pytest.raises(RuntimeError, match="injected error at step 6"):
        run_trial(stopped, report)
    assert [s for s, _ in first] == [3, 6]  # the fault came after rung 6 was reported

    second, report = _collect()
    result = run_trial(config_for(method, tmp_path / "resumed"), report,
                       resume_from=tmp_path / "stopped")
    assert result.resumed_from_step == 6
    assert [s for s, _ in second] == [9]  # rungs 3 and 6 are not reported again
    assert [r.step for r in result.rungs] == [3, 6, 9]

    difference = _max_lora_difference(tmp_path / "whole" / "step-000009",
                                      tmp_path / "resumed" / "step-000009")
    print(f"max abs LoRA difference ({method}): {difference:.3g}")
    assert difference <= LORA_TOLERANCE
    for (_, a), b in zip(whole, [m for _, m in first] + [m for _, m in second], strict=True):
        assert abs(a.clip_score - b.clip_score) <= SCORE_TOLERANCE, (a.step, a.clip_score,
                                                                     b.clip_score)
        assert abs(a.train_loss - b.train_loss) <= 1e-4
    # The running totals go on from the checkpoint's, not from zero.
    assert second[0][1].train_seconds > first[-1][1].train_seconds


def test_a_torn_checkpoint_is_never_read_and_the_newest_complete_one_wins(
        config_for, tmp_path: Path) -> None:
    whole, report = _collect()
    run_trial(config_for(None, tmp_path / "whole"), report)

    torn = config_for(None, tmp_path / "torn",
                      fault={"kind": "error", "step": 6, "at": "checkpoint"})
    with pytest.raises(RuntimeError, match="injected error at step 6"):
        run_trial(torn, _collect()[1])
    rung6 = tmp_path / "torn" / "step-000006"
    assert (rung6 / WEIGHTS_NAME).is_file() and not (rung6 / RESUME_DIR).exists()
    assert list(rung6.glob(f".{RESUME_DIR}.tmp*"))  # half written, never published
    assert resume.step_of(rung6) is None
    assert resume.latest(tmp_path / "torn") == tmp_path / "torn" / "step-000003"

    resumed, report = _collect()
    result = run_trial(config_for(None, tmp_path / "resumed"), report,
                       resume_from=tmp_path / "torn")
    assert result.resumed_from_step == 3
    assert [s for s, _ in resumed] == [6, 9]
    assert _max_lora_difference(tmp_path / "whole" / "step-000009",
                                tmp_path / "resumed" / "step-000009") <= LORA_TOLERANCE
    assert abs(whole[-1][1].clip_score - resumed[-1][1].clip_score) <= SCORE_TOLERANCE


def test_a_checkpoint_of_other_parameters_is_refused(config_for,
                                                     tmp_path: Path) -> None:
    run_trial(config_for(None, tmp_path / "a"), _collect(stop=True)[1])
    other = replace(config_for(None, tmp_path / "b"), params=replace(
        config_for(None, tmp_path / "b").params, learning_rate=5e-4))
    with pytest.raises(resume.ResumeError, match="another trial's"):
        run_trial(other, _collect()[1], resume_from=tmp_path / "a" / "step-000003")


def test_nothing_to_resume_from_starts_over(config_for, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    seen, report = _collect(stop=True)
    result = run_trial(config_for(None, tmp_path / "fresh"), report,
                       resume_from=tmp_path / "empty")
    assert result.resumed_from_step is None and [s for s, _ in seen] == [3]
