"""The persisted Optuna study: storage, study attributes, and recovery after a crash.

All writes happen in the sweep driver (one writer), so SQLite is safe on a single head node.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.trial import TrialState

from hpo.sweep import optuna_private
from hpo.sweep.spec import Sweep

T = TypeVar("T")

INTERRUPTED = "interrupted"
# How long a write waits for a reader's lock on a SQLite study (a dashboard, a script), and how
# often a write that still finds it locked is tried again: a slow reader must not end a sweep.
SQLITE_BUSY_TIMEOUT_S = 60.0
LOCKED_RETRIES = 5
LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "open-clip-torch",
             "optuna", "ray", "safetensors")


def default_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'optuna.db').resolve()}"


def redact(url: str) -> str:
    """The storage URL with any password replaced by ``***`` (for logs, attrs, best.yaml).

    Covers ``user:password@`` (the user may be empty, as in ``redis://:password@``) and the
    ``password=`` / ``sslpassword=`` query parameters that libpq also accepts.
    """
    url = re.sub(r"(://[^:/]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"([?&](?:ssl)?password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage object (the searcher and the recorder write through it).

    Optuna creates the schema on first open, and two processes doing that at once (the driver
    and a dashboard or script polling the study) collide on ``alembic_version``. A new SQLite
    file is therefore built aside and moved into place whole, so a reader never sees a
    half-made schema; other databases get one more try once the other process has finished.
    """
    database = _new_sqlite_file(url)
    if database is not None:
        _create_sqlite_schema(database)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except sqlalchemy.exc.IntegrityError:
        return optuna.storages.RDBStorage(url, **kwargs)


def _is_locked(err: BaseException) -> bool:
    while err is not None:
        if "database is locked" in str(err):
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


def retry_locked(write: Callable[[], T], pause: float = 1.0) -> T:
    """Run a storage write, trying again while SQLite reports "database is locked".

    The busy timeout already waits :data:`SQLITE_BUSY_TIMEOUT_S` per try; this covers a reader
    that holds its lock for longer.
    """
    for attempt in range(LOCKED_RETRIES):
        try:
            return write()
        except Exception as err:
            if not _is_locked(err) or attempt == LOCKED_RETRIES - 1:
                raise
            time.sleep(pause * 2**attempt)
    raise AssertionError("unreachable")


def trial_id_of(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of the study: what a storage's trial methods take.

    Optuna keeps the id private on ``Trial`` and ``FrozenTrial``; the storage maps the study's
    name and the trial's number to it (two reads: call it once per trial, not per write).
    """
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def set_intermediate(storage: optuna.storages.BaseStorage, trial_id: int, step: int,
                     value: float) -> None:
    """Write a rung's score at its step, replacing one already there.

    ``Trial.report`` ignores a second report at a step, so a retried trial's curve would stay
    the dead attempt's while its value came from the new one.
    """
    retry_locked(lambda: storage.set_trial_intermediate_value(trial_id, step, value))


def clear_intermediate(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Forget a trial's rung scores (a retry starts over: all it records is its own)."""
    retry_locked(lambda: optuna_private.clear_intermediate(storage, trial_id))


def _new_sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names, when it does not exist yet."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None  # RDBStorage reports the bad URL in its own words
    name = parsed.database or ""
    if not parsed.drivername.startswith("sqlite") or name in ("", ":memory:") or \
            name.startswith("file:"):
        return None
    path = Path(name)
    return None if path.exists() else path


def _create_sqlite_schema(path: Path) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
    try:
        optuna.storages.RDBStorage(f"sqlite:///{staging}").engine.dispose()
        # A hard link never replaces: if another process got there first, its file stays.
        try:
            os.link(staging, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: a rename is nearly as good
            if not path.exists():
                os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def open_study(storage: optuna.storages.BaseStorage, sweep: Sweep, name: str,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create the study, or load it when it exists (the dashboard needs it to exist)."""
    directions = [o.goal for o in sweep.objectives] or [sweep.goal]
    return optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                               directions=directions, load_if_exists=True)


def library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def clip_name(model: str, pretrained: str | None) -> str:
    """``model/pretrained`` as open_clip names a CLIP scorer; ``model`` alone when it has no
    pretrained tag (a local weights file, the toy world's scorer)."""
    return f"{model}/{pretrained}" if pretrained else model


def record_study_attrs(study: optuna.Study, sweep: Sweep, sampler: dict[str, Any]) -> None:
    """Write what a reader needs to trust and reproduce the study (first run only)."""
    if "sweep_file" in study.user_attrs:
        return
    from hpo.sweep.holdout import held_out_split

    attrs = {
        "sweep_file": str(sweep.source),
        "sweep_yaml": sweep.source.read_text(encoding="utf-8"),
        "libraries": library_versions(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "sampler": sampler,
        "clip_model": clip_name(sweep.eval.clip_model, sweep.eval.clip_pretrained),
        "metric": sweep.metric,
        # every objective and the rule that names the winner (read by hpo.verdict.winner)
        "objectives": [{"name": o.name, "goal": o.goal} for o in sweep.objectives]
        or [{"name": sweep.metric, "goal": sweep.goal}],
        "select": sweep.select.as_dict(),
        "holdout": held_out_split(sweep),  # the images no trial trains on
        "eval_seed": sweep.eval.seed,
        "n_prompts": len(sweep.eval.prompt_list),
        "prompts": list(sweep.eval.prompt_list),
        "images_per_prompt": sweep.eval.images_per_prompt,
    }
    if sweep.preservation.measured:  # read by hpo.verdict (winner, confirmation verdict)
        attrs["preservation"] = {
            "trigger": sweep.preservation.trigger,
            "control_prompts": list(sweep.preservation.control_prompt_list),
            "require": None if sweep.require is None else sweep.require.as_dict()}
    if sweep.racing is not None:  # the test, its level and the looks, as the sweep file says
        attrs["racing"] = sweep.racing.as_dict()
    if sweep.eval.subset_rungs:  # prompts as a fidelity: these rungs score that many prompts
        attrs["subset_rungs"] = {"steps": list(sweep.eval.subset_rungs),
                                 "prompts": sweep.eval.subset_prompts}
    for key, value in attrs.items():
        study.set_user_attr(key, value)


# A trial's rung checkpoints (Tune's folders, oldest first), a user attr the recorder keeps as
# each is saved; a trial re-queued after its driver died gets them as RESUME_CHECKPOINTS and
# goes on from the last one (hpo.dispatch.searcher, hpo.dispatch.tune).
CHECKPOINT_PATHS = "checkpoint_paths"
RESUME_CHECKPOINTS = "resume_checkpoints"


def recover_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Mark trials a dead driver left RUNNING as FAIL and queue their parameters again, with
    their rung checkpoints (:data:`RESUME_CHECKPOINTS`) so they go on from the last one.

    ``storage`` is the one the study was opened on. Returns the numbers of the trials marked.
    Only call this while no other driver runs on the study (the run command holds a lock file
    for that).
    """
    marked = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = trial_id_of(storage, study.study_name, trial.number)
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        if "fail_reason" not in trial.user_attrs:  # a sweep-wide error already gave one
            storage.set_trial_user_attr(
                trial_id, "fail_reason",
                "the sweep driver stopped before this trial finished; its parameters were "
                "queued again")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        # Not skip_if_exists: that would match the trial just marked FAIL and queue nothing.
        attrs: dict[str, Any] = {"retry_of": trial.number}
        if trial.user_attrs.get(CHECKPOINT_PATHS):
            attrs[RESUME_CHECKPOINTS] = trial.user_attrs[CHECKPOINT_PATHS]
        study.enqueue_trial(trial.params, user_attrs=attrs)
        marked.append(trial.number)
    return marked


def counted_trials(study: optuna.Study, since: float | None = None
                   ) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards ``--trials``: finished, and not cut short by a dead driver;
    with ``since`` (epoch seconds), only those finished since then (this run's)."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    start = None if since is None else datetime.datetime.fromtimestamp(since)
    return [t for t in study.get_trials(deepcopy=False, states=done)
            if not t.user_attrs.get(INTERRUPTED) and (
                start is None or t.datetime_complete is None or t.datetime_complete >= start)]


def jsonable(value: Any) -> Any:
    """User attrs must be JSON: plain floats (NaN as None), lists, dicts."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
