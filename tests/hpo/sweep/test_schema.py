"""The sweep file derived from its one definition: the document round trip, best.yaml read back
by the trial's loader, the shipped JSON Schema and reference page."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from hpo.sweep import schema
from hpo.sweep.spec import Sweep, load_sweep
from tests.sweep_files import REPO
from trials import settings
from trials.config import load_trial_config
from trials.validation import ConfigError

SHIPPED = sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _at_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the shipped sweeps name paths relative to the checkout


def _write(tmp_path: Path, doc: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_load_of_the_document_is_the_sweep(path: Path, tmp_path: Path) -> None:
    sweep = load_sweep(path)
    again = load_sweep(_write(tmp_path, schema.document(sweep)))
    assert dataclasses.replace(again, source=sweep.source) == sweep


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_trial_loader_reads_the_sections_back(path: Path, tmp_path: Path) -> None:
    # What best.yaml writes (the shared sections, every parameter fixed) is one trial's config.
    sweep = load_sweep(path)
    values = {p.name: (p.grid() or (p.low,))[0] for p in sweep.parameters}
    expected = sweep.trial_config(values, output_dir=tmp_path / "o", cache_dir=tmp_path / "c")
    doc = {k: v for k, v in schema.document(sweep).items()
           if k in ("name", "model", "data", "train", "eval", "preservation")}
    doc["parameters"] = {name: {"value": settings.plain(v)} for name, v in values.items()}
    config = load_trial_config(_write(tmp_path, doc), output_dir=tmp_path / "o",
                               cache_dir=tmp_path / "c")
    # A racing sweep sets how its trials draw (derived, never written); best.yaml draws at once.
    assert config.eval == dataclasses.replace(expected.eval, chunk_prompts=None)
    assert config.params == expected.params
    assert config == dataclasses.replace(expected, eval=config.eval)


def test_a_value_that_would_read_back_as_another_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Clip:
        norm: float | None = settings.setting(1.0, doc="clip norm; 0: off")

    with pytest.raises(ValueError, match="declare a writer"):
        settings.dump(Clip(norm=None))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    shipped = json.loads(schema.SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(shipped)
    return jsonschema.Draft202012Validator(shipped)


def test_the_shipped_schema_and_reference_are_current() -> None:
    assert schema.SCHEMA_FILE.read_text(encoding="utf-8") == schema.render_schema(), \
        "stale: run python -m hpo.sweep.schema"
    assert schema.REFERENCE_FILE.read_text(encoding="utf-8") == schema.reference(), \
        "stale: run python -m hpo.sweep.schema"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_schema_accepts_the_shipped_sweeps_and_names_itself(path: Path, validator) -> None:
    assert path.read_text(encoding="utf-8").startswith(
        "# yaml-language-server: $schema=sweep.schema.json\n")
    validator.validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_schema_accepts_the_written_document(path: Path, validator) -> None:
    validator.validate(json.loads(json.dumps(schema.document(load_sweep(path)))))


@pytest.mark.parametrize(("where", "key", "value"), [
    ((), "learning_rate", 1e-4),                       # a parameter at the top
    (("eval",), "prompt", "x.txt"),                    # a misspelt key
    (("train",), "seed", -1),                          # out of range
    (("train",), "mixed_precision", "fp8"),            # not allowed
    (("data", "synthetic"), "colour", "red"),          # nested
    (("preservation", "require"), "leak", "maybe"),
    (("parameters", "rank"), "value", 4),              # value and values together
])
def test_the_schema_rejects_what_the_loader_rejects(where, key, value, validator,
                                                    tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text(encoding="utf-8"))
    node = doc
    for part in where:
        node = node.setdefault(part, {})
    node[key] = value
    assert list(validator.iter_errors(doc))
    with pytest.raises(ConfigError):
        load_sweep(_write(tmp_path, doc))


def test_every_key_of_the_definition_is_in_the_reference() -> None:
    page = schema.reference()
    for key, cls, _ in schema.SECTIONS:
        if cls is None:
            continue
        for name in settings.file_keys(cls):
            assert f"`{key}.{name}`" in page, f"{key}.{name}"


def test_a_sweep_field_without_a_declaration_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Loose:
        size: int = 3

    with pytest.raises(TypeError, match="without setting"):
        list(settings.declared(Loose))
    assert isinstance(Sweep.__dataclass_fields__["eval"].metadata["setting"],
                      settings.Setting)


def test_the_trial_loader_accepts_the_sections_the_schema_lays_out() -> None:
    from trials.config import TOP_LEVEL_KEYS

    laid_out = {key for key, _, _ in schema.SECTIONS} | {"name", "result"}
    assert set(TOP_LEVEL_KEYS) == laid_out
    assert set(schema.json_schema()["properties"]) == laid_out


@pytest.mark.parametrize(("section", "doc", "key"), [
    ("early_terminate", {"type": "asha"}, "early_terminate.grace_steps"),
    ("eval", {"images_per_prompt": 2}, "eval.prompts"),
])
def test_a_required_key_left_out_is_named(section: str, doc: dict, key: str,
                                          tmp_path: Path) -> None:
    full = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text(encoding="utf-8"))
    full[section] = doc
    with pytest.raises(ConfigError, match=rf": {key}: is required$"):
        load_sweep(_write(tmp_path, full))


@pytest.mark.parametrize(("change", "message"), [
    # An explicit null would silently read as the default (a new user's finding).
    (("eval", "inference_steps", None), r"eval\.inference_steps: is null; give a value, or "
     r"leave the key out for its default \(25\)"),
    (("train", "max_grad_norm", None), r"train\.max_grad_norm: is null"),
    # A key in the wrong section says where it belongs.
    (("eval", "noise_offset", 0.1), r"eval\.noise_offset: unknown key \(did you mean "
     r"train\.noise_offset\?\)"),
    # best.yaml given to the sweep.
    ((None, "result", {"trial": 3}), r"result: is best\.yaml's result: rerun that trial with "
     r"python -m trials\.train"),
])
def test_what_a_new_user_tripped_over_is_one_line(change, message, tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text(encoding="utf-8"))
    section, key, value = change
    (doc if section is None else doc[section])[key] = value
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, doc))


def test_a_null_key_whose_default_is_none_means_the_default(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text(encoding="utf-8"))
    doc["train"]["snr_gamma"] = None
    doc["eval"]["width"] = None
    # An optional feature set to null is off, as the README's "omit: no early stop" says.
    doc["early_terminate"] = None
    sweep = load_sweep(_write(tmp_path, doc))
    assert sweep.train.snr_gamma is None and sweep.eval.width is None
    assert sweep.early_terminate is None
