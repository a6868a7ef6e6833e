"""The training loop on the tiny model, on CPU: determinism, learning, clipping, divergence."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trials.config import rung_steps
from trials.models.lora import WEIGHTS_NAME
from trials.train.loop import TrialDiverged, TrialOutOfMemory, clip_gradients, run_trial


def _collect():
    seen: list[tuple[int, dict, Path]] = []

    def report(step: int, metrics: dict, checkpoint: Path) -> bool:
        seen.append((step, metrics, checkpoint))
        return False

    return seen, report


def test_rung_steps_always_end_on_the_last_step() -> None:
    assert rung_steps(3, 6) == [3, 6]
    assert rung_steps(4, 10) == [4, 8, 10]
    assert rung_steps(10, 5) == [5]


def test_reports_every_rung_with_the_promised_metrics(make_trial_config) -> None:
    seen, report = _collect()
    result = run_trial(make_trial_config(max_train_steps=6), report)
    assert [s for s, _, _ in seen] == [3, 6]
    metrics = seen[-1][1]
    for key in ("clip_score", "clip_score_stderr", "clip_i", "train_loss", "train_seconds",
                "eval_seconds", "peak_memory_mb", "per_prompt"):
        assert getattr(metrics, key) is not None, key
    assert 0.0 <= metrics.clip_score <= 100.0
    assert len(metrics.per_prompt) == 3
    assert (seen[-1][2] / WEIGHTS_NAME).is_file()
    assert (seen[-1][2] / "samples.png").is_file()
    assert result.best is not None and not result.stopped_early


def test_same_config_and_seed_give_bit_identical_lora(make_trial_config, tmp_path) -> None:
    weights = []
    for name in ("a", "b"):
        run_trial(make_trial_config(output_dir=tmp_path / name), _collect()[1])
        weights.append(load_file(tmp_path / name / "step-000006" / WEIGHTS_NAME))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    other = make_trial_config(output_dir=tmp_path / "c", train={"seed": 8})
    run_trial(other, _collect()[1])
    changed = load_file(tmp_path / "c" / "step-000006" / WEIGHTS_NAME)
    assert any(not torch.equal(changed[k], weights[0][k]) for k in changed)


def test_report_returning_true_stops_the_trial(make_trial_config) -> None:
    steps = []

    def stop_after_first(step: int, metrics: dict, checkpoint: Path) -> bool:
        steps.append(step)
        return True

    result = run_trial(make_trial_config(max_train_steps=9), stop_after_first)
    assert steps == [3]
    assert result.stopped_early


def test_loss_goes_down_when_overfitting_two_images(make_trial_config, synthetic_dataset,
                                                    tmp_path) -> None:
    data = tmp_path / "two"
    shutil.copytree(synthetic_dataset, data)
    lines = (data / "metadata.jsonl").read_text().splitlines()[:2]
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    seen, report = _collect()
    config = make_trial_config(
        train_dir=data, rank=16, lora_alpha=16.0, learning_rate=5e-3, max_train_steps=120,
        target_modules="to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2,conv1,conv2,conv_in,conv_out",
        data={"random_flip": False},
        eval={"every_steps": 40, "images_per_prompt": 1, "inference_steps": 1})
    run_trial(config, report)
    losses = [m.train_loss for _, m, _ in seen]
    assert losses[-1] < 0.8 * losses[0], losses


def test_clip_gradients_bounds_the_norm() -> None:
    params = [torch.nn.Parameter(torch.ones(10)), torch.nn.Parameter(torch.ones(5))]
    for p in params:
        p.grad = torch.full_like(p, 100.0)
    before = clip_gradients(params, 1.0)
    after = torch.linalg.vector_norm(torch.cat([p.grad for p in params]))
    assert before == pytest.approx(100.0 * 15 ** 0.5, rel=1e-5)
    assert after <= 1.0 + 1e-5
    for p in params:
        p.grad = torch.full_like(p, 100.0)
    assert clip_gradients(params, None) == pytest.approx(before, rel=1e-5)
    assert torch.all(params[0].grad == 100.0)  # None: measured, not clipped


def test_training_clips_the_real_lora_gradients(make_trial_config) -> None:
    seen, report = _collect()
    run_trial(make_trial_config(max_train_steps=3, learning_rate=1e-2,
                                train={"max_grad_norm": 1e-6}), report)
    # The reported norm is the pre-clip norm of the LoRA weights actually being trained.
    assert seen[0][1].grad_norm > 1e-6


def test_nan_loss_raises_trial_diverged_naming_the_step(make_trial_config) -> None:
    config = make_trial_config(extras={"fault": {"kind": "nan", "step": 2}})
    with pytest.raises(TrialDiverged, match="at step 2") as err:
        run_trial(config, _collect()[1])
    assert err.value.step == 2


def test_out_of_memory_names_rank_and_batch(make_trial_config) -> None:
    config = make_trial_config(rank=8, extras={"fault": {"kind": "oom", "step": 1}})
    with pytest.raises(TrialOutOfMemory, match="rank 8, train_batch_size 2"):
        run_trial(config, _collect()[1])


def test_unknown_explicit_target_module_lists_valid_names(make_trial_config) -> None:
    from trials.models.lora import TargetModuleError

    with pytest.raises(TargetModuleError, match=r"attn2\.to_qq match no module.*to_q"):
        run_trial(make_trial_config(target_modules="attn2.to_qq"), _collect()[1])


def test_random_crop_trains_without_cached_latents(make_trial_config) -> None:
    seen, report = _collect()
    run_trial(make_trial_config(max_train_steps=3, data={"center_crop": False}), report)
    assert seen and seen[0][1].train_loss > 0


def test_gradient_accumulation_and_schedules_run(make_trial_config) -> None:
    seen, report = _collect()
    config = make_trial_config(max_train_steps=3, train={
        "gradient_accumulation_steps": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 1,
        "snr_gamma": 5.0, "noise_offset": 0.05, "prediction_type": "v_prediction"})
    run_trial(config, report)
    assert seen[0][1].learning_rate_now < 1e-3  # cosine decayed by the last step


def test_dora_with_caption_dropout_trains_and_loads_in_diffusers(make_trial_config,
                                                                 tiny_model_dir) -> None:
    from diffusers import StableDiffusionPipeline

    seen, report = _collect()
    run_trial(make_trial_config(adapter="dora", max_train_steps=3,
                                train={"caption_dropout": 0.5}), report)
    checkpoint = seen[-1][2]
    saved = load_file(checkpoint / WEIGHTS_NAME)
    assert any(k.endswith("lora_magnitude_vector") for k in saved)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(checkpoint)
    loaded = {n: p for n, p in pipe.unet.named_parameters() if "lora_magnitude_vector" in n}
    assert len(loaded) == sum(k.endswith("lora_magnitude_vector") for k in saved)
    name = next(k for k in saved if k.endswith("lora_magnitude_vector"))
    module = name.removeprefix("unet.").removesuffix(".lora_magnitude_vector")
    match = [v for n, v in loaded.items() if n.startswith(f"{module}.lora_magnitude_vector.")]
    assert len(match) == 1
    torch.testing.assert_close(match[0], saved[name])
