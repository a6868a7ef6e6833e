"""Where Ray's own output goes: ``runs/<study>/driver.log``, and the console with ``--verbose``.

Python loggers are routed by :func:`hpo.outputs.console.driver_log`; this module takes what
only Ray prints: Tune's status table (a reporter) and the workers' stdout and stderr.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import ray
from ray import tune

from hpo.dispatch import ray_private

# Ray prints the workers' stdout and stderr, and the raylet's error messages, through printers
# it keeps private; RayOutput swaps them for ours (hpo.dispatch.ray_private), writing driver.log.
# If they move in an upgrade, the lines stay on the console (tests/hpo/test_console_sweep.py
# notices) and Ray's own per-worker log files still have them.
_OUR_WORKER_PRINTER = "hpo_driver_log"


class RayOutput:
    """Where Ray's own output goes: into ``log`` (``runs/<study>/driver.log``), and with
    ``verbose`` also on the console as Ray prints it.

    That is what Python's loggers do not carry (``hpo.outputs.console.driver_log`` routes
    those, the "ray" logger's included): Tune's status table (:meth:`reporter`) and the workers'
    stdout and stderr (:meth:`divert_worker_logs`, called by :func:`start_ray`). Closing it shuts
    down a Ray that :func:`start_ray` started here, so that the workers' last lines still reach
    ``log``, and gives Ray its printer back.
    """

    def __init__(self, log: TextIO | None, verbose: bool = False) -> None:
        self.log = log
        self.verbose = verbose or log is None
        self.started_ray = False
        # Ray's printers of the workers' lines, while ours replace them (None: not diverted)
        self._taken: ray_private.TakenPrinters | None = None
        if self.verbose and not sys.stdout.isatty():
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a piped log

    def __enter__(self) -> RayOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the run config (this reporter) into tuner.pkl; an open file cannot be.
        return {**self.__dict__, "log": None, "_taken": None}

    def write(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text if text.endswith("\n") else text + "\n")
        if self.verbose:
            print(text, flush=True)

    def reporter(self, **columns: Any) -> tune.ProgressReporter:
        """Tune's classic status table (every 15 s), written by :meth:`write`."""
        return ray_private.table_reporter(self.write, **columns)

    def divert_worker_logs(self) -> None:
        """Send the workers' stdout and stderr lines to ``log`` instead of the console."""
        if self.log is None or self._taken is not None or not ray.is_initialized():
            return
        # with --verbose Ray's printer stays, and ours copies
        self._taken = ray_private.divert_worker_output(
            _OUR_WORKER_PRINTER, self._worker_lines, self._error_lines, keep_ray=self.verbose)

    def _error_lines(self, data: dict[str, Any], ignore_prefix: bool = False) -> None:
        self._worker_lines(data)
        if self.verbose and self._taken is not None and self._taken.errors is not None:
            self._taken.errors(data, ignore_prefix)

    def _worker_lines(self, data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        ip = data.get("ip")
        where = f"{who} pid={data.get('pid')}" + (
            "" if ip == data.get("localhost") else f", ip={ip}")
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status every 5 s; keep its events, as Ray does
            lines = ray_private.autoscaler_events(lines)
        for line in lines:
            # A progress bar redraws itself with carriage returns: keep its last state.
            shown = [part for part in str(line).split("\r") if part.strip()]
            if shown and self.log is not None:
                self.log.write(f"({where.strip()}) {shown[-1]}\n")

    def close(self) -> None:
        if self.started_ray and ray.is_initialized():
            begun = time.monotonic()
            ray.shutdown()  # the workers' last lines are flushed to our printer first
            if self.log is not None:
                self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ray.shutdown() took "
                               f"{time.monotonic() - begun:.1f} s\n")
        self.started_ray = False
        if self._taken is None:
            return
        # a Ray that someone else started goes on printing as before
        ray_private.restore_worker_output(self._taken, give_back=ray.is_initialized())
        self._taken = None
