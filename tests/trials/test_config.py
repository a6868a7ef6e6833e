"""Tests for trials.config: one trial's config from a sweep file plus --set overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sweep_files import tiny_doc
from trials.config import TrialConfig, load_trial_config, parse_overrides, read_prompts
from trials.parameters import HyperParams
from trials.validation import ConfigError

REPO = Path(__file__).resolve().parents[2]
# The four searched parameters of sweeps/tiny.yaml (lora_alpha is fixed to rank there).
SET = ["rank=8", "learning_rate=1e-4", "max_train_steps=30", "target_modules=attn"]


@pytest.fixture
def make_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write the tiny sweep as ``sweep.yaml`` in tmp_path (also the cwd), with changes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("# held out\na red car\n\na blue car\n",
                                          encoding="utf-8")

    def make(parameters: dict[str, Any] | None = None, **sections: Any) -> Path:
        doc = tiny_doc()  # the shipped tiny sweep, without its preservation
        doc["eval"]["prompts"] = "prompts.txt"
        if parameters is not None:
            doc["parameters"] = parameters
        doc.update(sections)
        path = Path("sweep.yaml")
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    return make


def load(path: Path, pairs: list[str], tmp_path: Path) -> TrialConfig:
    return load_trial_config(path, parse_overrides(pairs, path), output_dir=tmp_path / "out",
                             cache_dir=tmp_path / "cache")


def error_of(path: Path, pairs: list[str], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, pairs, tmp_path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_tiny_with_overrides(make_file: Callable[..., Path], tmp_path: Path) -> None:
    config = load(make_file(), SET, tmp_path)
    assert config.params == HyperParams(
        rank=8, lora_alpha=8.0, learning_rate=1e-4, max_train_steps=30, target_modules="attn")
    assert config.model.name == "toyworld"
    assert config.data.train_dir == tmp_path.resolve() / "runs" / "toyworld-data"
    assert config.data.resolution == 32 and config.data.synthetic is not None
    assert config.train.mixed_precision == "no" and config.train.seed == 42
    assert config.eval.prompt_list == ("a red car", "a blue car")
    assert config.eval.clip_pretrained is None  # the toy world's CLIP has no pretrained tag
    assert config.output_dir == tmp_path / "out" and config.cache_dir == tmp_path / "cache"


def test_overrides_replace_fixed_values(make_file: Callable[..., Path], tmp_path: Path) -> None:
    config = load(make_file(), [*SET[:3], "target_modules=to_q,to_v", "lora_alpha=2*rank"],
                  tmp_path)
    assert config.params.lora_alpha == 16.0
    assert config.params.target_modules == "to_q,to_v"


def test_shipped_sweep_with_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    config = load(Path("sweeps/hyundai.yaml"),
                  [*SET, "preservation=dop", "preservation_weight=3"], tmp_path)
    assert config.model.name == "sd-legacy/stable-diffusion-v1-5"
    assert config.eval.images_per_prompt == 1 and config.params.rank == 8  # a rung's images
    assert (config.preservation_method, config.preservation_weight) == ("dop", 3.0)
    assert len(config.preservation.control_prompt_list) == 26


def test_best_yaml_needs_no_overrides(make_file: Callable[..., Path], tmp_path: Path) -> None:
    # An exported best.yaml: every parameter fixed, plus a result section.
    path = make_file({
        "rank": {"value": 4}, "lora_alpha": {"value": 6}, "learning_rate": {"value": "3e-4"},
        "max_train_steps": {"value": 20}, "target_modules": {"value": ["to_k", "to_v"]},
    }, result={"clip_score": 0.3})
    config = load(path, [], tmp_path)
    assert config.params == HyperParams(4, 6.0, 3e-4, 20, "to_k,to_v")


def test_alpha_defaults_to_rank(make_file: Callable[..., Path], tmp_path: Path) -> None:
    path = make_file({"rank": {"value": 16}, "learning_rate": {"value": 1e-4},
                      "max_train_steps": {"value": 20}, "target_modules": {"value": "attn"}})
    assert load(path, [], tmp_path).params.lora_alpha == 16.0


TUNABLE = ("tunable: rank, lora_alpha, learning_rate, max_train_steps, target_modules, "
            "adapter, caption_dropout, preservation, preservation_weight")


@pytest.mark.parametrize(("parameters", "pairs", "expected"), [
    (None, [p for p in SET if not p.startswith("learning_rate")],
     "parameters.learning_rate: is searched, not fixed; give it with --set learning_rate=VALUE"),
    (None, [], "parameters.rank: is searched, not fixed; give it with --set rank=VALUE"),
    (None, [*SET, "lernrate=1e-4"],
     f"--set lernrate: unknown parameter (did you mean 'learning_rate'?); {TUNABLE}"),
    (None, [*SET[1:], "rank=many"], "--set rank: must be an integer (got 'many')"),
    (None, [*SET[:3], "target_modules=atn"],
     "--set target_modules: unknown preset 'atn'; presets: cross_attn, attn, attn_ff, "
     "or a list of module names (did you mean 'attn'?)"),
    (None, [*SET[1:], "rank=2000"], "--set rank: must be <= 1024 (got 2000)"),
    ({"rank": {"value": 4}}, SET[1:3],
     "parameters.target_modules: is required (a value, or --set target_modules=VALUE)"),
    ({"rank": {"value": 0}}, SET[1:],
     "parameters.rank.value: must be >= 1 (got 0)"),
    ({"rank": {"value": 4, "vaule": 8}}, SET,
     "parameters.rank.vaule: unknown key (did you mean 'value'?)"),
    ({"rnak": {"value": 4}}, SET,
     f"parameters.rnak: unknown parameter (did you mean 'rank'?); {TUNABLE}"),
], ids=["searched", "searched-first", "unknown-set", "bad-set", "bad-preset", "rank-too-big",
        "required", "bad-value", "typo-key", "typo-name"])
def test_trial_config_errors(make_file: Callable[..., Path], tmp_path: Path,
                             parameters: dict[str, Any] | None, pairs: list[str],
                             expected: str) -> None:
    path = make_file(parameters)
    assert error_of(path, pairs, tmp_path) == f"sweep.yaml: {expected}"


def test_unknown_top_level_key(make_file: Callable[..., Path], tmp_path: Path) -> None:
    path = make_file(learning_rate=1e-4)
    assert error_of(path, SET, tmp_path) == (
        "sweep.yaml: learning_rate: unknown key (did you mean parameters.learning_rate?)")


def test_parse_overrides_values() -> None:
    assert parse_overrides([" rank = 8", "learning_rate=1e-4", "target_modules=[to_q, to_v]",
                            "lora_alpha=2*rank"], "f.yaml") == {
        "rank": 8, "learning_rate": "1e-4", "target_modules": ["to_q", "to_v"],
        "lora_alpha": "2*rank"}


@pytest.mark.parametrize(("pairs", "expected"), [
    (["rank"], "--set: expected name=value (got 'rank')"),
    (["=8"], "--set: expected name=value (got '=8')"),
    (["rank="], "--set: expected name=value (got 'rank=')"),
    (["rank=4", "rank=8"], "--set rank: given more than once (got 'rank=8')"),
    (["target_modules=[to_q"],
     "--set target_modules: value must be a YAML scalar or list (expected ',' or ']', but got "
     "'<stream end>') (got '[to_q')"),
], ids=["no-equals", "no-name", "no-value", "twice", "bad-yaml"])
def test_parse_overrides_errors(pairs: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides(pairs, "f.yaml")
    assert str(info.value) == f"f.yaml: {expected}"


def test_read_prompts_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("# a comment\n\n  a red car  \n   # indented comment\na car # not a comment\n",
                    encoding="utf-8")
    assert read_prompts(path, "f.yaml", "eval.prompts") == ("a red car", "a car # not a comment")


@pytest.mark.parametrize(("content", "expected"), [
    (None, "prompts file not found: {p}"),
    ("\n# nothing\n  \n", "prompts file {p} has no prompts"),
    (b"\xff\xfe", "prompts file {p} is not UTF-8 (byte 0)"),
], ids=["missing", "empty", "not-utf8"])
def test_read_prompts_errors(tmp_path: Path, content: str | bytes | None, expected: str) -> None:
    path = tmp_path / "p.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_prompts(path, "f.yaml", "eval.prompts")
    assert str(info.value) == f"f.yaml: eval.prompts: {expected.format(p=path)}"
