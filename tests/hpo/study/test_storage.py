"""The study storage: opening a new SQLite study while other processes poll the same file."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hpo.study.storage import open_storage


def open_together(url: str, opener, count: int = 3) -> list[str]:
    """Open ``url`` from ``count`` threads released at the same instant; the errors raised."""
    start = threading.Barrier(count)
    errors: list[str] = []

    def one() -> None:
        start.wait()
        try:
            opener(url)
        except Exception as err:
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0]}")

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_plain_optuna_collides_when_two_open_a_new_file_at_once(tmp_path) -> None:
    """The hazard the storage guards against, shown on Optuna itself."""
    failures = [open_together(f"sqlite:///{tmp_path / f'{i}.db'}", optuna.storages.RDBStorage)
                for i in range(4)]
    assert any(failures)


def test_opening_a_new_study_file_at_once_from_several_places_never_fails(tmp_path) -> None:
    for i in range(4):
        path = tmp_path / f"run{i}" / "optuna.db"
        path.parent.mkdir()
        assert open_together(f"sqlite:///{path}", open_storage) == []
        # Nothing staged is left beside it, and the file holds the whole schema.
        assert sorted(p.name for p in path.parent.iterdir()) == ["optuna.db"]
        tables = sqlalchemy.inspect(sqlalchemy.create_engine(f"sqlite:///{path}")).get_table_names()
        assert {"studies", "trials", "alembic_version"} <= set(tables)


def test_an_existing_study_file_is_opened_in_place(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=url, study_name="kept").enqueue_trial({"x": 1})
    assert open_storage(url).get_study_id_from_name("kept") is not None
    assert optuna.load_study(study_name="kept", storage=open_storage(url)).trials


def test_a_missing_folder_still_fails_as_before(tmp_path) -> None:
    missing = Path(tmp_path, "no", "such", "dir", "optuna.db")
    with pytest.raises(sqlalchemy.exc.OperationalError):
        open_storage(f"sqlite:///{missing}")
    assert not missing.parent.exists()
