"""Multi-node: ``python -m hpo.cluster`` and a sweep on a simulated cluster on this machine.

The simulated cluster is a head (1 CPU, no GPU) and two workers (1 CPU and 1 fake GPU each),
each a ``python -m hpo.cluster ... --block`` process in its own process group and Ray temp
dir, sharing one auth token file. The sweep driver is ``python -m hpo.run --address`` in a
subprocess, as on a real head node (the pytest process already holds the session's Ray).

Every node listens on 127.0.0.2: Ray rewrites 127.0.0.1 and localhost to the machine's
interface address, but leaves the rest of the loopback range alone, so all traffic stays on
loopback. The trials request 1 GPU each; torch sees no CUDA, so they train on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.dispatch import cluster
from hpo.dispatch.tune import concurrency, trial_resources
from hpo.sweep.spec import load_sweep
from tests.sweep_files import REPO, trials_so_far, write_sweep

HOST = "127.0.0.2"


# --- the wrapper, without starting anything ----------------------------------------------------

def command(argv: list[str], env: dict[str, str]) -> list[str]:
    args, extra = cluster.build_parser().parse_known_args(argv)
    role = cluster.resolve_role(args.role, env)
    return cluster.ray_start_command(role, args, env, extra)


def test_head_command_has_fixed_ports_label_and_no_secret() -> None:
    cmd = command(["head", "--num-gpus", "4", "--name", "pod-a"], {"RAY_AUTH_TOKEN": "s3cr3t"})
    assert cmd[:4] == [sys.executable, "-m", "ray.scripts.scripts", "start"]
    assert "--head" in cmd and "--port=6379" in cmd and "--num-gpus=4" in cmd
    assert '--resources={"pod:pod-a": 1}' in cmd
    for flag, port in {**cluster.FIXED_PORTS, **cluster.HEAD_PORTS}.items():
        assert f"{flag}={port}" in cmd
    assert not any("s3cr3t" in part for part in cmd)


def test_worker_command_joins_the_head_and_passes_other_flags_through() -> None:
    cmd = command(["worker", "--address", "10.1.2.3:6379", "--ports", "auto", "--block",
                   "--resources", '{"x": 2}'], {})
    assert "--address=10.1.2.3:6379" in cmd and "--head" not in cmd
    assert cmd[-1] == "--block"
    label = next(part for part in cmd if part.startswith("--resources="))
    assert json.loads(label.split("=", 1)[1])["x"] == 2  # merged with the node label
    assert not any(part.startswith("--node-manager-port") for part in cmd)


def test_auto_role_follows_runpod_instant_cluster_variables() -> None:
    env = {"NODE_RANK": "0", "NODE_ADDR": "10.65.0.2", "PRIMARY_ADDR": "10.65.0.2"}
    head = command(["auto"], env)
    assert "--head" in head and "--node-ip-address=10.65.0.2" in head
    assert '--resources={"pod:node-0": 1}' in head
    worker = command(["auto"], {**env, "NODE_RANK": "1", "NODE_ADDR": "10.65.0.3"})
    assert "--address=10.65.0.2:6379" in worker and "--node-ip-address=10.65.0.3" in worker
    with pytest.raises(cluster.ClusterError, match="NODE_RANK"):
        command(["auto"], {})
    with pytest.raises(cluster.ClusterError, match="--address"):
        command(["worker"], {})


def test_a_runpod_pod_uses_its_global_networking_address(monkeypatch) -> None:
    names = {"abc123.runpod.internal": "10.0.131.43"}

    def lookup(name: str) -> str:
        if name not in names:
            raise socket.gaierror(name)
        return names[name]

    monkeypatch.setattr(cluster.socket, "gethostbyname", lookup)
    cmd = command(["head"], {"RUNPOD_POD_ID": "abc123"})
    assert "--node-ip-address=10.0.131.43" in cmd and '--resources={"pod:abc123": 1}' in cmd
    assert not any(p.startswith("--node-ip-address") for p in command(
        ["head"], {"RUNPOD_POD_ID": "no-global-networking"}))


def test_head_creates_the_token_and_a_worker_without_it_stops(tmp_path) -> None:
    token = tmp_path / "ray" / "auth_token"
    args = argparse.Namespace(token_file=token)
    env = cluster.auth_env("head", args, {})
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert len(token.read_text()) == 64 and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert cluster.auth_env("worker", args, {})["RAY_AUTH_TOKEN_PATH"] == str(token)
    missing = argparse.Namespace(token_file=tmp_path / "nowhere")
    with pytest.raises(cluster.ClusterError, match="copy the head's token"):
        cluster.auth_env("worker", missing, {})
    assert cluster.auth_env("worker", missing, {"RAY_AUTH_TOKEN": "x"})["RAY_AUTH_MODE"] == "token"


def test_cli_reports_a_missing_address_in_one_line(capsys) -> None:
    assert cluster.main(["worker", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: worker: --address")


# --- is there a Ray cluster at --address? (issue 23: ray.init retried a web server for ever) --

@pytest.mark.parametrize(("kind", "expected"), [
    ("http", "a web server answers there, not Ray"),
    ("silent", "gave no Ray (gRPC) answer in 0.5 s"),
    ("closing", "closed them without a Ray (gRPC) answer"),
])
def test_a_port_that_answers_but_is_not_ray_is_refused_within_the_timeout(
        loopback_server, kind, expected) -> None:
    address = loopback_server(kind)
    started = time.time()
    with pytest.raises(cluster.AddressError) as info:
        cluster.check_address(address, timeout=0.5)
    assert time.time() - started < 5
    message = str(info.value)
    assert message.startswith(f"--address {address}: ") and expected in message
    assert "\n" not in message
    assert "6379 by default" in message


def test_a_grpc_server_and_ray_itself_pass_the_probe(loopback_server, ray_cluster,
                                                     monkeypatch) -> None:
    cluster.check_address(loopback_server("grpc"), timeout=2)
    cluster.check_address(ray_cluster, timeout=2)  # Ray's GCS (token auth on)
    cluster.check_address(f"ray://{loopback_server('grpc')}", timeout=2)
    monkeypatch.setenv("RAY_ADDRESS", loopback_server("http"))  # auto follows RAY_ADDRESS
    with pytest.raises(cluster.AddressError, match=r"--address auto \(RAY_ADDRESS=127"):
        cluster.check_address("auto", timeout=2)
    monkeypatch.delenv("RAY_ADDRESS")
    cluster.check_address("auto")  # Ray's own search for a local head, which fails fast
    with pytest.raises(cluster.AddressError, match="expected auto or HOST:PORT"):
        cluster.check_address("127.0.0.1")


def test_readme_example_two_pods_of_four_gpus_run_sixteen_trials(tmp_path) -> None:
    """The README's worked example: 2 pods x 4 GPUs, 2 trials per GPU."""
    sweep = load_sweep(write_sweep(tmp_path, **{"resources.gpu_per_trial": 0.5,
                                                "resources.cpu_per_trial": 4}))
    pods = {"CPU": 2 * 64, "GPU": 2 * 4}
    assert trial_resources(sweep, pods) == {"cpu": 4, "gpu": 0.5}
    assert concurrency(sweep, pods, None) == 16
    assert concurrency(sweep, {"CPU": 2 * 16, "GPU": 8}, None) == 8  # CPUs can be the limit


# --- a sweep on a simulated cluster ------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class SimCluster:
    """A head and workers started with ``python -m hpo.cluster ... --block`` on this machine."""

    def __init__(self) -> None:
        # Short: Ray's socket paths under the temp dir must stay under 108 characters.
        self.root = Path(tempfile.mkdtemp(prefix="hc", dir="/tmp"))
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # The token file is private to this cluster; its path also marks every process the
        # cluster starts (see shutdown).
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.root / "token"))
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.nodes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        role = ["head", f"--port={self.port}"] if name == "head" else \
            ["worker", f"--address={self.address}"]
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - the node outlives this call
        self.nodes[name] = subprocess.Popen(
            [sys.executable, "-m", "hpo.cluster", *role, f"--name={name}", "--ports=auto",
             f"--node-ip-address={HOST}", f"--token-file={self.root / 'token'}",
             f"--temp-dir={self.root / name}", "--object-store-memory=100000000", "--block",
             *args],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def node_ids(self, expect: int, timeout: float = 120) -> dict[str, str]:
        """Node label -> Ray node id of the live nodes, once ``expect`` nodes are alive."""
        code = ("import json, ray\n"
                f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                "print(json.dumps({k[4:]: n['NodeID'] for n in ray.nodes() if n['Alive'] "
                "for k in n['Resources'] if k.startswith('pod:')}))\n")
        deadline = time.time() + timeout
        while True:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    raise AssertionError(f"node {name} exited: {self.log(name)[-2000:]}")
            done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=self.env,
                                  capture_output=True, text=True, timeout=120, check=False)
            lines = done.stdout.strip().splitlines()
            ids = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
            if len(ids) >= expect:
                return ids
            if time.time() > deadline:
                raise AssertionError(f"{len(ids)} of {expect} nodes up: {done.stderr[-2000:]}")
            time.sleep(2)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        """Lose a node at once, as when a pod goes away (all its processes, SIGKILL)."""
        proc = self.nodes[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def shutdown(self) -> None:
        for name, proc in self.nodes.items():
            if proc.poll() is None:
                self.kill(name)
        # Ray's worker processes start their own sessions; each carries this cluster's token
        # path in its environment, so the leftovers are found by that and ended one by one.
        marker = f"RAY_AUTH_TOKEN_PATH={self.root / 'token'}".encode()
        deadline = time.time() + 20
        while time.time() < deadline:
            left = [pid for pid in _pids() if pid != os.getpid() and marker in _environ(pid)]
            if not left:
                break
            if time.time() > deadline - 10:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(1)
        shutil.rmtree(self.root, ignore_errors=True)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'optuna.db'}")


N_TRIALS = 5


@pytest.fixture(scope="module")
def cluster_sweep(tmp_path_factory) -> dict:
    """Run a 5-trial sweep on head + 2 GPU workers; lose worker w2 early in one of its trials.

    Returns what the checks need: the output folder, node ids, the trial w2 was training when
    it was lost, and the driver's output.
    """
    folder = tmp_path_factory.mktemp("cluster")
    # Trials of one length, 15 rungs: long enough that w2 is still training one when it is lost
    # though the driver (on a busy machine) may record rungs a few seconds behind the workers.
    sweep = write_sweep(folder, name="cluster", early_terminate=None, **{
        "parameters.max_train_steps": {"value": 60},
        "resources.gpu_per_trial": 1, "resources.cpu_per_trial": 0.5,
        "resources.max_retries": 1})
    out = folder / "runs"
    sim = SimCluster()
    driver = None
    try:
        sim.start("head", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false")
        sim.node_ids(1)
        sim.start("w1", "--num-cpus=1", "--num-gpus=1")
        sim.start("w2", "--num-cpus=1", "--num-gpus=1")
        ids = sim.node_ids(3)
        log_path = folder / "driver.log"
        with open(log_path, "w") as log:
            driver = subprocess.Popen(
                [sys.executable, "-m", "hpo.run", "--sweep", str(sweep), "--trials",
                 str(N_TRIALS), "--out", str(out), "--address", sim.address],
                cwd=REPO, env=sim.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        running_at_loss: list[int] = []
        deadline = time.time() + 540
        while driver.poll() is None and time.time() < deadline:
            if not running_at_loss:
                trials = trials_so_far(out, "cluster")
                nodes = {t.user_attrs.get("node_id") for t in trials if t.state.is_finished()}
                # A trial that w2 is training (the driver records the node at each rung) and
                # that is at most a third done, so the loss lands mid-training.
                victims = [t.number for t in trials if t.state == TrialState.RUNNING
                           and t.user_attrs.get("node_id") == ids["w2"]
                           and 1 <= len(t.intermediate_values) <= 5]
                if {ids["w1"], ids["w2"]} <= nodes and victims:
                    sim.kill("w2")
                    running_at_loss = victims
            time.sleep(0.2)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            pytest.fail(f"the sweep did not finish in time: {log_path.read_text()[-3000:]}")
        output = log_path.read_text(errors="replace")
        assert driver.returncode == 0, output[-3000:]
        assert running_at_loss, f"never saw w2 early in a trial: {output[-3000:]}"
        return {"out": out, "ids": ids, "running_at_loss": running_at_loss, "output": output}
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        sim.shutdown()


@pytest.mark.slow
def test_trials_spread_over_both_workers_two_at_a_time(cluster_sweep) -> None:
    ids = cluster_sweep["ids"]
    trials = load(cluster_sweep["out"], "cluster").trials
    used = {t.user_attrs["node_id"] for t in trials}
    assert {ids["w1"], ids["w2"]} <= used
    assert ids["head"] not in used  # the head has no GPU: it only orchestrates
    # One trial per GPU slot: 2 GPUs, though the CPUs (3 at 0.5 a trial) would allow 6.
    assert f"running {N_TRIALS} trial(s), 2 at a time" in cluster_sweep["output"]
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlap == 2


@pytest.mark.slow
def test_every_trials_outputs_are_reachable_from_the_driver(cluster_sweep) -> None:
    out = cluster_sweep["out"] / "cluster"
    trials = load(cluster_sweep["out"], "cluster").trials
    for t in trials:
        assert Path(t.user_attrs["lora_path"], "pytorch_lora_weights.safetensors").is_file()
    assert (out / "best_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert yaml.safe_load((out / "best.yaml").read_text())["result"]["clip_score"] is not None
    assert len((out / "trials.csv").read_text().strip().splitlines()) == N_TRIALS + 1
    assert list((cluster_sweep["out"] / "cache" / "encoded").glob("*.safetensors"))


@pytest.mark.slow
def test_a_lost_worker_has_its_trial_retried_on_the_other(cluster_sweep) -> None:
    ids = cluster_sweep["ids"]
    study = load(cluster_sweep["out"], "cluster")
    assert len(study.trials) == N_TRIALS
    assert all(t.state == TrialState.COMPLETE for t in study.trials), \
        [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in study.trials]
    [lost] = [t for t in study.trials if t.number in cluster_sweep["running_at_loss"]]
    # The trial w2 was training failed once, then ran again ...
    assert _tune_errors(cluster_sweep["out"], lost.user_attrs["ray_trial_id"])
    assert lost.user_attrs["node_id"] == ids["w1"]  # ... on the worker that was left
    # Everything that started after the loss ran on w1.
    assert ids["w2"] not in {t.user_attrs["node_id"] for t in study.trials
                             if t.number > max(cluster_sweep["running_at_loss"])}


def _tune_errors(out: Path, ray_trial_id: str) -> list[Path]:
    return [p for p in (out / "cluster" / "ray").glob(f"run-*/*{ray_trial_id}*/error.*")]
