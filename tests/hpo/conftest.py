"""Fixtures shared by the hpo tests."""

from __future__ import annotations

import http.server
import shutil
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import hpo.dispatch.tune
from hpo.run import main
from tests.sweep_files import REPO, apply, tiny_doc


class RayStarted(Exception):
    """Raised instead of starting Ray: reaching it means every check passed."""


@pytest.fixture
def offline_sweep(tmp_path: Path, synthetic_dataset: Path, tiny_model_dir: Path,
          monkeypatch: pytest.MonkeyPatch):
    """A valid tiny sweep with its own data and prompts; ``write``, ``run`` (Ray refused)."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RayStarted

    monkeypatch.setattr(hpo.dispatch.tune, "start_ray", refuse)
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text((REPO / "sweeps/prompts/tiny_heldout.txt").read_text(), encoding="utf-8")

    def write(**changes: Any) -> Path:
        doc = apply(tiny_doc(), {"data.train_dir": str(data), "eval.prompts": str(prompts),
                                 "data.synthetic": None})
        apply(doc, changes)
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    def run(*extra: str, sweep: Path | None = None, out: Path | None = None) -> int:
        out = out or tmp_path / "runs"
        cache = out / "cache"
        if not (cache / "tiny-sd").exists():  # reuse the session's tiny model
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "tiny-sd").symlink_to(tiny_model_dir)
        return main(["--sweep", str(sweep or write()), "--trials", "2", "--out", str(out),
                     *extra])

    return SimpleNamespace(write=write, run=run, data=data, prompts=prompts, out=tmp_path / "runs")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _Silent(socketserver.BaseRequestHandler):
    def handle(self) -> None:  # accepts, reads, never answers (until the client gives up)
        self.request.settimeout(30)
        try:
            while self.request.recv(1024):
                pass
        except OSError:
            pass


class _Closing(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.close()


class _Grpc(socketserver.BaseRequestHandler):
    def handle(self) -> None:  # what a gRPC server says first: an empty SETTINGS frame
        self.request.recv(1024)
        self.request.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))


@pytest.fixture
def loopback_server() -> Iterator[Callable[[str], str]]:
    """Start a server on 127.0.0.1 that is not Ray; returns its ``HOST:PORT``. Kinds: ``http``
    (``python -m http.server``'s handler), ``silent``, ``closing``, ``grpc`` (answers the HTTP/2
    preface as a gRPC server, such as Ray's GCS, does)."""
    handlers = {"http": _Quiet, "silent": _Silent, "closing": _Closing, "grpc": _Grpc}
    servers: list[socketserver.ThreadingTCPServer] = []

    def start(kind: str) -> str:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handlers[kind])
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()

def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a refused command printed to stderr (no traceback)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()
