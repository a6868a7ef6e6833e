"""benchmarks/racing.py: the table replay and the side-by-side comparison (no sweeps run)."""

from __future__ import annotations

import pytest

from benchmarks import racing


def test_the_table_replay_is_seeded_and_stops_only_with_evidence(monkeypatch) -> None:
    first = racing.simulate_table(200, 20, seed=3)
    assert first == racing.simulate_table(200, 20, seed=3)
    assert 0 <= first["rate"] <= 1 and len(first["top3"]) == 3
    assert 0 < first["prompts_drawn_fraction"] < 1  # some configurations were stopped
    # a test that can never reject stops nothing and draws every prompt
    monkeypatch.setitem(racing.RACING, "racing", {**racing.RACING["racing"], "level": 1e-300})
    none = racing.simulate_table(50, 20, seed=3)
    assert none["configurations_stopped"] == 0 and none["prompts_drawn_fraction"] == 1
    assert none["rate"] == 0


def test_compare_pairs_the_two_winners_on_the_confirmation_prompts() -> None:
    def row(arm: str, total: float, per_prompt: list[float]) -> dict:
        return {"arm": arm, "seed": 0, "eval_share": 0.9,
                "passes": {"total": total, "evaluation": 0.9 * total},
                "seconds": {"total": total / 100},
                "winner": {"trial": 1 if arm == "fixed" else 2, "per_prompt": per_prompt}}

    [pair] = racing.compare([row("fixed", 100.0, [50.0, 60.0, 70.0, 65.0]),
                             row("racing", 60.0, [51.0, 59.0, 71.0, 66.0])])
    assert pair["compute_fraction"] == pytest.approx(0.6)
    assert pair["winners"] == [1, 2]
    assert pair["winner_delta"] == pytest.approx(0.5) and pair["same_winner"] is True
