"""The rungs' precision from the study's per-prompt spread: the split into prompts' and images'
parts, and the prompts a gap needs."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from hpo.verdict import precision, winner

PROMPT_SD, IMAGE_SD = 1.5, 3.0  # the simulated prompts' part and one image's noise


def _scores(rng: np.random.Generator, effect: np.ndarray, images: int) -> list[float]:
    """Per-prompt means of ``images`` noisy images around each prompt's effect."""
    noise = rng.normal(0.0, IMAGE_SD, size=(effect.size, images)).mean(axis=1)
    return [float(x) for x in effect + noise]


def _study(n_prompts: int, search_images: int, confirm_images: int | None,
           seed: int = 0) -> optuna.Study:
    """Three trials whose per-prompt difference with the base model has the two parts."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize")
    base = [0.0] * n_prompts
    study.set_user_attr("baseline_per_prompt", base)
    study.set_user_attr("images_per_prompt", search_images)
    for number, value in enumerate((10.0, 9.0, 8.0)):
        effect = rng.normal(0.0, PROMPT_SD, size=n_prompts)
        trial = study.ask()
        trial.set_user_attr("per_prompt", _scores(rng, effect, search_images))
        study.tell(trial, value)
        if confirm_images:
            study.set_user_attr(winner.trial_key(number), {
                "per_prompt": _scores(rng, effect, confirm_images), "seed": 2,
                "images_per_prompt": confirm_images})
    if confirm_images:
        study.set_user_attr(winner.SETTINGS_KEY, {"top_k": 3, "seed": 2,
                                                  "images_per_prompt": confirm_images})
        study.set_user_attr(winner.BASELINE_KEY, {"per_prompt": base, "seed": 2,
                                                  "images_per_prompt": confirm_images})
    return study


def test_two_image_counts_split_the_spread_into_prompts_and_images() -> None:
    p = precision.measure(_study(4000, 1, 4), 1)
    assert p is not None and p.confirmation is not None
    assert p.rungs.sd == pytest.approx(math.sqrt(PROMPT_SD**2 + IMAGE_SD**2), rel=0.05)
    assert p.confirmation.sd == pytest.approx(math.sqrt(PROMPT_SD**2 + IMAGE_SD**2 / 4),
                                              rel=0.05)
    assert math.sqrt(p.prompt_part) == pytest.approx(PROMPT_SD, rel=0.15)
    assert math.sqrt(p.image_part) == pytest.approx(IMAGE_SD, rel=0.05)
    # 48 prompts x 2 images: sqrt((A + B / 2) / 48)
    assert p.stderr(48, 2) == pytest.approx(
        math.sqrt((PROMPT_SD**2 + IMAGE_SD**2 / 2) / 48), rel=0.1)
    # a gap of 1 at 80 % power: 7.85 (A + B / m) / 1, fewer prompts with more images each
    need = [p.prompts_for(1.0, m) for m in (1, 2, 4)]
    assert need[0] == pytest.approx(7.85 * (PROMPT_SD**2 + IMAGE_SD**2), rel=0.1)
    assert need[0] > need[1] > need[2]


def test_one_image_count_gives_the_spread_alone_and_lines_say_so() -> None:
    study = _study(48, 2, None)
    p = precision.measure(study, 2)
    assert p is not None and p.confirmation is None and p.stderr(48, 2) is None
    text = "\n".join(precision.lines(study))
    assert "at 2 image(s) per prompt (3 trial(s)' best rungs" in text
    assert "a confirmation at another image count splits it" in text


def test_lines_name_the_prompts_and_images_the_top_gap_needs() -> None:
    text = "\n".join(precision.lines(_study(48, 1, 4)))
    assert "at 4 image(s) on fresh seeds" in text
    assert "to tell the search's top 3 apart (gap 2.00) at 80 % power" in text
    assert precision.lines(optuna.create_study()) == []  # nothing scored yet


def test_split_variance_needs_two_image_counts_and_clips_at_zero() -> None:
    same = precision.Spread(2.0, 2, 3)
    assert precision.split_variance(same, same) is None
    # a confirmation noisier than the rungs (sampling noise): no negative image part
    a, b = precision.split_variance(precision.Spread(1.0, 1, 3), precision.Spread(2.0, 4, 3))
    assert b == 0.0 and a == pytest.approx(1.0)
