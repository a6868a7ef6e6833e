"""The folders a run writes: checked before anything is written, made only after every check.

A refused run (exit code 2) leaves no empty study or cache folder behind, and a folder that
cannot be written is named with the reason (a file in the way, a read-only file system, no
permission, a full disk), not with the traceback of the first write.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from hpo.sweep.spec import PreflightError


def folders_to_write(study_dir: Path, cache_dir: Path, storage_path: str | None,
                      storage_url: str | None) -> list[tuple[Path, str]]:
    """Every local folder the run writes, with what names it (for the messages)."""
    folders = [(study_dir, "output folder"), (cache_dir, "output folder")]
    if storage_path and "://" not in storage_path:  # s3:// and the like: Tune's business
        folders.append((Path(storage_path).expanduser().resolve(), "--storage-path"))
    if storage_url and storage_url.startswith("sqlite:///"):
        database = Path(storage_url.removeprefix("sqlite:///").split("?")[0]).expanduser()
        folders.append((database.resolve().parent, "--storage"))
    return folders


def check_writable(folder: Path, label: str = "output folder") -> None:
    """``folder`` exists as a writable folder, or can be made: its nearest existing ancestor
    is a writable folder on a writable file system with space left. Writes nothing. Raises
    :class:`PreflightError` saying why not (a file in the way, a read-only file system, no
    permission, a full disk) instead of the traceback the first write would give."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():  # --out names a file, or a path through one
        hint = " (--out must name a folder, or one to be made)" if label == "output folder" \
            else ""
        raise PreflightError(f"{folder}: {label}: {existing} is a file, not a folder{hint}")
    try:
        fs = os.statvfs(existing)
    except OSError as err:
        raise PreflightError(f"{folder}: {label}: cannot inspect {existing} "
                             f"({err.strerror})") from None
    if fs.f_flag & os.ST_RDONLY:
        why = f"{existing} is on a read-only file system"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable by this user (permission denied)"
    elif fs.f_bavail == 0:
        why = f"the file system of {existing} is full (no space left)"
    else:
        return
    raise PreflightError(f"{folder}: {label} is not writable: {why}")


def make_folders(*folders: Path) -> list[Path]:
    """Make the run's folders (after every check passed) and prove them writable; returns the
    ones made here, for :func:`remove_made` when a later check refuses the run. Raises
    :class:`PreflightError` when a write fails after all (a race, a quota)."""
    made = []
    for folder in folders:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            remove_made(made + missing)
            raise PreflightError(f"{folder}: output folder is not writable "
                                 f"({err.strerror})") from None
        made += missing
    return made


def remove_made(folders: list[Path]) -> None:
    """Remove the folders :func:`make_folders` made, deepest first, where still empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty (something else wrote there), or gone
            folder.rmdir()


# A full disk, a quota, a read-only file system, a path that lost its permissions: a write the
# whole sweep would fail alike; free space or fix the path, then rerun the same command.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def disk_error(err: BaseException | None) -> OSError | None:
    """The full-disk or unwritable-path ``OSError`` that ``err`` is or was caused by (Tune and
    SQLAlchemy wrap the one underneath), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return err
        text = str(err)
        # SQLite says it in words (sqlite3.OperationalError, wrapped by SQLAlchemy and Optuna)
        for words, code in (("database or disk is full", errno.ENOSPC),
                            ("readonly database", errno.EROFS)):
            if words in text:
                return OSError(code, f"the study database: {words}")
        err = err.__cause__ or err.__context__
    return None


def disk_error_line(err: OSError) -> str:
    """One line for a failed write: what, where, and what to do."""
    where = f"{err.filename}: " if err.filename else ""
    return (f"{where}{err.strerror or err} (a write of the sweep failed; the study keeps every "
            "finished trial: free space or fix the path, then rerun the same command)")
