"""Study storage in PostgreSQL: a real sweep with ``--storage postgresql://...``, read back the
way optuna-dashboard reads it, with the password nowhere in what the sweep writes or prints.

The server is Debian's PostgreSQL on loopback, set up by ``.ci/deps.d/postgres.sh`` (``make
test`` runs it first) with a role and database for tests only, at the fixed URL::

    postgresql://sweep:sweep-test-pw@127.0.0.1:5432/sweeps_test

Without that server these tests fail (a set-up problem, never a skip). Each run uses its own
study name and deletes the study afterwards.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hpo.plan import PreflightError, connect_storage
from hpo.run import main as run_main
from hpo.study.storage import redact
from tests.sweep_files import REPO, write_sweep

PASSWORD = "sweep-test-pw"
URL = f"postgresql://sweep:{PASSWORD}@127.0.0.1:5432/sweeps_test"
REDACTED = "postgresql://sweep:***@127.0.0.1:5432/sweeps_test"


@pytest.fixture(scope="module")
def postgres() -> str:
    try:
        import psycopg  # SQLAlchemy's driver for postgresql:// URLs

        psycopg.connect(URL, connect_timeout=5).close()
    except Exception as err:  # no driver, no server, no role: all mean "not set up here"
        message = f"no PostgreSQL for tests at {REDACTED} ({type(err).__name__}); run " \
                  "`bash .ci/system-deps.sh` as root"
        pytest.fail(message)
    return URL


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://sweep:pw@db:5432/s", "postgresql://sweep:***@db:5432/s"),
    ("postgresql+psycopg2://u:p%40ss%2Fw@db/s", "postgresql+psycopg2://u:***@db/s"),
    ("redis://:pw@localhost:6379/0", "redis://:***@localhost:6379/0"),
    ("postgresql://sweep@db/s?sslmode=require&password=pw", "postgresql://sweep@db/s"
     "?sslmode=require&password=***"),
    ("postgresql://sweep@db/s?sslpassword=pw&x=1", "postgresql://sweep@db/s?sslpassword=***&x=1"),
    ("postgresql://sweep@db/s", "postgresql://sweep@db/s"),
    ("sqlite:////runs/a:b/optuna.db", "sqlite:////runs/a:b/optuna.db"),
])
def test_redact_hides_every_password_form(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_a_wrong_password_fails_in_one_line_without_the_password(postgres) -> None:
    wrong = postgres.replace(PASSWORD, "not-the-pw-42")
    with pytest.raises(PreflightError) as caught:
        connect_storage(wrong)
    message = str(caught.value)
    assert "password authentication failed" in message  # the server's answer, not a driver
    assert "not-the-pw-42" not in message and "sweep:***@" in message and "\n" not in message


def test_dry_run_shows_the_storage_redacted(postgres, tmp_path, capsys) -> None:
    sweep = write_sweep(tmp_path)
    assert run_main(["--sweep", str(sweep), "--storage", postgres, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert REDACTED in out and PASSWORD not in out


@pytest.fixture(scope="module")
def pg_sweep(postgres, ray_cluster, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Two trials of the tiny sweep, run by ``python -m hpo.run --storage postgresql://``."""
    folder = tmp_path_factory.mktemp("pg")
    name = f"pg-{uuid.uuid4().hex[:10]}"
    sweep = write_sweep(folder, name=name, early_terminate=None)  # both trials COMPLETE
    out = folder / "runs"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hpo.run", "--sweep", str(sweep), "--trials", "2",
             "--out", str(out), "--address", ray_cluster, "--storage", postgres],
            cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        yield {"name": name, "out": out / name, "stdout": done.stdout, "stderr": done.stderr}
    finally:
        with contextlib.suppress(KeyError):  # the sweep may have failed before creating it
            optuna.delete_study(study_name=name, storage=postgres)


@pytest.mark.slow
def test_the_study_reads_back_through_optuna_dashboard(pg_sweep, postgres, monkeypatch) -> None:
    from optuna_dashboard import wsgi
    from optuna_dashboard._storage import get_studies
    from optuna_dashboard._storage_url import get_storage

    storage = get_storage(postgres)  # what `optuna-dashboard URL` opens
    assert isinstance(storage, optuna.storages.RDBStorage)
    study = next(s for s in get_studies(storage) if s.study_name == pg_sweep["name"])
    trials = storage.get_all_trials(study._study_id)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.user_attrs["baseline_clip_score"] is not None

    # The dashboard's own API, as the browser calls it, sees the same study and trials.
    app = wsgi(postgres)
    studies = _get(app, "/api/studies")["study_summaries"]
    summary = next(s for s in studies if s["study_name"] == pg_sweep["name"])
    detail = _get(app, f"/api/studies/{summary['study_id']}")
    assert len(detail["trials"]) == 2 and detail["best_trials"]

    # A URL without the password works too, with libpq's PGPASSWORD (or ~/.pgpass).
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    bare = get_storage(postgres.replace(f":{PASSWORD}@", "@"))
    assert pg_sweep["name"] in [s.study_name for s in get_studies(bare)]


@pytest.mark.slow
def test_the_password_is_in_no_log_file_or_attribute(pg_sweep, postgres) -> None:
    printed = pg_sweep["stdout"] + pg_sweep["stderr"]
    assert PASSWORD not in printed
    assert REDACTED in printed  # the storage line and the summary's dashboard command
    best = yaml.safe_load((pg_sweep["out"] / "best.yaml").read_text())
    assert PASSWORD not in json.dumps(best) and REDACTED in json.dumps(best)
    study = optuna.load_study(study_name=pg_sweep["name"], storage=postgres)
    attrs = [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
    attrs += [[t.user_attrs, t.system_attrs, t.params] for t in study.trials]
    assert PASSWORD not in json.dumps(attrs, default=str)
    # Nor in any file the sweep wrote, other than Ray Tune's pickle (next test).
    leaks = _files_with(pg_sweep["out"], PASSWORD)
    assert [p.name for p in leaks if p.name != "tuner.pkl"] == []


@pytest.mark.slow
def test_the_password_is_not_in_rays_tuner_pickle(pg_sweep) -> None:
    assert not _files_with(pg_sweep["out"] / "ray", PASSWORD)


def _get(app, path: str) -> Any:
    """One GET through a WSGI app, without a server."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET",
                               "wsgi.input": BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:500])
    return json.loads(body)


def _files_with(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_one_driver_lock_is_an_advisory_lock_in_the_database(postgres, tmp_path) -> None:
    from hpo.study.lock import StudyLocked, study_lock

    name = f"lock-{uuid.uuid4().hex[:8]}"
    with study_lock(postgres, name, tmp_path / "a"):
        # Another driver, with another --out, on the same study: refused, password hidden.
        with pytest.raises(StudyLocked) as caught, study_lock(postgres, name, tmp_path / "b"):
            pass
        assert "another sweep driver" in str(caught.value) and PASSWORD not in str(caught.value)
        with study_lock(postgres, f"{name}-other", tmp_path / "b"):  # other studies are free
            pass
    with study_lock(postgres, name, tmp_path / "b"):  # released with the first driver
        pass
