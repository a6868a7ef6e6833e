"""``python -m hpo.cluster``: make this machine a node of a Ray cluster for sweeps.

A thin wrapper over ``ray start`` that adds the flags a sweep cluster needs, so that every node
is started the same way::

    python -m hpo.cluster head                          # on the node that runs hpo.run
    python -m hpo.cluster worker --address HEAD:6379    # on every other node
    python -m hpo.cluster auto                          # RunPod Instant Clusters: rank 0 is head

What it adds to ``ray start``:

- token authentication on every node (``RAY_AUTH_MODE=token``), with the one token the whole
  cluster shares: ``RAY_AUTH_TOKEN`` if set, else the file ``--token-file`` (default
  ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``). The head creates the file when it is
  missing; a worker without it stops with a message saying where to copy it;
- fixed ports (``--ports fixed``, the default; see :data:`FIXED_PORTS`) so that a firewall can
  name them, or Ray's own choice (``--ports auto``, e.g. several nodes on one machine);
- a label resource ``pod:NAME`` of 1 on the node (``--name``, default ``node-$NODE_RANK``,
  ``$RUNPOD_POD_ID`` or the host name), so ``ray status`` and ``ray.nodes()`` say which pod is
  which;
- GPUs and CPUs: Ray counts them; ``--num-gpus`` / ``--num-cpus`` override;
- the node's address: ``--node-ip-address``, default ``$NODE_ADDR`` (an Instant Cluster node's
  address on the cluster network), else the Global Networking address of
  ``$RUNPOD_POD_ID.runpod.internal`` (an ordinary RunPod pod), else Ray's choice.

Any other ``ray start`` flag (``--block``, ``--temp-dir``, ``--object-store-memory`` ...) is
passed through unchanged. The token never appears on a command line or in the output.

:func:`check_address` is the sweep driver's side: is a Ray cluster at ``--address``? It asks
without Ray (a socket and the gRPC handshake), so the dry run can ask too.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PORT = 6379
LABEL_PREFIX = "pod:"
# Every port a node listens on, fixed (Ray's defaults are random for most of them). The head
# also listens on the GCS port (--port, 6379), the Ray client port and the dashboard.
FIXED_PORTS = {
    "--node-manager-port": 6800,
    "--object-manager-port": 6801,
    "--dashboard-agent-grpc-port": 6802,
    "--runtime-env-agent-port": 6803,
    "--metrics-export-port": 6804,
    "--dashboard-agent-listen-port": 52365,
    "--min-worker-port": 10002,
    "--max-worker-port": 19999,
}
HEAD_PORTS = {"--ray-client-server-port": 10001, "--dashboard-port": 8265}


class ClusterError(RuntimeError):
    """A problem found before ``ray start`` runs; the message is one line."""


class AddressError(ValueError):
    """An ``--address`` where no Ray cluster answers; the message is one line."""


# What a gRPC client (Ray's GCS client) says first: the HTTP/2 preface and an empty SETTINGS
# frame. A gRPC server (the GCS) answers with its own SETTINGS frame (type 4, stream 0).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def probe_ray(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` is not a Ray cluster's GCS port, or None when it answers like one.

    A TCP connection is not enough: Ray's own client retries its handshake for minutes (on and
    on from ``ray.init``) against anything that accepts connections, such as a web server or
    Ray's dashboard. The GCS speaks gRPC, so it must answer the HTTP/2 preface with a SETTINGS
    frame. With ``RAY_USE_TLS`` on, the handshake is TLS and only the connection is checked.
    """
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        return f"no Ray cluster answers there ({err.strerror or type(err).__name__})"
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return None
        answer = b""
        try:
            conn.settimeout(timeout)
            conn.sendall(_H2_PREFACE)
            while len(answer) < 9:
                chunk = conn.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            return (f"something accepts connections there but gave no Ray (gRPC) answer in "
                    f"{timeout:g} s")
        except ConnectionError:  # reset or closed under us: as good as no answer
            answer = b""
        except OSError as err:
            return f"the connection failed ({err.strerror or type(err).__name__})"
    if len(answer) == 9 and answer[3] == _H2_SETTINGS and not any(answer[5:9]):
        return None
    if answer.startswith(b"HTTP/") or answer.lstrip().startswith(b"<"):
        return ("a web server answers there, not Ray (Ray's dashboard, 8265, is one: give the "
                "GCS port)")
    if not answer:
        return ("something accepts connections there but closed them without a Ray (gRPC) "
                "answer")
    return f"something answers there, but not Ray (it began {answer[:9]!r})"


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Raise :class:`AddressError` unless a Ray cluster answers at ``address`` (HOST:PORT,
    ``ray://HOST:PORT``, or ``auto`` with ``RAY_ADDRESS`` set), within about ``timeout`` s.

    ``auto`` without ``RAY_ADDRESS`` is Ray's search for a head on this machine, which fails
    fast by itself when there is none.
    """
    given = address
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or None
        if address in (None, "auto"):
            return
    if not address:
        return
    if "://" in address:
        scheme, _, address = address.partition("://")
        if scheme != "ray":
            return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise AddressError(f"--address {given}: expected auto or HOST:PORT")
    problem = probe_ray(host.strip("[]"), int(port), timeout)
    if problem is not None:
        where = f" (RAY_ADDRESS={address})" if given == "auto" else ""
        raise AddressError(f"--address {given}{where}: {problem}; is the head node up at this "
                           f"address (its GCS port is {DEFAULT_PORT} by default; `ray status` on "
                           f"the head prints it)?")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpo.cluster", allow_abbrev=False,
        description="Start a Ray node for sweeps (a wrapper over `ray start`). Flags it does "
                    "not know are passed to `ray start` unchanged, e.g. --block.")
    p.add_argument("role", choices=("head", "worker", "auto"),
                   help="head: the node that runs `python -m hpo.run --address auto`; worker: "
                        "joins --address; auto: head when $NODE_RANK is 0, else a worker of "
                        "$PRIMARY_ADDR (RunPod Instant Clusters)")
    p.add_argument("--address", default=None,
                   help="worker: the head's HOST:PORT (default $PRIMARY_ADDR:PORT when set)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"the head's GCS port (default {DEFAULT_PORT})")
    p.add_argument("--num-gpus", type=int, default=None,
                   help="GPUs this node offers (default: what Ray detects)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs this node offers (default: what Ray detects)")
    p.add_argument("--name", default=None,
                   help="node label, added as the resource pod:NAME (default node-$NODE_RANK, "
                        "$RUNPOD_POD_ID or the host name)")
    p.add_argument("--node-ip-address", default=None,
                   help="this node's address as the other nodes reach it (default $NODE_ADDR, "
                        "else the address of $RUNPOD_POD_ID.runpod.internal, else Ray's "
                        "choice)")
    p.add_argument("--ports", choices=("fixed", "auto"), default="fixed",
                   help="fixed: the documented port numbers (default); auto: Ray picks")
    p.add_argument("--token-file", type=Path, default=None,
                   help="the cluster's Ray auth token (default $RAY_AUTH_TOKEN_PATH, else "
                        "~/.ray/auth_token; ignored when $RAY_AUTH_TOKEN is set)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the `ray start` command and exit")
    return p


def resolve_role(role: str, env: Mapping[str, str]) -> str:
    if role != "auto":
        return role
    rank = env.get("NODE_RANK")
    if rank is None:
        raise ClusterError("auto: $NODE_RANK is not set (it is on RunPod Instant Clusters); "
                           "use `head` or `worker --address HOST:PORT`")
    return "head" if rank.strip() == "0" else "worker"


def node_name(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    if args.name:
        return args.name
    if env.get("NODE_RANK"):
        return f"node-{env['NODE_RANK']}"
    return env.get("RUNPOD_POD_ID") or socket.gethostname()


def node_ip(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """This node's address on the network the nodes share, when it can be known.

    ``$NODE_ADDR`` on an Instant Cluster; on a pod with Global Networking, the private address
    of ``$RUNPOD_POD_ID.runpod.internal``. Otherwise Ray picks (its default route's address).
    """
    if args.node_ip_address:
        return args.node_ip_address
    if env.get("NODE_ADDR"):
        return env["NODE_ADDR"]
    if env.get("RUNPOD_POD_ID"):
        try:
            return socket.gethostbyname(f"{env['RUNPOD_POD_ID']}.runpod.internal")
        except OSError:  # Global Networking is off: no private address
            return None
    return None


def head_address(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The HOST:PORT a worker joins."""
    if args.address:
        address = args.address
    elif env.get("PRIMARY_ADDR"):
        address = f"{env['PRIMARY_ADDR']}:{args.port}"
    else:
        raise ClusterError("worker: --address HOST:PORT is required (the head's address, "
                           f"e.g. 10.0.0.1:{DEFAULT_PORT})")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address: expected HOST:PORT (got {address!r})")
    return address


def token_path(args: argparse.Namespace, env: Mapping[str, str]) -> Path:
    if args.token_file:
        return args.token_file.expanduser()
    if env.get("RAY_AUTH_TOKEN_PATH"):
        return Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
    return Path.home() / ".ray" / "auth_token"


def auth_env(role: str, args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """The environment for ``ray start``: token auth on, and where the token is.

    The head creates the token file when there is none; a worker must be given the head's.
    """
    out = dict(env)
    out["RAY_AUTH_MODE"] = "token"
    if env.get("RAY_AUTH_TOKEN"):
        return out
    path = token_path(args, env)
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        if role != "head":
            raise ClusterError(
                f"no Ray auth token in {path}: copy the head's token file there (or set "
                "RAY_AUTH_TOKEN, or pass --token-file); every node needs the same token")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32), encoding="utf-8")
        path.chmod(0o600)
        print(f"created the cluster's Ray auth token in {path}: copy this file to every node "
              "(same path), or set RAY_AUTH_TOKEN to its contents there", file=sys.stderr)
    out["RAY_AUTH_TOKEN_PATH"] = str(path)
    return out


def _take_resources(extra: list[str]) -> tuple[dict[str, float], list[str]]:
    """Split a passed-through ``--resources JSON`` off, so the label can be merged into it."""
    rest, resources = [], {}
    args = iter(extra)
    for arg in args:
        if arg == "--resources" or arg.startswith("--resources="):
            text = arg.split("=", 1)[1] if "=" in arg else next(args, "{}")
            try:
                resources.update(json.loads(text))
            except ValueError:
                raise ClusterError(f"--resources: not a JSON object ({text!r})") from None
        else:
            rest.append(arg)
    return resources, rest


def ray_start_command(role: str, args: argparse.Namespace, env: Mapping[str, str],
                      extra: list[str]) -> list[str]:
    """The ``ray start`` command line for this node (no secrets in it)."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start"]
    if role == "head":
        if args.address:
            raise ClusterError("head: --address is for workers (the head listens on --port)")
        cmd += ["--head", f"--port={args.port}"]
    else:
        cmd += [f"--address={head_address(args, env)}"]
    resources, extra = _take_resources(extra)
    ip = node_ip(args, env)
    if ip:
        cmd += [f"--node-ip-address={ip}"]
    if args.num_gpus is not None:
        cmd += [f"--num-gpus={args.num_gpus}"]
    if args.num_cpus is not None:
        cmd += [f"--num-cpus={args.num_cpus}"]
    resources[LABEL_PREFIX + node_name(args, env)] = 1
    cmd += [f"--resources={json.dumps(resources)}"]
    if args.ports == "fixed":
        ports = {**FIXED_PORTS, **(HEAD_PORTS if role == "head" else {})}
        given = {arg.split("=", 1)[0] for arg in extra}
        cmd += [f"{flag}={port}" for flag, port in ports.items() if flag not in given]
    cmd += ["--disable-usage-stats", *extra]
    return cmd


def next_steps(role: str, args: argparse.Namespace, env: Mapping[str, str]) -> str:
    if role == "head":
        host = node_ip(args, env) or "THIS_HOST"
        return (f"next: on each worker  python -m hpo.cluster worker --address {host}:{args.port}"
                "\n      then, here       python -m hpo.run --address auto --sweep SWEEP "
                "--out /workspace/runs")
    return "next: check the node joined with `ray status` on the head"


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    env = dict(os.environ)
    try:
        role = resolve_role(args.role, env)
        cmd = ray_start_command(role, args, env, extra)
        child_env = {} if args.dry_run else auth_env(role, args, env)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(shlex.join(["ray", *cmd[3:]]), flush=True)  # what runs, without the interpreter
    if args.dry_run:
        return 0
    if "--block" in extra:  # the node lives as long as this process (e.g. a pod's command)
        print(next_steps(role, args, env), flush=True)
        os.execve(cmd[0], cmd, child_env)
    code = subprocess.call(cmd, env=child_env)
    if code == 0:
        print(next_steps(role, args, env))
    return code

