"""The persisted Optuna study: storage, study attributes, and recovery after a crash.

All writes happen in the sweep driver (one writer), so SQLite is safe on a single head node.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from hpo.spec import Sweep

INTERRUPTED = "interrupted"
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
    """An RDB storage object (OptunaSearch needs an object, not a URL).

    Optuna creates the schema on first open, and two processes doing that at once (the driver
    and a dashboard or script polling the study) collide on ``alembic_version``. A new SQLite
    file is therefore built aside and moved into place whole, so a reader never sees a
    half-made schema; other databases get one more try once the other process has finished.
    """
    database = _new_sqlite_file(url)
    if database is not None:
        _create_sqlite_schema(database)
    try:
        return optuna.storages.RDBStorage(url)
    except sqlalchemy.exc.IntegrityError:
        return optuna.storages.RDBStorage(url)


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


def record_study_attrs(study: optuna.Study, sweep: Sweep, sampler: dict[str, Any]) -> None:
    """Write what a reader needs to trust and reproduce the study (first run only)."""
    if "sweep_file" in study.user_attrs:
        return
    from hpo.plan import held_out_split
    attrs = {
        "sweep_file": str(sweep.source),
        "sweep_yaml": sweep.source.read_text(encoding="utf-8"),
        "libraries": library_versions(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "sampler": sampler,
        "clip_model": f"{sweep.eval.clip_model}/{sweep.eval.clip_pretrained}",
        "metric": sweep.metric,
        # every objective and the rule that names the winner (read by hpo.winner)
        "objectives": [{"name": o.name, "goal": o.goal} for o in sweep.objectives]
        or [{"name": sweep.metric, "goal": sweep.goal}],
        "select": sweep.select.as_dict(),
        "holdout": held_out_split(sweep),  # the images no trial trains on
        "eval_seed": sweep.eval.seed,
        "n_prompts": len(sweep.eval.prompt_list),
        "prompts": list(sweep.eval.prompt_list),
        "images_per_prompt": sweep.eval.images_per_prompt,
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Mark trials a dead driver left RUNNING as FAIL and queue their parameters again.

    Returns the numbers of the trials marked. Only call this while no other driver runs on the
    study (the run command holds a lock file for that).
    """
    storage = study._storage
    marked = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        storage.set_trial_user_attr(
            trial._trial_id, "fail_reason",
            "the sweep driver stopped before this trial finished; its parameters were queued "
            "again")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        # Not skip_if_exists: that would match the trial just marked FAIL and queue nothing.
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        marked.append(trial.number)
    return marked


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards ``--trials``: finished, and not cut short by a dead driver."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=done)
            if not t.user_attrs.get(INTERRUPTED)]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The winner, or None while no trial is COMPLETE.

    The winner is the best confirmed trial when a confirmation ran (:mod:`hpo.confirm`), else
    the best candidate by the sweep's ``select`` rule: the best COMPLETE trial with one
    objective, the rule's pick from the Pareto front with several (:mod:`hpo.winner`).
    """
    from hpo.winner import pick

    return pick(study)
