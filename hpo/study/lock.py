"""One sweep driver per study, locked where the study lives (its storage), not in ``--out``.

Two drivers on one study would each mark the other's live trials as interrupted. A lock file
under the output folder misses a second driver with another ``--out`` and the same
``--storage``, so the lock is taken in the storage itself:

- SQLite file: an ``flock`` on ``<database>.<study>.lock`` beside the database file (every
  process that can open the database can see it; the kernel releases it when the driver dies).
- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) keyed by the study name, held
  on a connection the driver keeps open; the server releases it when the driver dies.
- MySQL: ``GET_LOCK`` on the study name, likewise.
- Anything else (in-memory SQLite, other dialects): a lock file in the study's output folder.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy

from hpo.study.storage import redact


class StudyLocked(RuntimeError):
    """Another driver holds the study; the message is one line."""


def _busy(name: str, where: str) -> StudyLocked:
    return StudyLocked(f"study {name!r}: another sweep driver is running on it ({where}); "
                       f"wait for it to finish, or stop it, then rerun")


@contextmanager
def _file_lock(path: Path, name: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(name, f"lock {path}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# File names have at most this many bytes on the usual file systems (ext4, XFS, APFS, NTFS).
NAME_MAX = 255


def mysql_lock_name(name: str) -> str:
    """``GET_LOCK``'s name for the study: at most 64 characters, so a long study name is
    hashed rather than cut (two names sharing a prefix must not share a lock)."""
    plain = f"hpo-study:{name}"
    return plain if len(plain) <= 64 else \
        f"hpo-study:{hashlib.sha256(name.encode()).hexdigest()[:40]}"


def advisory_key(name: str) -> int:
    """A signed 64-bit key for ``pg_try_advisory_lock`` from the study name."""
    return int.from_bytes(hashlib.sha256(f"hpo-study:{name}".encode()).digest()[:8], "big",
                          signed=True)


@contextmanager
def _server_lock(url: sqlalchemy.engine.URL, raw_url: str, name: str) -> Iterator[None]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    postgres = url.get_backend_name() == "postgresql"
    try:
        with engine.connect() as conn:
            if postgres:
                got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                   {"k": advisory_key(name)}).scalar()
            else:
                got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 0)"),
                                   {"k": mysql_lock_name(name)}).scalar()
            conn.commit()  # the lock is the session's; end the transaction that took it
            if not got:
                raise _busy(name, f"lock held in {redact(raw_url)}")
            try:
                yield
            finally:
                if postgres:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                                 {"k": advisory_key(name)})
                else:
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"),
                                 {"k": mysql_lock_name(name)})
                conn.commit()
    finally:
        engine.dispose()


def lock_path(storage_url: str, name: str, study_dir: Path) -> Path | None:
    """The lock file for a SQLite-file or other non-server storage; None for a server lock."""
    try:
        url = sqlalchemy.engine.make_url(storage_url)
    except sqlalchemy.exc.ArgumentError:
        return study_dir / ".study.lock"
    backend = url.get_backend_name()
    if backend in ("postgresql", "mysql"):
        return None
    database = url.database or ""
    if backend == "sqlite" and database not in ("", ":memory:") and \
            not database.startswith("file:"):
        db = Path(database).resolve()
        lock = f"{db.name}.{name}.lock"
        if len(lock.encode()) > NAME_MAX:  # a long database file name: hash the pair instead
            digest = hashlib.sha256(lock.encode()).hexdigest()[:16]
            lock = f"{db.name.encode()[:200].decode(errors='ignore')}.{digest}.lock"
        return db.with_name(lock)
    return study_dir / ".study.lock"


@contextmanager
def study_lock(storage_url: str, name: str, study_dir: Path) -> Iterator[None]:
    """Hold the study's one-driver lock; raises :class:`StudyLocked` when another has it."""
    path = lock_path(storage_url, name, study_dir)
    if path is not None:
        with _file_lock(path, name):
            yield
        return
    with _server_lock(sqlalchemy.engine.make_url(storage_url), storage_url, name):
        yield
