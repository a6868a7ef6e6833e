"""Tests for hpo.plan's paired comparison of the best trial with the baseline."""

from __future__ import annotations

import math

import pytest

from hpo.plan import paired_gain


def test_paired_gain_uses_per_prompt_differences() -> None:
    gain, se, n = paired_gain([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])  # diffs 2, 3, 4
    assert n == 3 and gain == pytest.approx(3.0)
    assert se == pytest.approx(math.sqrt(1.0 / 3))  # sd 1 over sqrt(3)
    # A constant shift has no paired spread, however spread out the prompts are.
    assert paired_gain([10.0, 50.0], [9.0, 49.0]) == (1.0, 0.0, 2)


@pytest.mark.parametrize("scores, baseline", [
    (None, [1.0, 2.0]), ([1.0, 2.0], None), ([1.0], [2.0]), ([1.0, 2.0], [1.0, 2.0, 3.0])])
def test_paired_gain_needs_two_matching_prompt_lists(scores, baseline) -> None:
    assert paired_gain(scores, baseline) is None
