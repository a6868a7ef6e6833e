"""benchmarks/racing.py: the table replay and the side-by-side comparison (no sweeps run)."""

from __future__ import annotations

import pytest

from benchmarks import racing


def test_the_table_replay_is_seeded_and_stops_only_with_evidence() -> None:
    first = racing.simulate_table(200, 20, seed=3)
    assert first == racing.simulate_table(200, 20, seed=3)
    assert 0 <= first["rate"] <= 1 and len(first["top3"]) == 3
    assert 0 < first["prompts_drawn_fraction"] < 1  # some configurations were stopped
    # a test that can never reject stops nothing and draws every prompt
    never = {**racing.RACING["racing"], "level": 1e-300}
    none = racing.simulate_table(50, 20, seed=3, settings=never)
    assert none["configurations_stopped"] == 0 and none["prompts_drawn_fraction"] == 1
    assert none["rate"] == 0
    # against ASHA's cutoff (the median, factor 2) racing stops less than against the best
    cutoff = racing.simulate_table(200, 20, seed=3,
                                   settings=racing.ARM_CHANGES["racing-cutoff"]["racing"])
    assert cutoff["racing"]["against"] == "cutoff"
    assert 0 < cutoff["configurations_stopped"] < first["configurations_stopped"]


def test_compare_pairs_the_two_winners_on_the_confirmation_prompts() -> None:
    def row(arm: str, total: float, per_prompt: list[float]) -> dict:
        return {"arm": arm, "seed": 0, "eval_share": 0.9,
                "passes": {"total": total, "evaluation": 0.9 * total},
                "seconds": {"total": total / 100},
                "winner": {"trial": 1 if arm == "fixed" else 2, "per_prompt": per_prompt}}

    [pair] = racing.compare([row("fixed", 100.0, [50.0, 60.0, 70.0, 65.0]),
                             row("racing", 60.0, [51.0, 59.0, 71.0, 66.0])])
    assert pair["arm"] == "racing" and pair["compute_fraction"] == pytest.approx(0.6)
    assert pair["winners"] == [1, 2]
    assert pair["winner_delta"] == pytest.approx(0.5) and pair["same_winner"] is True


def test_replay_races_a_fixed_sweeps_own_rungs_without_changing_its_path(tmp_path) -> None:
    import json

    import optuna

    from trials.eval.evaluator import prompt_order

    study = optuna.create_study(direction="maximize")
    base = [40.0 + i for i in range(48)]
    shifts = {0: 0.0, 1: -8.0, 2: 0.5, 3: -3.0}  # trial 1 is clearly worse than trial 0
    for number, shift in shifts.items():
        trial = optuna.trial.create_trial(
            value=50.0 + shift, params={}, distributions={},
            user_attrs={"ray_trial_id": f"t{number}", "best_step": 30})
        study.add_trial(trial)
        folder = tmp_path / "ray" / "run-1" / f"_train_one_t{number}"
        folder.mkdir(parents=True)
        rows = [{"trial_id": f"t{number}", "timestamp": 10 * number + step, "step": step,
                 "max_train_steps": 30,
                 "per_prompt": [v + shift + (0.3 if i % 2 else -0.3) * (number + 1)
                                for i, v in enumerate(base)], "constraints": None}
                for step in (15, 30)]
        (folder / "result.json").write_text("\n".join(json.dumps(r) for r in rows))
    assert len(prompt_order(48, 1234)) == 48
    best = racing.replay(study, tmp_path, "best", winner_trial=0, eval_seed=1234)
    stopped = {(s["trial"], s["step"]) for s in best["stops"]}
    assert (1, 15) in stopped and (1, 30) in stopped  # worse at both rungs, stopped at both
    assert all(s["reference"] in (0, 2) for s in best["stops"])
    assert not best["winner_stopped"] and 0 < best["prompts_drawn_fraction"] < 1
    # the same rungs with trial 1 as the confirmed winner: racing would have lost it
    assert racing.replay(study, tmp_path, "best", winner_trial=1,
                         eval_seed=1234)["winner_stopped"]
    # trial 3 is raced against the best (trial 2) or against ASHA's cutoff: the median of the
    # trials recorded before it (1, 0, 2 by score), trial 0
    cutoff = racing.replay(study, tmp_path, "cutoff", winner_trial=0, eval_seed=1234)
    assert {s["reference"] for s in best["stops"] if s["trial"] == 3} == {2}
    assert {s["reference"] for s in cutoff["stops"] if s["trial"] == 3} == {0}
    assert {s["step"] for s in cutoff["stops"]} == {15}  # never at a trial's last rung
