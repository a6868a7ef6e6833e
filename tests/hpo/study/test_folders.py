"""hpo.study.folders: a failed write found under the wrappers, named in one line."""

from __future__ import annotations

import errno
import sqlite3

import sqlalchemy.exc

from hpo.study.folders import disk_error, disk_error_line


def test_a_full_disk_is_found_under_the_errors_that_wrap_it() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/best.yaml")
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("Tune: trial failed") from inner
    except RuntimeError as outer:
        assert disk_error(outer) is full
    assert disk_error_line(full).startswith("/runs/x/best.yaml: No space left on device (")
    wrapped = sqlalchemy.exc.OperationalError("INSERT ...", {},
                                              sqlite3.OperationalError("database or disk is full"))
    found = disk_error(wrapped)
    assert found is not None and found.errno == errno.ENOSPC
    assert disk_error(sqlalchemy.exc.OperationalError(
        "UPDATE ...", {}, sqlite3.OperationalError("attempt to write a readonly database")
    )).errno == errno.EROFS
    # what is not a write failing for space or permission is left alone
    assert disk_error(OSError(errno.ECONNREFUSED, "refused")) is None
    assert disk_error(ValueError("bad")) is None
