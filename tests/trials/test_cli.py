"""``python -m trials.train``: one LoRA from a sweep file, without Ray."""

from __future__ import annotations

import json

import yaml

from tests.sweep_files import REPO, apply, tiny_doc
from trials.cli import main


def _sweep(tmp_path, prompts=None):
    doc = apply(tiny_doc(), {
        "data.train_dir": str(tmp_path / "data"), "data.synthetic.n_images": 4,
        "eval.prompts": str(prompts or REPO / "sweeps/prompts/tiny_heldout.txt"),
        "eval.images_per_prompt": 1, "eval.inference_steps": 2})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_trains_and_scores_from_a_sweep_file(tiny_model_dir, tmp_path, capsys) -> None:
    code = main([str(_sweep(tmp_path)), "--set", "rank=2", "--set", "learning_rate=1e-3",
                 "--set", "max_train_steps=10", "--set", "target_modules=cross_attn",
                 "--out", str(tmp_path / "out"), "--cache", str(tiny_model_dir.parent)])
    assert code == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["params"]["rank"] == 2 and result["best"]["step"] == 10
    assert (tmp_path / "out" / "step-000010" / "pytorch_lora_weights.safetensors").is_file()
    assert "clip_score" in capsys.readouterr().out


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
    from trials.synthetic import make_car_dataset

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
