"""A local sweep's Ray listens on loopback only (issue 31): no socket of the driver, the GCS,
the raylet, the workers or Ray's agents is reachable from another machine.

The Ray is started by the project's own helper (:func:`hpo.dispatch.tune.start_ray`, what
``python -m hpo.run`` without ``--address`` calls) in a subprocess, since the pytest process
may already hold the session's Ray; every listening socket of that process and its
descendants is then read from the kernel (``psutil.net_connections``, what ``ss -ltnp``
shows).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time

import psutil
import pytest

from tests.sweep_files import REPO

pytestmark = pytest.mark.slow

# Start a local Ray as a sweep does, run one task (a worker process), say so, wait for stdin.
DRIVER = """
import sys
from hpo.dispatch.tune import start_ray
import ray
start_ray(None, num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())
print("ready", flush=True)
sys.stdin.readline()
ray.shutdown()
"""


def listening(pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``pid`` and its
    descendants."""
    tree = {pid: psutil.Process(pid).name()}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            tree[child.pid] = child.name()
        except psutil.NoSuchProcess:
            continue
    return [(tree[c.pid], c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in tree]


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv4 socket on IPv6
    return (mapped or ip).is_loopback


def test_a_local_ray_listens_on_loopback_only() -> None:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "ready"
        time.sleep(1)  # the agents open their ports a moment after the node is up
        sockets = listening(driver.pid)
        names = {name for name, _, _ in sockets}
        # the driver itself, the GCS and the raylet at least, so the check is not vacuous
        assert {"gcs_server", "raylet"} <= names and len(sockets) >= 3, sockets
        outside = [s for s in sockets if not is_loopback(s[1])]
        assert not outside, f"listening beyond loopback: {outside} (all: {sockets})"
    finally:
        if driver.poll() is None:
            driver.communicate("\n", timeout=60)
