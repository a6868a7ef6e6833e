"""Pins for hpo/dispatch/ray_private.py: each private Ray name it uses, still there and still of
the shape it relies on. A failure here after an upgrade of Ray says which use to redo (the
module docstring says what each is for); the pyproject bound keeps Ray on the minor release
these pass on. No Ray cluster is started.
"""

from __future__ import annotations

import inspect
from typing import Any

from ray import tune

from hpo.dispatch import ray_private


def test_the_cli_reporter_builds_its_table_in_underscore_progress_str() -> None:
    params = inspect.signature(tune.CLIReporter._progress_str).parameters
    assert list(params)[:3] == ["self", "trials", "done"]
    assert "_progress_str(" in inspect.getsource(tune.CLIReporter.report)
    written: list[str] = []
    reporter = ray_private.table_reporter(written.append, parameter_columns=["rank"],
                                          metric_columns=["step"])
    assert isinstance(reporter, tune.CLIReporter)
    reporter.report([], False)
    assert len(written) == 1 and written[0].startswith("== Status ==")


def test_ray_prints_the_workers_lines_through_its_dispatcher() -> None:
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    # the name Ray's driver registers its printer under (when log_to_driver is on)
    assert f'"{ray_private.RAY_WORKER_PRINTER}"' in inspect.getsource(worker)
    assert isinstance(dispatcher.handlers, list)
    assert {"add_handler", "remove_handler", "emit"} <= set(dir(dispatcher))
    assert list(inspect.signature(worker.print_to_stdstream).parameters) == [
        "data", "ignore_prefix"]
    assert list(inspect.signature(worker.filter_autoscaler_events).parameters) == ["lines"]


def test_worker_lines_are_diverted_and_given_back() -> None:
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    rays: list[Any] = []
    ours: list[Any] = []
    errors: list[Any] = []
    before = (list(dispatcher.handlers), worker.print_to_stdstream)
    # Only stand-ins: a Ray an earlier test started has its own printer registered.
    dispatcher.handlers = []
    dispatcher.add_handler(ray_private.RAY_WORKER_PRINTER, rays.append)  # Ray's, as if started
    try:
        taken = ray_private.divert_worker_output(
            "test_printer", ours.append, lambda data, ignore_prefix=False: errors.append(data),
            keep_ray=False)
        assert taken is not None and taken.errors is before[1]
        dispatcher.emit({"lines": ["hello"]})
        worker.print_to_stdstream({"lines": ["died"]}, False)
        assert ours == [{"lines": ["hello"]}] and not rays
        assert errors == [{"lines": ["died"]}]
        ray_private.restore_worker_output(taken, give_back=True)
        assert worker.print_to_stdstream is before[1]
        dispatcher.emit({"lines": ["again"]})
        assert rays == [{"lines": ["again"]}] and len(ours) == 1
        assert dispatcher.handlers == [(ray_private.RAY_WORKER_PRINTER, rays.append)]
    finally:
        dispatcher.handlers = before[0]
        worker.print_to_stdstream = before[1]


def test_a_local_node_takes_loopback_where_ray_clusters_are_off() -> None:
    """``loopback_node`` turns off Ray's ``ENABLE_RAY_CLUSTER``, which its node address reads
    at call time; ``ray.init`` turns a given 127.0.0.1 into the outward address (so the
    public-looking ``_node_ip_address`` cannot do it)."""
    from ray._private import ray_constants, services, worker

    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
    assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address)
    assert "resolve_ip_for_localhost" in inspect.getsource(worker.init)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with ray_private.loopback_node():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        if worker._global_node is None:  # no Ray in this process: the address it would take
            assert services.get_node_ip_address() in ("127.0.0.1", "::1")
    assert ray_constants.ENABLE_RAY_CLUSTER is before
