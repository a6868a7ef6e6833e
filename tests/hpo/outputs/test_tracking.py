"""Experiment tracking: W&B in offline mode, MLflow against a real local server."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from hpo.outputs.tracking import MlflowObserver, WandbObserver
from hpo.run import main
from hpo.sweep.spec import load_sweep
from tests.sweep_files import write_sweep

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


def _rungs(tmp_path: Path) -> list[tuple[dict, Path]]:
    out = []
    for step, score in ((4, 21.5), (8, 23.25)):
        folder = tmp_path / f"ckpt-{step}"
        folder.mkdir()
        Image.new("RGB", (16, 8), (step * 20, 0, 0)).save(folder / "samples.png")
        out.append(({"step": step, "max_train_steps": 8, "clip_score": score,
                     "train_loss": 0.5 / step, "per_prompt": [1.0, 2.0], "device": "cpu"},
                    folder))
    return out


def _trial(sweep) -> optuna.Trial:
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_categorical("rank", [2, 4])
    trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    return trial


def test_wandb_offline_run_holds_params_rungs_images_and_state(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = load_sweep(write_sweep(tmp_path))
    trial = _trial(sweep)
    observer = WandbObserver(sweep, "e2e", tmp_path / "study", project="tests")
    for rung, folder in _rungs(tmp_path):
        observer.rung_saved(trial, rung, str(folder))
    observer.trial_finished(trial, TrialState.PRUNED, {"best_step": 8, "cpu_seconds": 3.5})
    assert not observer.broken
    [run_dir] = list((tmp_path / "study" / "wandb").glob("offline-run-*"))
    records = _settled_records(next(run_dir.glob("run-*.wandb")))

    def items(updates) -> dict:
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in updates}

    [config] = [items(r.run.config.update) for r in records if r.HasField("run")]
    assert config["rank"] == trial.params["rank"]
    assert config["lora_alpha"] == "rank"  # the sweep's fixed parameters too
    history = [items(r.history.item) for r in records if r.HasField("history")]
    assert [(h["_step"], h["clip_score"]) for h in history] == [(4, 21.5), (8, 23.25)]
    assert all(h["samples/_type"] == "image-file" for h in history)
    summary: dict = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(items(r.summary.update))
    assert summary["state"] == "PRUNED" and summary["cpu_seconds"] == 3.5
    assert len(list((run_dir / "files" / "media" / "images").glob("samples_*.png"))) == 2


def _settled_records(path: Path, timeout: float = 30.0) -> list:
    """The offline file's records once its run and final summary are in it: W&B's service
    process writes the file, and under load it has been seen to lag ``run.finish()`` (the
    run record missing when read at once, present when the test ran alone)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        has_run = any(r.HasField("run") for r in records)
        has_state = any(r.HasField("summary") and any(i.key == "state" for i in r.summary.update)
                        for r in records)
        if (has_run and has_state) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline run file (LevelDB log framing: 32 KiB blocks,
    each chunk a 7-byte header of crc32, little-endian length and type 1-4)."""
    from google.protobuf.message import DecodeError
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if pos + 7 + length > len(data):
            break  # a chunk the service is still writing: read again later
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            try:
                record.ParseFromString(pending)
            except DecodeError:
                break  # the tail is mid-write (seen in CI under load); _settled_records retries
            records.append(record)
    return records


def test_missing_extra_or_dead_server_is_one_line_before_ray(tmp_path, capsys) -> None:
    sweep = write_sweep(tmp_path)
    code = main(["--sweep", str(sweep), "--out", str(tmp_path / "runs"), "--trials", "1",
                 "--mlflow", "http://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    if HAS_MLFLOW:
        assert err.startswith("error: --mlflow http://127.0.0.1:9: the tracking server")
    else:
        assert err == ("error: --mlflow needs the mlflow package: pip install "
                       "'sd-lora-sweep[mlflow]' (or pip install mlflow)")
    assert not (tmp_path / "runs" / "e2e" / "optuna.db").exists()  # stopped before the study


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("the mlflow server did not start")
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_server_holds_params_rungs_images_and_state(tmp_path, mlflow_server) -> None:
    import mlflow

    sweep = load_sweep(write_sweep(tmp_path))
    trial = _trial(sweep)
    observer = MlflowObserver(mlflow_server, sweep, "e2e")
    for rung, folder in _rungs(tmp_path):
        observer.rung_saved(trial, rung, str(folder))
    observer.trial_finished(trial, TrialState.COMPLETE, {"best_step": 8})
    assert not observer.broken
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
    assert run.data.params["rank"] == str(trial.params["rank"])
    history = client.get_metric_history(run.info.run_id, "clip_score")
    assert [(m.step, m.value) for m in history] == [(4, 21.5), (8, 23.25)]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"step-000004",
                                                                      "step-000008"}
