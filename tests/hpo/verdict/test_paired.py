"""Paired differences over prompts (hpo.verdict.paired), checked against a hand computation."""

from __future__ import annotations

import math

import pytest

from hpo.verdict.paired import paired_difference, paired_or_none


def test_paired_stderr_matches_a_hand_computation() -> None:
    a = [30.0, 25.0, 21.0, 28.0]
    b = [29.0, 23.0, 20.5, 26.5]
    # d = [1.0, 2.0, 0.5, 1.5]; mean 1.25; sum of squared deviations
    # 0.0625 + 0.5625 + 0.5625 + 0.0625 = 1.25; sd = sqrt(1.25 / 3); stderr = sd / sqrt(4)
    hand_stderr = math.sqrt(1.25 / 3) / 2
    paired = paired_difference(a, b)
    assert paired.delta == pytest.approx(1.25)
    assert paired.stderr == pytest.approx(hand_stderr)
    assert paired.n == 4
    # t = 1.25 / 0.3227 = 3.873 with 3 degrees of freedom: two-sided p = 0.0305 (t table)
    assert paired.p_value == pytest.approx(0.0305, abs=5e-4)
    assert paired.distinguishable()


def test_paired_stderr_is_far_smaller_than_unpaired_when_prompts_differ_in_difficulty() -> None:
    # Prompt difficulty spreads both score lists by ~10 points; the LoRA adds ~0.3 to each.
    b = [12.0, 30.0, 22.0, 18.0, 26.0]
    a = [x + 0.3 + e for x, e in zip(b, [0.05, -0.05, 0.1, -0.1, 0.0], strict=True)]
    paired = paired_difference(a, b)
    unpaired = math.sqrt(sum((x - sum(a) / 5) ** 2 for x in a) / 4 / 5)
    assert paired.stderr < unpaired / 50


def test_no_difference_is_not_distinguishable() -> None:
    paired = paired_difference([20.0, 21.0, 19.0], [20.5, 20.5, 19.0])
    assert paired.delta == pytest.approx(0.0)
    assert not paired.distinguishable()


def test_constant_shift_has_zero_stderr_and_is_distinguishable() -> None:
    paired = paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert paired.stderr == 0 and paired.distinguishable()


def test_one_prompt_has_no_stderr_and_mismatched_lists_raise() -> None:
    one = paired_difference([3.0], [1.0])
    assert one.delta == 2.0 and math.isnan(one.stderr) and not one.distinguishable()
    assert one.as_dict()["stderr"] is None
    with pytest.raises(ValueError, match="same non-empty prompt list"):
        paired_difference([1.0, 2.0], [1.0])
    assert paired_or_none([1.0, 2.0], None) is None
    assert paired_or_none([1.0, 2.0], [1.0]) is None
