"""Tests for hpo.sweep.spec: reading a sweep file, and the exact one-line message for each
mistake."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo.sweep.spec import Parameter, Sweep, load_sweep
from tests.sweep_files import DELETE, REPO, apply, tiny_doc
from trials.parameters import HyperParams
from trials.validation import ConfigError


@pytest.fixture
def make_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write the tiny sweep, changed, as ``sweep.yaml`` in tmp_path (also the cwd)."""
    monkeypatch.chdir(tmp_path)

    def make(changes: dict[str, Any] | None = None, *, text: str | bytes | None = None,
             prompts: str | bytes = "# held out\n\na red car\n  a blue car  \n") -> Path:
        doc = apply(tiny_doc(), {"eval.prompts": "prompts.txt", "data.train_dir": "data"})
        apply(doc, changes or {})
        if isinstance(prompts, bytes):
            (tmp_path / "prompts.txt").write_bytes(prompts)
        else:
            (tmp_path / "prompts.txt").write_text(prompts, encoding="utf-8")
        if text is None:
            text = yaml.safe_dump(doc, sort_keys=False)
        path = Path("sweep.yaml")
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return make


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def lr(**spec: Any) -> dict[str, Any]:
    return {"parameters.learning_rate": spec}


def rank(**spec: Any) -> dict[str, Any]:
    return {"parameters.rank": spec}


CASES = [
    # wrong types
    ({"eval.guidance_scale": "high"}, "eval.guidance_scale: must be a number (got 'high')"),
    (lr(distribution="uniform", min="small", max=1e-3),
     "parameters.learning_rate.min: must be a number (got 'small')"),
    ({"train": [1, 2]}, "train: must be a mapping (got a list)"),
    ({"parameters.rank": [2, 4]}, "parameters.rank: must be a mapping (got a list)"),
    ({"train.seed": True}, "train.seed: must be an integer (got true)"),
    ({"eval.images_per_prompt": 2.5}, "eval.images_per_prompt: must be an integer (got 2.5)"),
    ({"data.center_crop": "yes"}, "data.center_crop: must be true or false (got 'yes')"),
    ({"method": [1]},
     "method: must be one of tpe, random, grid, nsga2, or a mapping with type and seed "
     "(got a list)"),
    ({"name": "my sweep"},
     "name: may use letters and digits (any script), '-', '_' and '.', at most 100 bytes as "
     "UTF-8, not '.' or '..' (got 'my sweep': ' ' is not allowed)"),
    # ranges and distributions
    (lr(distribution="uniform", min=1e-3, max=1e-4),
     "parameters.learning_rate.max: must be > min (0.001) (got 0.0001)"),
    (lr(distribution="uniform", min=2e-4, max=2e-4),
     "parameters.learning_rate.max: must be > min (0.0002) (got 0.0002)"),
    (lr(distribution="log_uniform_values", min=0, max=1e-3),
     "parameters.learning_rate.min: must be > 0 for log_uniform_values (got 0)"),
    (lr(distribution="uniform", min=-0.0001, max=1e-3),
     "parameters.learning_rate.min: must be > 0 (got -0.0001)"),
    (rank(values=[]), "parameters.rank.values: must be a non-empty list (got an empty list)"),
    (rank(values=[2, 4, 2]), "parameters.rank.values[2]: must not repeat a value (got 2 again)"),
    (rank(values=[2, "x"]), "parameters.rank.values[1]: must be an integer (got 'x')"),
    ({"parameters.target_modules": {"value": "cross_atn"}},
     "parameters.target_modules.value: unknown preset 'cross_atn'; presets: cross_attn, attn, "
     "attn_ff, or a list of module names (did you mean 'cross_attn'?)"),
    ({"parameters.target_modules": {"values": ["attn", ["to_q", "bad name"]]}},
     "parameters.target_modules.values[1]: module names must be dotted identifiers "
     "(got 'bad name')"),
    ({"parameters.target_modules": {"distribution": "uniform", "min": 1, "max": 2}},
     "parameters.target_modules.distribution: target_modules takes value or values, "
     "not a distribution"),
    (lr(distribution="log_uniform", min=1e-4, max=1e-3),
     "parameters.learning_rate.distribution: must be one of uniform, log_uniform_values, "
     "int_uniform, q_uniform (got 'log_uniform') (did you mean 'log_uniform_values'?)"),
    (lr(distribution="unifrom", min=1e-4, max=1e-3),
     "parameters.learning_rate.distribution: must be one of uniform, log_uniform_values, "
     "int_uniform, q_uniform (got 'unifrom') (did you mean 'uniform'?)"),
    (rank(distribution="q_uniform", min=2, max=8), "parameters.rank.q: is required"),
    (rank(distribution="q_uniform", min=2, max=8, q=10),
     "parameters.rank.q: must be <= max - min (6) (got 10)"),
    (rank(distribution="q_uniform", min=2, max=8, q=0), "parameters.rank.q: must be > 0 (got 0)"),
    (rank(distribution="q_uniform", min=2, max=8, q=1.5),
     "parameters.rank.q: must be a whole number for rank (got 1.5)"),
    (rank(distribution="q_uniform", min=2, max=8, q=4),
     "parameters.rank.q: must divide max - min (6) into whole steps (got 4)"),
    (rank(distribution="int_uniform", min=2, max=8, q=2),
     "parameters.rank.q: only q_uniform takes q (distribution is int_uniform)"),
    (rank(distribution="uniform", min=2, max=8.5),
     "parameters.rank.max: must be a whole number for rank (got 8.5)"),
    (lr(distribution="int_uniform", min=0.5, max=1),
     "parameters.learning_rate.min: must be a whole number for int_uniform (got 0.5)"),
    (rank(value=4, values=[4, 8]),
     "parameters.rank: needs exactly one of value, values or distribution (got value, values)"),
    (rank(), "parameters.rank: needs exactly one of value, values or distribution"),
    (rank(valeus=[2, 4]), "parameters.rank.valeus: unknown key (did you mean 'values'?)"),
    ({"parameters.rank": DELETE},
     "parameters.rank: is required (a value, values or distribution)"),
    # unknown keys
    ({"paramters": {}}, "paramters: unknown key (did you mean 'parameters'?)"),
    ({"train.learning_rat": 1e-4},
     "train.learning_rat: unknown key (did you mean parameters.learning_rate?)"),
    ({"train.max_train_steps": 100},
     "train.max_train_steps: unknown key (did you mean parameters.max_train_steps?)"),
    ({"train.epochs": 1},
     "train.epochs: unknown key (allowed: train_batch_size, gradient_accumulation_steps, "
     "lr_scheduler, lr_warmup_steps, mixed_precision, seed, max_grad_norm, snr_gamma, "
     "noise_offset, gradient_checkpointing, prediction_type, fused_accumulation, "
     "caption_dropout)"),
    ({"method": {"type": "tpe", "sed": 1}}, "method.sed: unknown key (did you mean 'seed'?)"),
    ({"parameters.learning_rat": {"value": 1e-4}},
     "parameters.learning_rat: unknown parameter (did you mean 'learning_rate'?); tunable: "
     "rank, lora_alpha, learning_rate, max_train_steps, target_modules, adapter, "
     "caption_dropout, preservation, preservation_weight"),
    # evaluation rungs and early termination
    ({"eval.every_steps": 35},
     "eval.every_steps: must be <= the smallest max_train_steps (30) so every trial is scored "
     "before it ends (got 35)"),
    ({"parameters.max_train_steps": {"values": [60, 80]}, "eval.every_steps": 1,
      "early_terminate.grace_steps": 1},
     "eval.every_steps: gives 80 evaluation rungs for 80 steps; at most 50 "
     "(raise every_steps to >= 2)"),
    ({"early_terminate.grace_steps": 20},
     "early_terminate.grace_steps: must be a multiple of eval.every_steps (15), since trials "
     "report only at rungs (got 20)"),
    ({"early_terminate.grace_steps": 90},
     "early_terminate.grace_steps: must be <= the largest max_train_steps (60) (got 90)"),
    ({"early_terminate.type": "hyperband"},
     "early_terminate.type: must be one of asha (got 'hyperband')"),
    # eval, resources, train, data, parameter values
    ({"eval.images_per_prompt": 0}, "eval.images_per_prompt: must be >= 1 (got 0)"),
    ({"resources.gpu_per_trial": 0}, "resources.gpu_per_trial: must be > 0 (got 0)"),
    ({"resources.gpu_per_trial": 1.5},
     "resources.gpu_per_trial: above 1 must be a whole number of GPUs (got 1.5)"),
    ({"resources.cpu_per_trial": 0}, "resources.cpu_per_trial: must be > 0 (got 0)"),
    ({"train.mixed_precision": "fp32"},
     "train.mixed_precision: must be one of no, fp16, bf16 (got 'fp32')"),
    ({"train.mixed_precision": False},
     "train.mixed_precision: must be one of no, fp16, bf16 (got false; quote words like "
     "\"no\", since YAML reads a bare no as false)"),
    ({"data.resolution": 30}, "data.resolution: must be a multiple of 8 (got 30)"),
    (lr(value=1.5), "parameters.learning_rate.value: must be <= 1 (got 1.5)"),
    (rank(value=0), "parameters.rank.value: must be >= 1 (got 0)"),
    ({"method": {"type": "grid"}},
     "parameters.learning_rate.distribution: method grid needs values, int_uniform or "
     "q_uniform (got log_uniform_values)"),
    ({"method": "bayes"}, "method: must be one of tpe, random, grid, nsga2 (got 'bayes')"),
    ({"parameters.lora_alpha": {"value": "twice rank"}},
     "parameters.lora_alpha.value: must be a number, 'rank' or 'N*rank' (got 'twice rank')"),
    ({"parameters.lora_alpha": {"value": "0*rank"}},
     "parameters.lora_alpha.value: must be 'rank' or 'N*rank' with N > 0 (got '0*rank')"),
    ({"parameters.lora_alpha": {"value": 0}},
     "parameters.lora_alpha.value: must be > 0 (got 0)"),
]


@pytest.mark.parametrize(("changes", "expected"), CASES, ids=[c[1][:60] for c in CASES])
def test_mistake_message(make_sweep: Callable[..., Path], changes: dict[str, Any],
                         expected: str) -> None:
    assert error_of(make_sweep(changes)) == f"sweep.yaml: {expected}"


@pytest.mark.parametrize(("text", "expected"), [
    (b"- a\n- b\n", "must be a YAML mapping of sections (got a list)"),
    (b"", "must be a YAML mapping of sections (got null)"),
    (b"name: x\nmodel:\n  name: [tiny\ndata: {}\n",
     "line 4: invalid YAML (expected ',' or ']', but got ':')"),
    (b"name: x\n\tmodel: {}\n",
     "line 2: invalid YAML (found character '\\t' that cannot start any token)"),
    (b"name: x\nmodel:\n  name: tiny\n  name: other\n",
     "line 4: invalid YAML (duplicate key 'name')"),
    (b"name: caf\xe9\n", "not UTF-8 text (invalid continuation byte at byte 9)"),
], ids=["list", "empty", "unclosed", "tab", "duplicate-key", "latin-1"])
def test_unreadable_file(make_sweep: Callable[..., Path], text: bytes, expected: str) -> None:
    assert error_of(make_sweep(text=text)) == f"sweep.yaml: {expected}"


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: file not found"


@pytest.mark.parametrize(("prompts", "expected"), [
    ("# only a comment\n\n   \n", "prompts file {p} has no prompts"),
    (b"a red car\ncaf\xe9\n", "prompts file {p} is not UTF-8 (byte 13)"),
], ids=["empty", "latin-1"])
def test_bad_prompts_file(make_sweep: Callable[..., Path], tmp_path: Path, prompts: str | bytes,
                          expected: str) -> None:
    path = make_sweep(prompts=prompts)
    p = tmp_path.resolve() / "prompts.txt"
    assert error_of(path) == f"sweep.yaml: eval.prompts: {expected.format(p=p)}"


def test_missing_prompts_file(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    path = make_sweep({"eval.prompts": "nope.txt"})
    assert error_of(path) == (
        f"sweep.yaml: eval.prompts: prompts file not found: {tmp_path.resolve() / 'nope.txt'}")


@pytest.mark.parametrize("name", ["tiny", "hyundai"])
def test_shipped_sweeps_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    sweep = load_sweep(f"sweeps/{name}.yaml")
    assert isinstance(sweep, Sweep)
    assert sweep.method == "tpe"
    assert [p.name for p in sweep.searched] == [
        "rank", "learning_rate", "max_train_steps", "target_modules", "preservation",
        "preservation_weight"]
    assert sweep.preservation.trigger == "Hyundai" and sweep.require is not None
    assert sweep.parameter("lora_alpha") == Parameter("lora_alpha", "value", value="rank")
    assert sweep.eval.prompts == REPO / "sweeps" / "prompts" / f"{name}_heldout.txt"
    assert sweep.eval.prompt_list and not any(p.startswith("#") for p in sweep.eval.prompt_list)
    assert sweep.grid_size() is None  # learning_rate is log-uniform
    if name == "hyundai":
        assert sweep.max_steps == 1000 and sweep.seed == 42
        assert sweep.rungs(400) == [100, 200, 300, 400]
        assert sweep.train.mixed_precision == "fp16" and sweep.resources.cpu_per_trial == 4


def test_tiny_sweep_values(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = load_sweep(make_sweep())
    assert sweep.name == "tiny-demo" and sweep.metric == "clip_score" and sweep.goal == "maximize"
    assert sweep.seed == 0
    assert sweep.data.train_dir == tmp_path.resolve() / "data"
    assert sweep.eval.prompt_list == ("a red car", "a blue car")
    assert sweep.parameter("learning_rate") == Parameter(
        "learning_rate", "log_uniform_values", low=1e-4, high=5e-2)
    assert sweep.parameter("rank").grid() == (2, 4, 8)
    assert sweep.max_steps == 60
    assert sweep.rungs(60) == [15, 30, 45, 60]
    assert sweep.rungs(40) == [15, 30, 40]
    assert sweep.rungs(5) == [5]
    assert sweep.early_terminate is not None and sweep.early_terminate.grace_steps == 15
    assert (sweep.resources.gpu_per_trial, sweep.resources.cpu_per_trial) == (1.0, 1.0)


def test_unquoted_exponent_is_a_number(make_sweep: Callable[..., Path]) -> None:
    # PyYAML reads 1e-4 (no dot) as a string; it is still accepted as a number.
    text = yaml.safe_dump(apply(tiny_doc(), {"eval.prompts": "prompts.txt"}), sort_keys=False)
    text = text.replace("min: 0.0001", "min: 1e-4").replace("max: 0.05", "max: 5e-2")
    assert "min: 1e-4" in text and "max: 5e-2" in text
    param = load_sweep(make_sweep(text=text)).parameter("learning_rate")
    assert (param.low, param.high) == (1e-4, 5e-2)


@pytest.mark.parametrize(("gpu", "expected"), [(0.5, 0.5), (2, 2.0)])
def test_gpu_fraction_or_whole(make_sweep: Callable[..., Path], gpu: float,
                               expected: float) -> None:
    sweep = load_sweep(make_sweep({"resources.gpu_per_trial": gpu}))
    assert sweep.resources.gpu_per_trial == expected


@pytest.mark.parametrize(("method", "expected"), [
    ({"type": "random", "seed": 7}, ("random", 7)),
    ({"type": "random"}, ("random", 42)),  # no method seed: train.seed
    ("random", ("random", 42)),
    (DELETE, ("tpe", 42)),
])
def test_method_and_seed(make_sweep: Callable[..., Path], method: Any,
                         expected: tuple[str, int]) -> None:
    sweep = load_sweep(make_sweep({"method": method}))
    assert (sweep.method, sweep.seed) == expected


def test_explicit_target_modules(make_sweep: Callable[..., Path]) -> None:
    sweep = load_sweep(make_sweep({"parameters.target_modules": {
        "values": [["to_q", "to_v"], "attn", "to_k,ff.net.2"]}}))
    assert sweep.parameter("target_modules").values == ("to_q,to_v", "attn", "to_k,ff.net.2")


def test_grid_method(make_sweep: Callable[..., Path]) -> None:
    sweep = load_sweep(make_sweep({"method": "grid", **lr(values=[1e-4, 2e-4])}))
    assert sweep.grid_size() == 3 * 2 * 3 * 3 * 1


@pytest.mark.parametrize(("name", "spec", "grid"), [
    ("rank", {"distribution": "int_uniform", "min": 2, "max": 5}, (2, 3, 4, 5)),
    ("rank", {"distribution": "uniform", "min": 2, "max": 4}, (2, 3, 4)),
    ("rank", {"distribution": "q_uniform", "min": 4, "max": 16, "q": 4}, (4, 8, 12, 16)),
    ("max_train_steps", {"distribution": "q_uniform", "min": 20, "max": 40, "q": 10},
     (20, 30, 40)),
    ("learning_rate", {"distribution": "q_uniform", "min": 1e-4, "max": 5e-4, "q": 1e-4},
     (0.0001, 0.0002, 0.0003, 0.0004, 0.0005)),
    ("learning_rate", {"values": [1e-4, "3e-4"]}, (0.0001, 0.0003)),
    ("learning_rate", {"distribution": "uniform", "min": 1e-4, "max": 5e-4}, None),
    ("learning_rate", {"value": 1e-4}, (0.0001,)),
])
def test_parameter_grid(make_sweep: Callable[..., Path], name: str, spec: dict[str, Any],
                        grid: tuple[Any, ...] | None) -> None:
    param = load_sweep(make_sweep({f"parameters.{name}": spec})).parameter(name)
    assert param.grid() == grid
    if grid is not None:
        assert [type(v) for v in param.grid()] == [type(v) for v in grid]


@pytest.mark.parametrize(("alpha", "expected"), [
    ("rank", 8.0), ("2*rank", 16.0), ("0.5 * rank", 4.0), (12, 12.0), (DELETE, 8.0)])
def test_lora_alpha_rules(make_sweep: Callable[..., Path], tmp_path: Path, alpha: Any,
                          expected: float) -> None:
    change = DELETE if alpha is DELETE else {"value": alpha}
    sweep = load_sweep(make_sweep({"parameters.lora_alpha": change}))
    config = sweep.trial_config(
        {"rank": 8, "learning_rate": 3e-4, "max_train_steps": 30, "target_modules": "attn"},
        output_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert config.params == HyperParams(
        rank=8, lora_alpha=expected, learning_rate=3e-4, max_train_steps=30,
        target_modules="attn")


def test_trial_config_merges_fixed_values(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = load_sweep(make_sweep({
        "parameters.target_modules": {"value": "attn_ff"},
        "parameters.lora_alpha": {"values": ["rank", "2*rank"]}}))
    assert [p.name for p in sweep.searched] == [
        "rank", "lora_alpha", "learning_rate", "max_train_steps"]
    config = sweep.trial_config(
        {"rank": 4, "lora_alpha": "2*rank", "learning_rate": 1e-4, "max_train_steps": 20},
        output_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert config.params == HyperParams(4, 8.0, 1e-4, 20, "attn_ff")
    assert config.output_dir == tmp_path / "out" and config.cache_dir == tmp_path / "cache"
    assert config.train == sweep.train and config.eval == sweep.eval
