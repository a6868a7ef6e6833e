"""Image grids and notes in the study (hpo.outputs.artifacts), on a small study built without Ray.

``make_finished_study`` builds that study the way a sweep leaves it: the real sweep file,
search space and study attrs, rungs as intermediate values, user attrs shaped like
``hpo.dispatch.recorder.StudyRecorder``'s, PNG grids uploaded through :class:`ArtifactObserver`, the
baseline grid on the study. The dashboard and report tests use it too.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image, ImageDraw

from hpo.outputs.artifacts import (
    BASELINE_NAME,
    ArtifactObserver,
    artifact_dir,
    open_store,
    per_prompt_table,
    rung_filename,
    rung_step,
    study_artifacts,
    trial_artifacts,
    trial_note,
    upload_baseline,
)
from hpo.study import storage as studies
from hpo.sweep.space import define_by_run, sampler_settings
from hpo.sweep.spec import load_sweep
from tests.sweep_files import REPO, write_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)


def draw_grid(path: Path, prompts: list[str], seeds: int, hue: int) -> Path:
    """A labelled grid like ``trials.eval.score.grid_image``: a label strip above each prompt's row
    of seeded images (here: a drawn car whose colour depends on ``hue``)."""
    cell, label = 64, 16
    grid = Image.new("RGB", (seeds * cell, len(prompts) * (label + cell)), "white")
    draw = ImageDraw.Draw(grid)
    for r, prompt in enumerate(prompts):
        top = r * (label + cell)
        draw.text((2, top + 2), prompt[:22], fill="black")
        for c in range(seeds):
            x, y = c * cell, top + label
            colour = ((hue * 53 + r * 40) % 256, (c * 90 + 60) % 256, (hue * 29 + 120) % 256)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(200, 225, 245))
            draw.rectangle([x + 8, y + 28, x + 56, y + 46], fill=colour)
            draw.ellipse([x + 12, y + 40, x + 24, y + 52], fill="black")
            draw.ellipse([x + 40, y + 40, x + 52, y + 52], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def make_finished_study(study_dir: Path, n_trials: int = 6, seed: int = 0) -> optuna.Study:
    """A finished sweep in ``study_dir`` (named after the folder): COMPLETE, PRUNED and FAIL
    trials, rung grids as artifacts, trial notes, the baseline on the study."""
    rng = random.Random(seed)
    study_dir.mkdir(parents=True, exist_ok=True)
    sweep_dir = study_dir.parent / f"{study_dir.name}-sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep = load_sweep(write_sweep(sweep_dir, name=study_dir.name,
                                   **{"eval.images_per_prompt": 2}))
    study = studies.open_study(studies.open_storage(studies.default_storage_url(study_dir)),
                               sweep, study_dir.name)
    studies.record_study_attrs(study, sweep, sampler_settings(sweep))
    prompts = list(sweep.eval.prompt_list)
    seeds = sweep.eval.images_per_prompt
    base_pp = [round(22 + rng.uniform(-2, 2), 3) for _ in prompts]
    base = sum(base_pp) / len(base_pp)
    for key, value in {"clip_score": base, "clip_score_stderr": 0.4, "clip_i": 0.5,
                       "per_prompt": base_pp, "eval_seconds": 1.5,
                       "samples": str(study_dir / "baseline" / "samples.png")}.items():
        study.set_user_attr(f"baseline_{key}", value)
    draw_grid(study_dir / "baseline" / "samples.png", prompts, seeds, hue=0)
    upload_baseline(study, study_dir, prompts)
    observer = ArtifactObserver(artifact_dir(study_dir), prompts, study.user_attrs)
    space = define_by_run(sweep)
    every = sweep.eval.every_steps
    for i in range(n_trials):
        trial = study.ask()
        space(trial)
        if i == n_trials - 1:  # the last one fails before its first rung
            attrs: dict[str, Any] = {"fail_reason": "TrialDiverged: loss is nan at step 3"}
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            observer.trial_finished(trial, TrialState.FAIL, attrs)
            study.tell(trial, state=TrialState.FAIL)
            continue
        max_steps = trial.params["max_train_steps"]
        stop = every if i % 3 == 2 else max_steps  # every third trial is pruned by "ASHA"
        lift = 3 * math.log10(trial.params["learning_rate"] / 5e-5) / 1.3 - 1.5
        rungs = []
        for step in range(every, stop + 1, every):
            per_prompt = [round(b + lift * step / max_steps + rng.uniform(-1, 1), 3)
                          for b in base_pp]
            rung = {"step": step, "max_train_steps": max_steps,
                    "clip_score": sum(per_prompt) / len(per_prompt), "clip_score_stderr": 0.5,
                    "clip_i": 0.55, "per_prompt": per_prompt, "train_seconds": 2.0 * step,
                    "eval_seconds": 1.5 * (step // every), "setup_seconds": 3.0,
                    "device": "cpu"}
            rungs.append(rung)
            trial.report(rung["clip_score"], step)
            ckpt = draw_grid(study_dir / "ckpt" / f"t{i}-s{step}" / "samples.png", prompts,
                             seeds, hue=i * 7 + step)
            observer.rung_saved(trial, rung, str(ckpt.parent))
        best = max(rungs, key=lambda r: r["clip_score"])
        last = rungs[-1]
        busy = last["train_seconds"] + last["eval_seconds"] + last["setup_seconds"]
        attrs = {"score_per_rung": {str(r["step"]): r["clip_score"] for r in rungs},
                 "best_step": best["step"], "clip_score_stderr": 0.5, "clip_i": 0.55,
                 "per_prompt": best["per_prompt"],
                 "delta_vs_baseline": best["clip_score"] - base,
                 "train_seconds": last["train_seconds"], "eval_seconds": last["eval_seconds"],
                 "setup_seconds": 3.0, "device": "cpu", "gpu_seconds": 0.0,
                 "cpu_seconds": busy * 1, "peak_memory_mb": 900.0, "last_step": last["step"]}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        state = TrialState.COMPLETE if stop == max_steps else TrialState.PRUNED
        observer.trial_finished(trial, state, attrs)
        if state == TrialState.COMPLETE:
            study.tell(trial, best["clip_score"])
        else:
            study.tell(trial, state=state)
    return study


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, Path]:
    study_dir = tmp_path_factory.mktemp("runs") / "art-study"
    return make_finished_study(study_dir), study_dir


def test_samples_name_matches_the_trial_code() -> None:
    # Read, not imported: importing trials.eval.evaluator costs torch's import time.
    from hpo.outputs import artifacts

    source = (REPO / "trials" / "eval" / "evaluator.py").read_text(encoding="utf-8")
    assert f'SAMPLES_NAME = "{artifacts.SAMPLES_NAME}"' in source


def test_rung_filenames_carry_the_step() -> None:
    assert rung_filename(20, 24.2581) == "step-000020_clip-24.26.png"
    assert rung_filename(7, None) == "step-000007.png"
    assert rung_step("step-000020_clip-24.26.png") == 20
    assert rung_step("step-000007.png") == 7
    assert rung_step(BASELINE_NAME) is None


def test_every_rung_grid_is_an_image_artifact_of_its_trial(finished) -> None:
    study, study_dir = finished
    store = open_store(artifact_dir(study_dir))
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        metas = trial_artifacts(study, t)
        assert sorted(rung_step(m.filename) for m in metas) == sorted(t.intermediate_values)
        for meta in metas:
            assert meta.mimetype == "image/png"
            with store.open_reader(meta.artifact_id) as reader:
                assert reader.read(8) == b"\x89PNG\r\n\x1a\n"
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and not trial_artifacts(study, failed[0])


def test_baseline_grid_is_on_the_study_once(finished) -> None:
    study, study_dir = finished
    assert [m.filename for m in study_artifacts(study)] == [BASELINE_NAME]
    assert upload_baseline(study, study_dir) is None  # already there: nothing new
    assert [m.filename for m in study_artifacts(study)] == [BASELINE_NAME]
    assert (artifact_dir(study_dir)).is_dir()


def test_trial_notes_hold_params_and_per_prompt_table(finished) -> None:
    from optuna_dashboard import get_note

    study, _ = finished
    prompts = study.user_attrs["prompts"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))[0]
    note = get_note(optuna.Trial(study, complete._trial_id))
    assert note.startswith(f"## Trial {complete.number}: COMPLETE")
    assert "| learning_rate |" in note and "| rank |" in note
    assert "| # | prompt | LoRA | baseline | Δ |" in note
    assert prompts[0] in note and f"at step {complete.user_attrs['best_step']}" in note
    failed = study.get_trials(states=(TrialState.FAIL,))[0]
    assert "TrialDiverged" in get_note(optuna.Trial(study, failed._trial_id))
    assert "Baseline (base model without LoRA)" in get_note(study)
    assert study.metric_names == ["clip_score"]


def test_missing_grid_or_broken_store_never_raises(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    study = optuna.create_study()
    trial = study.ask()
    observer = ArtifactObserver(tmp_path / "artifacts")
    observer.rung_saved(trial, {"step": 5, "clip_score": 1.0}, str(tmp_path / "nowhere"))
    assert "no image grid" in caplog.text
    draw_grid(tmp_path / "ck" / "samples.png", ["a car"], 1, hue=1)
    (tmp_path / "artifacts").rmdir()
    (tmp_path / "artifacts").write_text("not a folder")  # uploads now fail
    observer.rung_saved(trial, {"step": 5, "clip_score": 1.0}, str(tmp_path / "ck"))
    assert "could not upload" in caplog.text
    assert upload_baseline(study, tmp_path / "no-study") is None


def test_per_prompt_table_pads_missing_values() -> None:
    rows = per_prompt_table(["a | b"], [21.0, 22.5], [20.0])
    assert rows[2] == "| 1 | a \\| b | 21.00 | 20.00 | +1.00 |"
    assert rows[3] == "| 2 | prompt 2 | 22.50 | - | - |"
    assert per_prompt_table([], None, None) == []
    note = trial_note(3, TrialState.PRUNED, {"learning_rate": 1e-4}, {}, [])
    assert note.startswith("## Trial 3: PRUNED") and "| learning_rate | 0.0001 |" in note


def test_study_note_names_the_confirmed_winner_not_the_search_best() -> None:
    """The dashboard's Best Trial badge is the search best; the note says who won."""
    from optuna_dashboard import get_note

    from hpo.outputs.artifacts import write_study_note
    from tests.hpo.verdict.test_winner import confirm, make_study

    study = make_study({0: 20.0, 1: 23.0, 2: 22.0})
    write_study_note(study, ["a red car"])
    assert "**Winner: trial 1** (best search score; no confirmation ran)" in get_note(study)
    confirm(study, {1: [20.0, 21.0, 22.0], 2: [21.0, 22.5, 23.5]}, top_k=2)
    write_study_note(study, ["a red car"])
    note = get_note(study)
    assert note.startswith(f"## {study.study_name}")
    assert "**Winner: trial 2**, confirmed on fresh seeds (seed 7)" in note
    assert "Baseline (base model without LoRA)" in note


def test_a_raced_trials_note_says_what_stopped_it() -> None:
    attrs = {"score_per_rung": {"15": 52.0, "30": 55.5}, "subset_rungs": {"15": 16},
             "raced": {"step": 45, "n": 24, "prompts_total": 48, "delta": -6.5,
                       "stderr": 1.9, "p_value": 0.0011, "test": "t", "level": 0.01,
                       "reference_trial": 4, "clip_score": 49.0}}
    note = trial_note(7, TrialState.PRUNED, {"rank": 4}, attrs, [])
    assert "step 15: 52.00 (16 prompts), step 30: 55.50" in note
    assert ("**Stopped by racing** at step 45 after 24 of 48 prompts: Δ -6.5000 ± 1.9000 "
            "against trial 4's rung on the same prompts (one-sided t, p 0.0011 < 0.01)") in note
    attrs["raced"]["against"] = "cutoff"
    note = trial_note(7, TrialState.PRUNED, {"rank": 4}, attrs, [])
    assert "against trial 4's rung (ASHA's cutoff) on the same prompts" in note
