"""``python -m trials.train``: one LoRA from a sweep file, without Ray."""

from __future__ import annotations

import json

import yaml

from tests.sweep_files import REPO, apply, tiny_doc
from trials.train.cli import main


def _sweep(tmp_path, prompts=None):
    doc = apply(tiny_doc(), {
        "data.train_dir": str(tmp_path / "data"), "data.synthetic.n_images": 4,
        "eval.prompts": str(prompts or REPO / "sweeps/prompts/tiny_heldout.txt"),
        "eval.images_per_prompt": 1, "eval.inference_steps": 2})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_trains_and_scores_from_a_sweep_file(tiny_model_dir, tmp_path, capsys,
                                             caplog) -> None:
    sweep = _sweep(tmp_path)
    doc = yaml.safe_load(sweep.read_text())
    doc["train"]["mixed_precision"] = "fp16"  # on this CPU the trial runs fp32
    sweep.write_text(yaml.safe_dump(doc), encoding="utf-8")
    code = main([str(sweep), "--set", "rank=2", "--set", "learning_rate=1e-3",
                 "--set", "max_train_steps=10", "--set", "target_modules=cross_attn",
                 "--set", "lora_alpha=8",
                 "--out", str(tmp_path / "out"), "--cache", str(tiny_model_dir.parent)])
    assert code == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["params"]["rank"] == 2 and result["best"]["step"] == 10
    assert result["params"]["lora_alpha"] == 8
    assert (tmp_path / "out" / "step-000010" / "pytorch_lora_weights.safetensors").is_file()
    out, err = capsys.readouterr()
    assert "clip_score" in out and "samples/s" in out  # issue 11: throughput is printed
    # Issue 11: an override of a fixed value is said, and the precision that ran is recorded.
    assert "note: --set lora_alpha=8 replaces the file's fixed value 'rank'" in err
    assert result["best"]["precision"] == "no"
    assert "mixed_precision fp16 was asked for, but on cpu the trial runs fp32" in caplog.text


def test_warmup_longer_than_the_trial_is_refused(tiny_model_dir, tmp_path, capsys) -> None:
    sweep = _sweep(tmp_path)
    doc = yaml.safe_load(sweep.read_text())
    doc["train"].update(lr_scheduler="linear", lr_warmup_steps=50)
    sweep.write_text(yaml.safe_dump(doc), encoding="utf-8")
    code = main([str(sweep), "--set", "rank=2", "--set", "learning_rate=1e-3",
                 "--set", "max_train_steps=10", "--set", "target_modules=cross_attn",
                 "--cache", str(tiny_model_dir.parent)])
    assert code == 2
    assert "train.lr_warmup_steps: must be <= max_train_steps (10)" in capsys.readouterr().err


def test_a_searched_parameter_without_a_value_is_one_line_error(tiny_model_dir, tmp_path,
                                                                  capsys) -> None:
    code = main([str(_sweep(tmp_path)), "--cache", str(tiny_model_dir.parent)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert err.endswith(
        "parameters.learning_rate: is searched, not fixed; give it with --set learning_rate=VALUE")


def test_warns_when_a_heldout_prompt_is_a_training_caption(tiny_model_dir, tmp_path,
                                                           capsys) -> None:
    from trials.data.synthetic import make_car_dataset

    make_car_dataset(tmp_path / "data", n_images=4, size=48, seed=0)
    caption = json.loads((tmp_path / "data" / "metadata.jsonl").read_text().splitlines()[0])
    text = caption["text"] if isinstance(caption["text"], str) else caption["text"][0]
    prompts = tmp_path / "leaky.txt"
    prompts.write_text(text + "\n", encoding="utf-8")
    code = main([str(_sweep(tmp_path, prompts)), "--set", "rank=2", "--set",
                 "learning_rate=1e-3", "--set", "max_train_steps=10", "--set",
                 "target_modules=attn", "--out", str(tmp_path / "p"),
                 "--cache", str(tiny_model_dir.parent)])
    assert code == 0
    assert "held-out prompt(s) equal a training caption" in capsys.readouterr().err
