"""Preservation in training (trials.train.preserve): the base model's control images and class
images are made once and shared, DOP's target is the base model's prediction, and the extra
loss terms are weighted as stated."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from trials.config import PreservationSpec, TrainSpec
from trials.data.folder import load_examples
from trials.eval.evaluator import Evaluator
from trials.models.components import load_components
from trials.models.lora import attach_lora
from trials.train import preserve
from trials.train.accumulate import Accumulator, NoisedBatch, add_noise
from trials.train.loop import run_trial
from trials.trigger import remove_trigger

CPU = torch.device("cpu")


@pytest.fixture
def preserving_config(make_trial_config, tmp_path: Path):
    def build(**kw):
        base = make_trial_config(cache_dir=kw.pop("cache_dir", tmp_path / "cache"), **kw)
        prompts = base.eval.prompt_list
        pres = PreservationSpec(trigger="Hyundai",
                                control_prompt_list=tuple(remove_trigger(p, "Hyundai")
                                                          for p in prompts),
                                brand_prompt_list=prompts, class_images=4,
                                class_inference_steps=2)
        return replace(base, preservation=pres)
    return build


def _setup(config, tiny_model_dir: Path):
    components = load_components("tiny", cache_dir=tiny_model_dir.parent)
    examples = load_examples(config.data.train_dir, config.data.caption_column)
    evaluator = Evaluator(config, components, examples, CPU, torch.float32)
    return components, examples, evaluator


def test_class_images_are_drawn_once_and_shared(preserving_config, tiny_model_dir) -> None:
    config = preserving_config()
    components, examples, evaluator = _setup(config, tiny_model_dir)
    first = preserve.class_data(config, examples, evaluator, components, CPU, torch.float32)
    assert not first.cache_hit and first.latent_mean.shape[0] == 4
    stamp = first.cache_file.stat().st_mtime_ns
    # another trial (another evaluator, same cache folder) reads the file instead of drawing
    components2, _, evaluator2 = _setup(config, tiny_model_dir)
    evaluator2.pipe = None  # drawing would fail: it must not draw
    second = preserve.class_data(config, examples, evaluator2, components2, CPU, torch.float32)
    assert second.cache_hit and second.cache_file == first.cache_file
    assert second.cache_file.stat().st_mtime_ns == stamp
    assert torch.equal(second.latent_mean, first.latent_mean)
    assert torch.equal(second.text, first.text)
    assert all("Hyundai" not in p for p in preserve.class_prompts(config, examples))


def test_base_control_features_are_computed_once(preserving_config, tiny_model_dir,
                                                  monkeypatch) -> None:
    config = preserving_config()
    _, _, evaluator = _setup(config, tiny_model_dir)
    first = preserve.base_control(config, evaluator, CPU, torch.float32)
    assert first.shape[0] == len(config.preservation.control_prompt_list) * 2
    monkeypatch.setattr(evaluator, "control_features",
                        lambda: pytest.fail("drew the base model's control images twice"))
    assert torch.equal(preserve.base_control(config, evaluator, CPU, torch.float32), first)
    assert preserve.base_control(replace(config, preservation=PreservationSpec()), evaluator,
                                 CPU, torch.float32) is None


def test_dop_target_is_the_base_models_prediction(preserving_config, tiny_model_dir) -> None:
    config = preserving_config()
    base_unet = load_components("tiny", cache_dir=tiny_model_dir.parent).unet
    unet = load_components("tiny", cache_dir=tiny_model_dir.parent).unet
    trainable = attach_lora(unet, config.params)
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero: give the adapter an effect
        for p in trainable:
            p.add_(torch.randn_like(p) * 0.1)
    torch.manual_seed(1)
    batch = add_noise(torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32),
                      DDPMScheduler(num_train_timesteps=1000), TrainSpec())
    text = torch.randn(2, 77, 32)
    dop = preserve.dop_batch(batch, text, unet, weight=3.0)
    with torch.no_grad():
        expected = base_unet(batch.noisy, batch.timesteps, text, return_dict=False)[0]
        with_lora = unet(batch.noisy, batch.timesteps, text, return_dict=False)[0]
    assert torch.allclose(dop.target, expected, atol=1e-5)
    assert not torch.allclose(with_lora, expected, atol=1e-3)  # the adapter is back on
    assert dop.preservation and dop.weight == 3.0 and not dop.target.requires_grad
    assert torch.equal(dop.noisy, batch.noisy) and torch.equal(dop.text, text)


@pytest.mark.parametrize("mode", ["off", "on"])
def test_a_preservation_term_adds_weight_times_its_gradient(tiny_model_dir, mode) -> None:
    unet = load_components("tiny", cache_dir=tiny_model_dir.parent).unet
    from trials.parameters import HyperParams
    trainable = attach_lora(unet, HyperParams(4, 4.0, 1e-3, 1, "attn"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn_like(p) * 0.1)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    torch.manual_seed(2)
    inst = add_noise(torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32), scheduler, TrainSpec())
    other = add_noise(torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32), scheduler, TrainSpec())
    pres = NoisedBatch(other.noisy, other.timesteps, other.text, other.target, weight=2.5,
                       preservation=True)

    def grads(batches: list[NoisedBatch]) -> tuple[list[float], list[torch.Tensor]]:
        for p in trainable:
            p.grad = None
        acc = Accumulator(unet, scheduler, TrainSpec(), CPU, torch.float32, lambda x: x, mode)
        losses = acc.backward(batches, step=1)
        return losses + acc.preservation_losses, [p.grad.clone() for p in trainable]

    both_losses, both = grads([inst, pres])
    inst_losses, only_inst = grads([inst])
    (pres_loss,), only_pres = grads([replace(pres, preservation=False, weight=1.0)])
    assert both_losses == pytest.approx([inst_losses[0], pres_loss], rel=1e-5)
    for g, a, b in zip(both, only_inst, only_pres, strict=True):
        assert torch.allclose(g, a + 2.5 * b, atol=1e-6)


@pytest.mark.parametrize("method", ["dop", "prior"])
def test_a_preserving_trial_reports_control_figures_and_its_loss(preserving_config, method
                                                                 ) -> None:
    config = preserving_config(max_train_steps=3, eval={"every_steps": 3})
    config = replace(config, params=replace(config.params, preservation=method,
                                            preservation_weight=2.0))
    rungs = []
    run_trial(config, lambda step, metrics, ckpt: rungs.append(metrics) or False)
    (rung,) = rungs
    assert rung.preservation == method and rung.preservation_weight == 2.0
    assert rung.preservation_loss > 0
    assert len(rung.control_per_prompt) == 3
    assert 0 < rung.drift <= 100.001 and rung.leak is not None
    assert (Path(config.output_dir) / "step-000003" / "control.png").is_file()


def test_a_caption_without_the_trigger_stops_a_preserving_trial(preserving_config, tmp_path
                                                                ) -> None:
    import shutil
    folder = tmp_path / "data"
    shutil.copytree(preserving_config().data.train_dir, folder)
    meta = folder / "metadata.jsonl"
    lines = meta.read_text().splitlines()
    lines[1] = lines[1].replace("Hyundai ", "")
    meta.write_text("\n".join(lines) + "\n")
    config = preserving_config(train_dir=folder)
    config = replace(config, params=replace(config.params, preservation="dop"))
    with pytest.raises(ValueError, match=r"metadata\.jsonl line 2: caption .* does not contain "
                                         r"the trigger 'Hyundai'"):
        run_trial(config, lambda *a: False)
