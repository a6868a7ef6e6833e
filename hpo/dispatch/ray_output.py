"""Where Ray's own output goes: ``runs/<study>/driver.log``, and the console with ``--verbose``.

Python loggers are routed by :func:`hpo.outputs.console.driver_log`; this module takes what
only Ray prints: Tune's status table (a reporter) and the workers' stdout and stderr.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import ray
from ray import tune

# Ray's driver prints the workers' stdout and stderr (log_to_driver) through the handler it
# registers under this name, and the raylet's error messages (a worker died) through
# ray._private.worker.print_to_stdstream; RayOutput swaps both for ours, writing driver.log. Ray
# has no public hook for this: if they move in an upgrade, the lines stay on the console
# (tests/hpo/test_console_sweep.py notices) and Ray's own per-worker log files still have them.
_RAY_WORKER_PRINTER = "ray_print_logs"
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
        self._diverted = False  # whether our printer of the workers' lines is in place
        self._taken: list[tuple[str, Any]] = []  # Ray's printer, while ours replaces it
        self._errors: Callable[..., None] | None = None  # Ray's printer of the raylet's errors
        if self.verbose and not sys.stdout.isatty():
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a piped log

    def __enter__(self) -> RayOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the run config (this reporter) into tuner.pkl; an open file cannot be.
        return {**self.__dict__, "log": None, "_diverted": False, "_taken": [],
                "_errors": None}

    def write(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text if text.endswith("\n") else text + "\n")
        if self.verbose:
            print(text, flush=True)

    def reporter(self, **columns: Any) -> tune.ProgressReporter:
        """Tune's classic status table (every 15 s), written by :meth:`write`."""
        output = self

        class _Reporter(tune.CLIReporter):
            def report(self, trials: list, done: bool, *sys_info: str) -> None:
                output.write(self._progress_str(trials, done, *sys_info))

        return _Reporter(**columns)

    def divert_worker_logs(self) -> None:
        """Send the workers' stdout and stderr lines to ``log`` instead of the console."""
        if self.log is None or self._diverted or not ray.is_initialized():
            return
        try:
            from ray._private import worker
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as lines
        except ImportError:
            return
        if not self.verbose:  # with --verbose Ray's printer stays, and ours copies
            self._taken = [(n, h) for n, h in lines.handlers if n == _RAY_WORKER_PRINTER]
            lines.remove_handler(_RAY_WORKER_PRINTER)
        lines.add_handler(_OUR_WORKER_PRINTER, self._worker_lines)
        self._errors = getattr(worker, "print_to_stdstream", None)
        if self._errors is not None:
            worker.print_to_stdstream = self._error_lines
        self._diverted = True

    def _error_lines(self, data: dict[str, Any], ignore_prefix: bool = False) -> None:
        self._worker_lines(data)
        if self.verbose and self._errors is not None:
            self._errors(data, ignore_prefix)

    def _worker_lines(self, data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        ip = data.get("ip")
        where = f"{who} pid={data.get('pid')}" + (
            "" if ip == data.get("localhost") else f", ip={ip}")
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status every 5 s; keep its events, as Ray does
            from ray._private.worker import filter_autoscaler_events

            lines = list(filter_autoscaler_events(lines))
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
        if not self._diverted:
            return
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as lines

        if self._errors is not None:
            worker.print_to_stdstream = self._errors
        lines.remove_handler(_OUR_WORKER_PRINTER)
        if ray.is_initialized():  # a Ray that someone else started goes on printing as before
            for name, handler in self._taken:
                lines.add_handler(name, handler)
        self._diverted, self._taken, self._errors = False, [], None
