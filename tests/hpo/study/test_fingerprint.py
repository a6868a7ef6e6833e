"""The fingerprint by construction: the walk over the sweep file's definition.

Every key of every section is either in the fingerprint or declared ``free`` with a reason;
changing a fingerprinted key changes the fingerprint at that key, changing a free one changes
nothing. A new key added to the definition is walked here without editing this file.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.study import fingerprint
from hpo.study.fingerprint_v1 import compute_v1
from hpo.sweep.objectives import Objective
from hpo.sweep.preservation import Require
from hpo.sweep.spec import Parameter, Sweep, load_sweep
from tests.sweep_files import REPO
from trials import settings

CONTENTS = "0" * 64


@pytest.fixture(scope="module")
def shipped(request: pytest.FixtureRequest) -> Sweep:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        return load_sweep(REPO / "sweeps" / "tiny.yaml")


def _base(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(hint) else hint


def leaves(obj: Any, fields: tuple[str, ...] = (), prefix: str = ""
           ) -> list[tuple[tuple[str, ...], str, settings.Setting, Any, Any]]:
    """(field path, fingerprint key, setting, type hint, value) for every declared field,
    into nested sections that are not free."""
    out = []
    for f, s, hint in settings.declared(type(obj)):
        value = getattr(obj, f.name)
        key = prefix + (s.key or f.name)
        kind = _base(hint)
        if dataclasses.is_dataclass(kind) and value is not None and s.free is None:
            out += leaves(value, (*fields, f.name), key + ".")
        out.append(((*fields, f.name), key, s, hint, value))
    return out


def changed(value: Any, hint: Any) -> Any:
    """Another valid-looking value of the same type."""
    kind = _base(hint)
    if kind is bool:
        return not value
    if kind is int:
        return (value or 0) + 8
    if kind is float:
        return (value or 0.0) + 0.5
    if kind is str:
        return (value or "x") + "y"
    if kind is Path:
        return Path("/elsewhere") / "x"
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if item is Parameter:  # a changed search space: the first parameter fixed elsewhere
            first = value[0]
            return (dataclasses.replace(first, kind="value", value=f"{first.value}0",
                                        values=(), low=None, high=None), *value[1:])
        if item is Objective:  # the first objective's goal flipped
            first = value[0]
            goal = "minimize" if first.goal == "maximize" else "maximize"
            return (dataclasses.replace(first, goal=goal), *value[1:])
        return (*(value or ()), item(8) if item is not str else "another prompt")
    if dataclasses.is_dataclass(kind):
        return kind() if value is None else None
    raise AssertionError(f"no change for {hint}")


def with_change(obj: Any, fields: tuple[str, ...], value: Any) -> Any:
    head, *rest = fields
    inner = value if not rest else with_change(getattr(obj, head), tuple(rest), value)
    return dataclasses.replace(obj, **{head: inner})


def test_every_field_of_the_sweep_is_declared(shipped) -> None:
    # declared() raises for a field without setting(): a new field must say whether it counts.
    found = leaves(shipped)
    assert len(found) > 60
    keys = {key for _, key, s, _, _ in found if s.free is None}
    for must in ("data.image_interpolation_mode", "data.aspect_buckets", "eval.width",
                 "eval.merge_lora", "train.fused_accumulation", "preservation.method",
                 "preservation.require", "metric", "parameters", "eval.prompts"):
        assert must in keys, must


def test_each_fingerprinted_key_changes_the_fingerprint_there(shipped) -> None:
    base = fingerprint.compute(shipped, CONTENTS)
    checked = 0
    for fields, key, s, hint, value in leaves(shipped):
        kind = _base(hint)
        if s.free is not None or (dataclasses.is_dataclass(kind) and value is not None):
            continue  # free, or a section: its keys are checked one by one
        other = with_change(shipped, fields, changed(value, hint))
        diff = fingerprint.changed_keys(base, fingerprint.compute(other, CONTENTS))
        assert diff, f"{key}: changing it leaves the fingerprint as it was"
        # Naming another local model or CLIP also drops that folder's contents hash.
        assert all(d == key or d.startswith((key + ".", key + "[")) or d.endswith("contents")
                   for d in diff), (key, diff)
        assert key in diff or any(d.startswith(key) for d in diff), (key, diff)
        checked += 1
    assert checked > 40


def test_free_keys_change_nothing(shipped) -> None:
    base = fingerprint.compute(shipped, CONTENTS)
    for fields, key, s, hint, value in leaves(shipped):
        if s.free is None:
            continue
        assert s.free.strip(), key
        kind = _base(hint)
        if dataclasses.is_dataclass(kind) and value is not None:
            other = dataclasses.replace(value) if key == "select" else None
            new = other if other is not None else changed(value, hint)
        else:
            new = changed(value, hint)
        got = fingerprint.compute(with_change(shipped, fields, new), CONTENTS)
        assert got == base, key


def test_contents_are_fingerprinted(shipped) -> None:
    fp = fingerprint.compute(shipped, CONTENTS)
    assert {"data.contents", "model.contents", "eval.clip_contents"} <= set(fp)
    assert fingerprint.compute(shipped, "1" * 64)["data.contents"] != fp["data.contents"]


def _study() -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name="s")


def test_a_study_recorded_in_format_1_resumes_and_is_upgraded(shipped) -> None:
    study = _study()
    study.set_user_attr(fingerprint.ATTR, compute_v1(shipped, CONTENTS))
    fingerprint.check_existing(study, shipped, CONTENTS)  # the dry run: compares only
    assert study.user_attrs[fingerprint.ATTR]["format"] == "1"
    fingerprint.check_or_record(study, shipped, CONTENTS)
    assert study.user_attrs[fingerprint.ATTR] == fingerprint.compute(shipped, CONTENTS)
    # From now on a key format 1 never recorded is checked too.
    wider = dataclasses.replace(shipped, eval=dataclasses.replace(shipped.eval, width=48))
    with pytest.raises(fingerprint.FingerprintMismatch, match=r"changed eval\.width"):
        fingerprint.check_or_record(study, wider, CONTENTS)


def test_a_format_1_study_with_a_changed_key_is_refused(shipped) -> None:
    study = _study()
    study.set_user_attr(fingerprint.ATTR, compute_v1(shipped, CONTENTS))
    other = dataclasses.replace(shipped, train=dataclasses.replace(shipped.train, seed=7))
    with pytest.raises(fingerprint.FingerprintMismatch, match=r"changed train\.seed"):
        fingerprint.check_or_record(study, other, CONTENTS)
    assert study.user_attrs[fingerprint.ATTR]["format"] == "1"


def test_require_is_fingerprinted_key_by_key(shipped) -> None:
    fp = fingerprint.compute(shipped, CONTENTS)
    assert fp["preservation.require.leak"] == '"not_above"'
    looser = dataclasses.replace(shipped, require=Require(control="any", max_drop=5.0))
    assert fingerprint.changed_keys(fp, fingerprint.compute(looser, CONTENTS)) == [
        "preservation.require.control", "preservation.require.max_drop",
        "preservation.require.leak"]
