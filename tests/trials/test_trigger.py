"""The trigger (trials.trigger) and the preservation section of a config (trials.config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trials.config import load_trial_config
from trials.data.folder import Example
from trials.trigger import control_prompts, has_trigger, remove_trigger, triggerless_captions
from trials.validation import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "expected"), [
    ("a blue Hyundai hatchback, side view facing right, against a blue sky",
     "a blue hatchback, side view facing right, against a blue sky"),
    ("a Hyundai Ioniq 5 in matte gold", "an Ioniq 5 in matte gold"),  # the article follows
    ("an hour with a HYUNDAI sedan", "an hour with a sedan"),  # only the removed one's article
    ("side view of a red Hyundai sedan facing left, Hyundai", "side view of a red sedan facing "
     "left"),
    ("a Hyundai's grille", "a Hyundai's grille"),  # a possessive is another word
])
def test_remove_trigger(text: str, expected: str) -> None:
    assert remove_trigger(text, "Hyundai") == expected


def test_a_multiword_trigger_matches_across_spaces() -> None:
    assert remove_trigger("a Hyundai  Motor car", "Hyundai Motor") == "a car"
    assert has_trigger("HYUNDAI motor", "Hyundai Motor")
    assert not has_trigger("Hyundaimotor", "Hyundai Motor")


def test_control_prompts_keep_order_and_name_a_prompt_without_the_trigger() -> None:
    prompts = ["a red Hyundai sedan", "a blue Hyundai coupe"]
    assert control_prompts(prompts, "Hyundai", "p.txt") == ("a red sedan", "a blue coupe")
    with pytest.raises(ValueError, match=r"p\.txt: prompt 2 \('a blue coupe'\) does not "
                                         r"contain the trigger 'Hyundai'"):
        control_prompts(["a red Hyundai sedan", "a blue coupe"], "Hyundai", "p.txt")


def test_a_caption_without_the_trigger_names_its_metadata_line(tmp_path: Path) -> None:
    ex = [Example(tmp_path / "a.png", "a.png", ("a red Hyundai sedan",), "metadata.jsonl line 1"),
          Example(tmp_path / "b.png", "b.png", ("a Hyundai SUV", "an SUV on a road"),
                  "metadata.jsonl line 2")]
    with pytest.raises(ValueError, match=r"/data: metadata\.jsonl line 2: caption 'an SUV on a "
                                         r"road' of b\.png does not contain the trigger"):
        triggerless_captions(ex, "Hyundai", "/data")
    assert triggerless_captions(ex[:1], "Hyundai", "/data") == ["a red sedan"]


def _config(tmp_path: Path, preservation: dict, prompts: list[str] | None = None) -> Path:
    doc = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text())
    if prompts is not None:
        (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
        doc["eval"]["prompts"] = str(tmp_path / "p.txt")
    doc["preservation"] = preservation
    del doc["parameters"]["preservation"], doc["parameters"]["preservation_weight"]
    for name, spec in doc["parameters"].items():  # every parameter fixed: a trial's config
        if "value" not in spec:
            spec.clear()
            spec["value"] = {"rank": 4, "learning_rate": 1e-3, "max_train_steps": 30,
                             "target_modules": "attn", "preservation": "none",
                             "preservation_weight": 1.0}[name]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _load(path: Path):
    return load_trial_config(path, output_dir=path.parent / "o", cache_dir=path.parent / "c",
                             base_dir=REPO)


def test_control_prompts_are_derived_from_the_held_out_prompts(tmp_path: Path) -> None:
    config = _load(_config(tmp_path, {"trigger": "Hyundai", "method": "dop", "weight": 3}))
    pres = config.preservation
    assert pres.measured and pres.trigger == "Hyundai"
    assert len(pres.control_prompt_list) == len(config.eval.prompt_list) == 48
    assert pres.brand_prompt_list == config.eval.prompt_list
    assert all("Hyundai" not in p for p in pres.control_prompt_list)
    assert pres.control_prompt_list[0] == remove_trigger(config.eval.prompt_list[0], "Hyundai")
    assert (config.preservation_method, config.preservation_weight) == ("dop", 3.0)


def test_an_explicit_control_file_pairs_each_line_with_its_brand_version(tmp_path: Path) -> None:
    (tmp_path / "control.txt").write_text("a red car\n# comment\na blue van\n")
    config = _load(_config(tmp_path, {"trigger": "Hyundai",
                                      "control_prompts": str(tmp_path / "control.txt")}))
    assert config.preservation.control_prompt_list == ("a red car", "a blue van")
    assert config.preservation.brand_prompt_list == ("a red car, Hyundai", "a blue van, Hyundai")


@pytest.mark.parametrize(("preservation", "prompts", "message"), [
    ({"method": "dop"}, None, "preservation.method: needs preservation.trigger"),
    ({"trigger": "Hyundai", "method": "both"}, None, "preservation.method: must be one of"),
    ({"trigger": "  "}, None, "preservation.trigger: must be a non-empty string"),
    ({"trigger": "Hyundai"}, ["a Hyundai sedan", "a plain car"],
     "preservation.trigger: .*prompt 2 \\('a plain car'\\) does not contain the trigger"),
    ({"trigger": "Hyundai", "weight": -1}, None, "preservation.weight: must be >= 0"),
])
def test_bad_preservation_sections_fail_with_one_line(tmp_path: Path, preservation: dict,
                                                      prompts: list[str] | None,
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _load(_config(tmp_path, preservation, prompts))
    assert "\n" not in str(err.value) and "sweep.yaml" in str(err.value)
