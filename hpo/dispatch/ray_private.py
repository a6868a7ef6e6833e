"""Every use of Ray's private names, in one place (the rest of the project uses its public API).

Each use is pinned by ``tests/hpo/dispatch/test_ray_private.py``, which fails when a release of
Ray moves or reshapes the name; ``tests/test_private_apis.py`` keeps private names out of every
other module. All of them serve :class:`hpo.dispatch.ray_output.RayOutput`, which sends what
only Ray prints to ``driver.log``.

The private uses, and why there is no public way:

- :func:`table_reporter`: ``CLIReporter._progress_str`` builds Tune's classic status table as
  text. ``CLIReporter.report`` prints it to stdout (through ``_print``), and Tune has no public
  way to send the table anywhere else (capturing stdout while it prints would also catch what
  other threads print then).
- :func:`divert_worker_output` and :func:`restore_worker_output`: the driver prints the
  workers' stdout and stderr (``log_to_driver``) through the handler Ray registers as
  ``ray_print_logs`` on ``ray._private.ray_logging.global_worker_stdstream_dispatcher``, and
  the raylet's error messages (a worker died) through ``ray._private.worker.print_to_stdstream``.
  ``ray.init`` has only ``log_to_driver`` (all or nothing, to the console); there is no public
  hook to send the lines elsewhere.
- :func:`autoscaler_events`: ``ray._private.worker.filter_autoscaler_events`` keeps the
  autoscaler's events out of its status lines, as Ray's own printer does.
- :func:`loopback_node`: a local Ray must listen on loopback only (issue 31: no socket of the
  driver, GCS, raylet, workers or agents on another interface). Ray binds each server to the
  node's address, loopback only when that address is loopback; but ``ray.init`` turns a given
  ``_node_ip_address`` of ``127.0.0.1`` into the machine's outward address
  (``services.resolve_ip_for_localhost``), and Ray has no public option for the node address
  of a local ``ray.init`` (``ray start --node-ip-address`` is for a cluster started outside
  the driver). Ray itself keeps a node on loopback where clusters are off
  (``ray_constants.ENABLE_RAY_CLUSTER``, set from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when Ray
  is imported, too early for this project to set): the flag is turned off while ``ray.init``
  starts the node, and only then (joining a cluster with ``--address`` never goes through it).

If one of these moves in an upgrade of Ray, the pin test fails; at run time the worker lines
then stay on the console (``divert_worker_output`` returns None) and Ray's per-worker log files
still have them, and a local Ray listens where Ray puts it (``tests/hpo/dispatch/test_cluster``
checks the sockets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ray import tune

# The name under which Ray's driver registers its printer of the workers' lines.
RAY_WORKER_PRINTER = "ray_print_logs"


def table_reporter(write: Callable[[str], None], **columns: Any) -> tune.ProgressReporter:
    """Tune's classic status table (``tune.CLIReporter`` with ``columns``), given to ``write``
    as text instead of printed."""

    class _Reporter(tune.CLIReporter):
        def report(self, trials: list, done: bool, *sys_info: str) -> None:
            write(self._progress_str(trials, done, *sys_info))

    return _Reporter(**columns)


@dataclass
class TakenPrinters:
    """What :func:`divert_worker_output` took from Ray, for :func:`restore_worker_output`."""

    name: str  # the name our printer of the workers' lines is registered under
    handlers: list[tuple[str, Any]] = field(default_factory=list)  # Ray's printer, if taken
    errors: Callable[..., None] | None = None  # Ray's printer of the raylet's errors


def divert_worker_output(name: str, lines: Callable[[dict[str, Any]], None],
                         errors: Callable[..., None], keep_ray: bool) -> TakenPrinters | None:
    """Register ``lines`` (under ``name``) as a printer of the workers' output lines and
    ``errors`` as the printer of the raylet's error messages; with ``keep_ray`` Ray's own
    printer of the workers' lines stays too. None when Ray's printers are not where they were.

    ``errors`` gets what Ray's printer gets, ``(data, ignore_prefix=False)``; the printer it
    replaced is :attr:`TakenPrinters.errors`.
    """
    try:
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return None
    taken = TakenPrinters(name)
    if not keep_ray:
        taken.handlers = [(n, h) for n, h in dispatcher.handlers if n == RAY_WORKER_PRINTER]
        dispatcher.remove_handler(RAY_WORKER_PRINTER)
    dispatcher.add_handler(name, lines)
    taken.errors = getattr(worker, "print_to_stdstream", None)
    if taken.errors is not None:
        worker.print_to_stdstream = errors
    return taken


def restore_worker_output(taken: TakenPrinters, give_back: bool) -> None:
    """Remove our printers; with ``give_back`` (Ray still running) put Ray's back."""
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    if taken.errors is not None:
        worker.print_to_stdstream = taken.errors
    dispatcher.remove_handler(taken.name)
    if give_back:
        for name, handler in taken.handlers:
            dispatcher.add_handler(name, handler)


def autoscaler_events(lines: Iterable[str]) -> list[str]:
    """The autoscaler's events among its status lines (what Ray's printer shows of them)."""
    from ray._private.worker import filter_autoscaler_events

    return list(filter_autoscaler_events(list(lines)))


@contextmanager
def loopback_node() -> Iterator[None]:
    """While the block runs, a Ray node started by ``ray.init`` takes 127.0.0.1 as its address
    (so its servers listen on loopback only); Ray's flag is restored after."""
    try:
        from ray._private import ray_constants
    except ImportError:
        yield
        return
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
