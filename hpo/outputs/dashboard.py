"""``python -m hpo.dashboard runs/<study>``: optuna-dashboard on a sweep's study and images.

It finds the study's storage (``runs/<study>/optuna.db`` unless ``--storage`` says otherwise)
and artifact directory (``runs/<study>/artifacts``), binds to 127.0.0.1 by default, and prints
the study's page. The dashboard reads the database on every request, so while a sweep runs it
shows each trial as the driver records it.

The sweep driver is the study's only writer, so by default the server refuses the dashboard's
write requests (telling trials, editing notes, uploading or deleting artifacts, deleting
studies); ``--allow-writes`` lets them through, for a study no driver is writing to.
The plain command does the same without that guard::

    optuna-dashboard sqlite:///runs/<study>/optuna.db --artifact-dir runs/<study>/artifacts
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from hpo.outputs.artifacts import artifact_dir, open_store
from hpo.study.storage import redact
from hpo.sweep.optuna_private import storage_of

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class DashboardError(RuntimeError):
    """A problem found before the server starts; the message is one line."""


def storage_url(study_dir: Path, storage: str | None = None) -> str:
    """The storage of the study in ``study_dir``: ``storage`` if given, else its optuna.db.

    An absent or empty SQLite file is an error here: optuna-dashboard would crash on it.
    """
    if storage:
        return storage
    db = Path(study_dir) / "optuna.db"
    if not db.is_file() or db.stat().st_size == 0:
        raise DashboardError(f"{db}: no study database here (run a sweep first, or pass "
                             f"--storage URL for a study stored elsewhere)")
    return f"sqlite:///{db.resolve()}"


def find_study(url: str, study_dir: Path, name: str | None = None) -> optuna.Study:
    """Load the study named ``name`` (default: the folder's name, as ``hpo.run`` names it).

    When the storage holds exactly one study, that one is used whatever its name.
    """
    try:
        summaries = optuna.get_all_study_summaries(storage=url, include_best_trial=False)
    except Exception as err:  # unreachable server, bad URL, not an Optuna database
        raise DashboardError(f"{redact(url)}: cannot read studies: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                             ) from None
    names = [s.study_name for s in summaries]
    wanted = name or Path(study_dir).resolve().name
    if wanted not in names:
        if name is None and len(names) == 1:
            wanted = names[0]
        else:
            raise DashboardError(f"{redact(url)}: no study named {wanted!r} (studies: "
                                 f"{', '.join(names) or 'none'}); pass --study NAME")
    return optuna.load_study(study_name=wanted, storage=url)


def read_only(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Wrap a WSGI app so that write requests get ``403`` and never reach the storage."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() in WRITE_METHODS:
            body = (b"read-only: the sweep driver is this study's only writer "
                    b"(start python -m hpo.dashboard with --allow-writes to change it here)")
            start_response("403 Forbidden", [("Content-Type", "text/plain"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return guarded


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    """One thread per request, as optuna-dashboard's own wsgiref runner."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpo.dashboard",
        description="Start optuna-dashboard on a sweep's study, with its image grids.")
    p.add_argument("study_dir", type=Path, help="the sweep's output folder, e.g. runs/tiny-demo")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///STUDY_DIR/optuna.db)")
    p.add_argument("--study", default=None,
                   help="study name (default: the folder's name)")
    p.add_argument("--artifact-dir", type=Path, default=None,
                   help="artifact directory (default: STUDY_DIR/artifacts)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the dashboard "
                        "to the network)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--allow-writes", action="store_true",
                   help="let the dashboard write to the study (tell trials, edit notes, "
                        "upload artifacts); do not use while a sweep runs on it")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request")
    return p


def make_app(url: str, artifacts: Path, allow_writes: bool = False) -> Callable[..., Any]:
    """optuna-dashboard's WSGI app on ``url`` with a file-system artifact store."""
    from optuna_dashboard import wsgi

    app = wsgi(url, artifact_store=open_store(artifacts))
    return app if allow_writes else read_only(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point; serves until Ctrl-C. Returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        url = storage_url(args.study_dir, args.storage)
        study = find_study(url, args.study_dir, args.study)
        artifacts = args.artifact_dir or artifact_dir(args.study_dir)
        app = make_app(url, artifacts, args.allow_writes)
        try:
            server = make_server(args.host, args.port, app, server_class=_ThreadedServer,
                                 handler_class=WSGIRequestHandler if args.verbose
                                 else _QuietHandler)
        except OSError as err:
            raise DashboardError(f"cannot listen on {args.host}:{args.port}: {err.strerror} "
                                 f"(pick another --port)") from None
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    study_id = storage_of(study).get_study_id_from_name(study.study_name)
    page = f"http://{shown}:{server.server_port}/dashboard/studies/{study_id}"
    print(f"optuna-dashboard for study {study.study_name!r}: {page}\n"
          f"  storage:   {redact(url)}\n  artifacts: {Path(artifacts).resolve()}\n"
          f"  {'writes allowed' if args.allow_writes else 'read-only'}; Ctrl-C to stop",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

