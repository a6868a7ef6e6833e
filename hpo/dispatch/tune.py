"""Everything that touches Ray: starting it, the trainable, the searcher and the study recorder.

Keeping Ray's API in this one module means an upgrade of Ray touches one file. The trial code
(``trials``) never imports Ray: the trainable here adapts ``trials.train.loop.run_trial``'s
``report`` callback to ``ray.tune.report``.

Why the study is written by :class:`StudyRecorder` and not by ``OptunaSearch`` itself:
OptunaSearch tells Optuna COMPLETE with the last (partial) score for trials ASHA stopped early,
never sees the result at which ASHA stops a trial, and stores Ray's report counter as the
step. The recorder reports each rung at its training step, tells PRUNED for early-stopped
trials, FAIL with the reason for failed ones, and COMPLETE with the best rung's score.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TextIO

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from hpo.dispatch.chaos import ChaosPlan
from hpo.dispatch.cluster import check_address
from hpo.study.storage import clear_intermediate, jsonable, retry_locked, set_intermediate
from hpo.sweep.space import define_by_run, make_sampler
from hpo.sweep.spec import Sweep
from hpo.verdict import preservation
from hpo.verdict.paired import paired_or_none
from trials.config import TrialConfig

# Results that carry an error but no score must not trip Tune's metric check; ASHA already
# ignores results without the metric.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
# Ctrl-C: Tune's own handler ends the run gracefully, waiting up to 5 s for the trials' actors to
# stop, and prints "Resume experiment with: Tuner.restore(...)", which this project never uses
# (the study is the state). Without it Ctrl-C stops the driver at once; the recorder holds it
# until a study write in progress is done (_uninterrupted), and hpo.run re-queues what ran.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# The classic progress table (in driver.log; on the console with --verbose) shows each trial's
# parameters beside its score.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
RUNG_KEYS = ("step", "max_train_steps", "clip_score", "clip_score_stderr", "clip_i",
             "clip_i_holdout", "dino_holdout",
             "per_prompt", "train_loss", "train_seconds", "eval_seconds", "setup_seconds",
             "samples_per_second", "peak_memory_mb", "device", "cache_hit", "node_id", "precision",
             # preservation (trials.eval.preservation, trials.train.preserve)
             "control_score", "control_score_stderr", "control_per_prompt", "drift",
             "drift_per_prompt", "leak", "leak_per_prompt", "preservation",
             "preservation_weight", "preservation_loss")


# The best rung's preservation figures, copied into the trial's user attrs.
PRESERVATION_ATTRS = ("control_score", "control_per_prompt", "control_delta", "control_n",
                      "control_delta_stderr", "control_delta_p_value", "drift", "drift_stderr",
                      "leak", "leak_stderr", "leak_p_value", "constraints", "preservation",
                      "preservation_weight", "preservation_loss")


def start_ray(address: str | None, num_cpus: int | None = None,
              output: RayOutput | None = None) -> dict[str, float]:
    """Connect to a cluster (``auto`` or HOST:PORT) or start a small local one.

    With ``output``, the workers' stdout and stderr go where it says (and Ray started here is
    shut down when it closes). Returns the cluster's total resources (CPU, GPU). An address
    where no Ray answers raises :class:`~hpo.dispatch.cluster.AddressError` within seconds
    (``ray.init`` would retry on and on), checked here too since the cluster may have gone
    since the pre-flight check.
    """
    if not ray.is_initialized():
        if address:
            check_address(address)
            ray.init(address=address, log_to_driver=True)
        else:
            # num_cpus None lets Ray size the node itself, from the container's CPU quota
            # (os.cpu_count() would count the host's CPUs on a pod and over-subscribe).
            # configure_logging=False would clear the "ray" logger's handlers (driver.log's:
            # hpo.outputs.console.driver_log), and its warnings would reach stderr anyway.
            ray.init(num_cpus=num_cpus, include_dashboard=False,
                     object_store_memory=256 * 2**20, log_to_driver=True)
        if output is not None:
            output.started_ray = True
    if output is not None:
        output.divert_worker_logs()
    return dict(ray.cluster_resources())


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


def node_resources() -> list[dict[str, float]]:
    """Total resources of each live node of the connected cluster."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def trial_resources(sweep: Sweep, cluster: dict[str, float]) -> dict[str, float]:
    """What each trial asks for; GPUs only when the cluster has some."""
    res = {"cpu": sweep.resources.cpu_per_trial}
    if cluster.get("GPU", 0) > 0:
        res["gpu"] = sweep.resources.gpu_per_trial
    return res


def concurrency(sweep: Sweep, cluster: dict[str, float], requested: int | None) -> int:
    """How many trials run at once: the cluster's slots, capped by the sweep and the CLI."""
    res = trial_resources(sweep, cluster)
    slots = int(cluster.get("CPU", 1) // res["cpu"])
    if "gpu" in res:
        slots = min(slots, int(cluster["GPU"] // res["gpu"]))
    for cap in (sweep.resources.max_concurrent, requested):
        if cap:
            slots = min(slots, cap)
    return max(1, slots)


def _train_one(config: dict[str, Any], sweep: Sweep, cache_dir: str,
               chaos: ChaosPlan | None = None) -> None:
    """The function trainable: one trial, reported to Tune rung by rung."""
    from trials.train.loop import run_trial

    context = tune.get_context()
    work = Path(context.get_trial_dir()) / "rungs"
    trial_config = sweep.trial_config(config, output_dir=work, cache_dir=Path(cache_dir))
    fault = chaos.fault_for(context.get_trial_id(), trial_config.params.max_train_steps) \
        if chaos else None
    if fault:
        trial_config = replace(trial_config, extras={**trial_config.extras, "fault": fault})

    def report(step: int, metrics: dict[str, Any], checkpoint_dir: Path) -> bool:
        # Tune copies the folder into its storage; the rung folder is then no longer needed.
        tune.report({**metrics, "node_id": ray.get_runtime_context().get_node_id()},
                    checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return False  # ASHA stops the trial from outside

    try:
        run_trial(trial_config, report)
    except Exception as err:  # a failed trial must not stop the sweep, nor be retried blindly
        tune.report({"trial_error": f"{type(err).__name__}: {err}",
                     "sweep_error": is_sweep_wide(err)})


def is_sweep_wide(err: Exception) -> bool:
    """Whether an error would fail every trial alike (bad data, model or config), not this
    trial's parameters: such an error stops the sweep instead of burning its budget."""
    from trials.data.folder import DataError
    from trials.models.components import ModelError
    from trials.validation import ConfigError

    return isinstance(err, DataError | ModelError | ConfigError)


class SweepStopper(tune.Stopper):
    """Stops the whole experiment once :class:`StudyRecorder` has seen a sweep-wide error."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.reason is not None


class StudySearch(OptunaSearch):
    """OptunaSearch that leaves writing results to :class:`StudyRecorder`."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        # The Optuna study in its database is the search state; resuming reads it, not a
        # pickled searcher (Tuner.restore is never used: see hpo.run).
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the searcher into tuner.pkl on the (maybe shared) storage path; the
        # storage object holds the database URL with its password, and is not needed there.
        state = self.__dict__.copy()
        for key in ("_storage", "_ot_study", "_ot_trials"):
            state.pop(key, None)
        return state

    def optuna_trial(self, trial_id: str) -> optuna.Trial:
        return self._ot_trials[trial_id]

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


class SweepObserver(Protocol):
    """Something else that wants to know about rungs and finished trials (artifacts, notes).

    An observer may also define ``trial_started(ot_trial)`` and
    ``trial_retried(ot_trial, attempt, reason)``; the recorder calls them when they exist (the
    console does, the outputs that only keep results do not).
    """

    def rung_saved(self, ot_trial: optuna.Trial, rung: dict[str, Any],
                   checkpoint_dir: str) -> None: ...

    def trial_finished(self, ot_trial: optuna.Trial, state: TrialState,
                       attrs: dict[str, Any]) -> None: ...


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it: a trial's record in the study (its
    rung, its state and attrs, what the observers write) is never cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _held(hook: Callable[..., None]) -> Callable[..., None]:
    """A recorder hook that runs :func:`_uninterrupted`."""
    @functools.wraps(hook)
    def held(*args: Any, **kwargs: Any) -> None:
        with _uninterrupted():
            hook(*args, **kwargs)
    return held


class StudyRecorder(tune.Callback):
    """Writes each trial's rungs, final state and user attrs into the Optuna study."""

    def __init__(self, searcher: StudySearch, sweep: Sweep, baseline: float | None,
                 observers: Sequence[SweepObserver] = (), chaos: ChaosPlan | None = None
                 ) -> None:
        self.searcher = searcher
        self.chaos = chaos
        self.sweep = sweep
        self.baseline = baseline
        self.observers = list(observers)
        self.rungs: dict[str, list[dict[str, Any]]] = {}
        self.checkpoints: dict[str, list[str]] = {}
        self.started: dict[str, float] = {}
        self.nodes: dict[str, str] = {}  # trial -> the Ray node it reported from last
        self.finished = 0
        self.stopper = SweepStopper()  # its reason: the error that stopped the sweep

    @_held
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.time())
        self._tell("trial_started", self.searcher.optuna_trial(trial.trial_id))

    def _tell(self, event: str, *args: Any) -> None:
        """Call the optional ``event`` hook of each observer that has one."""
        for observer in self.observers:
            hook = getattr(observer, event, None)
            if hook is not None:
                hook(*args)

    @_held
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if "clip_score" not in result or "step" not in result:
            return
        rung = {k: result[k] for k in RUNG_KEYS if k in result}
        rung.update(self._preservation(rung))
        self.rungs.setdefault(trial.trial_id, []).append(rung)
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
        if not self.sweep.multi_objective:  # Optuna keeps no intermediate values for several
            set_intermediate(self.searcher.study, ot_trial._trial_id, int(result["step"]),
                             float(result[self.sweep.metric]))
        node = result.get("node_id")
        if node and self.nodes.get(trial.trial_id) != node:
            # Where a running trial is, for whoever watches the study (set again on retries).
            self.nodes[trial.trial_id] = node
            ot_trial.set_user_attr("node_id", node)

    @_held
    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        paths = self.checkpoints.setdefault(trial.trial_id, [])
        paths.append(checkpoint.path)
        rungs = self.rungs.get(trial.trial_id, [])
        if len(rungs) >= len(paths):  # checkpoint i belongs to rung i
            ot_trial = self.searcher.optuna_trial(trial.trial_id)
            for observer in self.observers:
                observer.rung_saved(ot_trial, rungs[len(paths) - 1], checkpoint.path)

    @_held
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The retried trial starts from step 0; its rungs are reported again, and everything
        # the study records for it must come from that one attempt.
        self.rungs.pop(trial.trial_id, None)
        self.checkpoints.pop(trial.trial_id, None)
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
        clear_intermediate(self.searcher.study, ot_trial._trial_id)
        ot_trial.set_user_attr("attempt", trial.run_metadata.num_failures + 1)
        self._tell("trial_retried", ot_trial, trial.run_metadata.num_failures + 1,
                   _last_error_line(trial))

    def _leave_for_requeue(self, trial: Any, reason: str) -> None:
        """Not this trial's fault: leave it RUNNING, so the driver marks it interrupted
        (uncounted) and queues its parameters again."""
        self.searcher.optuna_trial(trial.trial_id).set_user_attr("fail_reason", reason)

    def _stopped_with_the_sweep(self, trial: Any, last: dict[str, Any]) -> bool:
        """Whether a trial that ends now was cut short by the sweep-wide stop (stopped, or its
        process killed, before its last step) rather than ending on its own."""
        if self.stopper.reason is None or ("trial_error" in last and not last.get("sweep_error")):
            return False
        rungs = self.rungs.get(trial.trial_id, [])
        return not rungs or rungs[-1]["step"] < rungs[-1]["max_train_steps"]

    @_held
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        rungs = self.rungs.get(trial.trial_id, [])
        if last.get("sweep_error"):
            self._leave_for_requeue(trial, str(last["trial_error"]))
            self.stopper.reason = self.stopper.reason or str(last["trial_error"])  # stop all
            return
        if self._stopped_with_the_sweep(trial, last):
            # Neither FAIL nor PRUNED: ASHA did not stop it, and it must not use up --trials.
            self._leave_for_requeue(trial, f"stopped with the sweep, before its last step: "
                                           f"{self.stopper.reason}"[:2000])
            return
        if "trial_error" in last:
            self._finish(trial, TrialState.FAIL, reason=str(last["trial_error"]))
        elif not rungs:
            self._finish(trial, TrialState.FAIL, reason="the trial ended without a scored rung")
        elif rungs[-1]["step"] < rungs[-1]["max_train_steps"]:
            self._finish(trial, TrialState.PRUNED)
        else:
            self._finish(trial, TrialState.COMPLETE)

    @_held
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        text = _last_error_line(trial)
        if self._stopped_with_the_sweep(trial, {}):  # its process killed by the stop
            self._leave_for_requeue(trial, f"its process ended while the sweep stopped for: "
                                           f"{self.stopper.reason} ({text})"[:2000])
            return
        attempts = trial.run_metadata.num_failures
        self._finish(trial, TrialState.FAIL,
                     reason=f"the trial process failed {attempts} time(s): {text}"[:2000])

    def _paired_vs_baseline(self, per_prompt: list[float] | None) -> dict[str, Any]:
        """The paired standard error (over prompts) of the delta against the baseline."""
        base = self.searcher.study.user_attrs.get("baseline_per_prompt")
        paired = paired_or_none(per_prompt, base)
        if paired is None:
            return {}
        return {"delta_vs_baseline_stderr": paired.stderr,
                "delta_vs_baseline_p_value": paired.p_value}

    def _preservation(self, rung: dict[str, Any]) -> dict[str, Any]:
        """The rung's control Δ, drift and leak with paired statistics, and its constraint
        values under the sweep's requirement (hpo.verdict.preservation)."""
        base = self.searcher.study.user_attrs.get("baseline_control_per_prompt")
        figures = preservation.control_stats(rung, base)
        if figures and self.sweep.require is not None:
            figures["constraints"] = preservation.constraint_values(self.sweep.require,
                                                                    figures)
        return figures

    def _finish(self, trial: Any, state: TrialState, reason: str | None = None) -> None:
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
        rungs = self.rungs.get(trial.trial_id, [])
        attrs: dict[str, Any] = {"ray_trial_id": trial.trial_id,
                                 "wall_seconds": time.time() - self.started.get(
                                     trial.trial_id, time.time())}
        value = None
        values: list[float] | None = None
        if rungs:
            # The best rung by the first objective (ASHA's metric too); with several
            # objectives the trial's values are all taken at that rung.
            metric = self.sweep.metric
            pick = max if self.sweep.goal == "maximize" else min
            # With a preservation requirement, the best rung that meets it (its LoRA is the
            # one exported); only when none does, the best rung, which is then infeasible.
            feasible = [i for i, r in enumerate(rungs)
                        if preservation.is_feasible(r.get("constraints"))]
            best_i = pick(feasible or range(len(rungs)),
                          key=lambda i: _finite(rungs[i].get(metric), self.sweep.goal))
            best, last = rungs[best_i], rungs[-1]
            value = float(best.get(metric) if best.get(metric) is not None else math.nan)
            values = [float(best[o.name]) if best.get(o.name) is not None else math.nan
                      for o in self.sweep.objectives] or [value]
            if state == TrialState.COMPLETE and not all(math.isfinite(v) for v in values):
                state = TrialState.FAIL
                reason = f"no finite value of every objective at step {best['step']}: {values}"
            ckpts = self.checkpoints.get(trial.trial_id, [])
            lora = ckpts[best_i] if best_i < len(ckpts) else None
            busy = last["train_seconds"] + last["eval_seconds"] + last.get("setup_seconds", 0)
            res = self.sweep.resources
            attrs.update(
                score_per_rung={str(r["step"]): r["clip_score"] for r in rungs},
                best_step=best["step"],
                clip_score_stderr=best["clip_score_stderr"],
                clip_i=best.get("clip_i"),
                clip_i_holdout=best.get("clip_i_holdout"),
                dino_holdout=best.get("dino_holdout"),
                per_prompt=best.get("per_prompt"),
                delta_vs_baseline=None if self.baseline is None
                else float(best["clip_score"]) - self.baseline,
                **self._paired_vs_baseline(best.get("per_prompt")),
                train_seconds=last["train_seconds"],
                eval_seconds=last["eval_seconds"],
                setup_seconds=last.get("setup_seconds"),
                device=last.get("device"),
                node_id=last.get("node_id"),  # the Ray node that ran the trial's last rung
                gpu_seconds=busy * res.gpu_per_trial if last.get("device") == "cuda" else 0.0,
                cpu_seconds=busy * res.cpu_per_trial,
                peak_memory_mb=last.get("peak_memory_mb"),
                samples_per_second=last.get("samples_per_second"),
                last_step=last["step"],
                precision=last.get("precision"),
                lora_path=None if lora is None else str(Path(lora)),
                **{k: best.get(k) for k in PRESERVATION_ATTRS if best.get(k) is not None},
            )
        if reason:
            attrs["fail_reason"] = reason
        if self.chaos:  # the same draw the trial made, so the soak can account for it
            steps = self.sweep.trial_config(trial.config, output_dir=Path("."),
                                            cache_dir=Path(".")).params.max_train_steps
            attrs["injected_fault"] = self.chaos.fault_for(trial.trial_id, steps)
        for key, val in attrs.items():
            ot_trial.set_user_attr(key, jsonable(val))
        for name, value in (attrs.get("constraints") or {}).items():
            # Optuna's own record (Optuna 5): TPE and NSGA-II learn the feasible region from it,
            # optuna-dashboard marks infeasible trials, the winner is chosen among feasible ones.
            retry_locked(lambda n=name, v=value: ot_trial.set_constraint(n, v))
        for observer in self.observers:
            observer.trial_finished(ot_trial, state, attrs)
        study = self.searcher.study
        if state == TrialState.COMPLETE:
            retry_locked(lambda: study.tell(
                ot_trial, values if self.sweep.multi_objective else value))
        else:
            retry_locked(lambda: study.tell(ot_trial, state=state))
        self.finished += 1


def _last_error_line(trial: Any) -> str:
    """The last line of the traceback Tune kept for a failed trial (its error), or ''."""
    if trial.error_file and Path(trial.error_file).is_file():
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else ""
    return ""


def _finite(value: Any, goal: str) -> float:
    """A rung's metric for ranking rungs; a missing or NaN value ranks last."""
    if value is None or not math.isfinite(float(value)):
        return -math.inf if goal == "maximize" else math.inf
    return float(value)


def _absolute(storage_path: str) -> str:
    """Tune wants an absolute path or a URI (s3://, gs://, ...)."""
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def run_baseline(sweep: Sweep, config: TrialConfig, cluster: dict[str, float]) -> dict[str, Any]:
    """Score the base model (no LoRA) on a worker with a trial's resources."""
    from trials.train.loop import run_baseline as baseline_task

    res = trial_resources(sweep, cluster)
    task = ray.remote(num_cpus=res["cpu"], num_gpus=res.get("gpu", 0), max_retries=1)(
        baseline_task)
    return ray.get(task.remote(config))


def rescore_tasks(sweep: Sweep, cluster: dict[str, float],
                  jobs: dict[str, tuple[TrialConfig, str | None]], seed: int,
                  images_per_prompt: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rescore LoRAs (None = the base model) in parallel Ray tasks with a trial's resources.

    ``jobs`` maps a key to (config, LoRA folder). Yields ``(key, scores)`` as each task ends,
    so the caller can record it at once; a task that raised yields ``{"error": ...}``.
    """
    from trials.train.rescore import rescore

    res = trial_resources(sweep, cluster)
    task = ray.remote(num_cpus=res["cpu"], num_gpus=res.get("gpu", 0), max_retries=1)(rescore)
    pending = {task.remote(config, None if lora is None else Path(lora), seed,
                           images_per_prompt): key for key, (config, lora) in jobs.items()}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        try:
            yield key, ray.get(ready[0])
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None) or err
            yield key, {"error": f"{type(cause).__name__}: {cause}"[:2000]}


def confirmation_scorer(sweep: Sweep, address: str | None, output: RayOutput | None = None
                        ) -> Callable[[dict[str, tuple[TrialConfig, str | None]], int, int],
                                      Iterator[tuple[str, dict[str, Any]]]]:
    """The ``score`` of :func:`hpo.verdict.confirm.confirm`: :func:`rescore_tasks` on the Ray
    cluster at ``address`` (or a local one), started only when there is something to score."""
    def score(jobs: dict[str, tuple[TrialConfig, str | None]], seed: int,
              images_per_prompt: int) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from rescore_tasks(sweep, start_ray(address, output=output), jobs, seed,
                                 images_per_prompt)

    return score


def run_sweep(sweep: Sweep, *, study_name: str, storage: optuna.storages.BaseStorage,
              n_new: int, slots: int, cluster: dict[str, float], storage_path: str,
              cache_dir: Path, baseline: float | None,
              observers: Sequence[SweepObserver] = (),
              chaos: ChaosPlan | None = None,
              sampler: optuna.samplers.BaseSampler | None = None,
              output: RayOutput | None = None) -> StudyRecorder:
    """Run ``n_new`` more trials with Tune; the study records every one of them.

    Tune's status table goes where ``output`` says (by default the console)."""
    if sweep.multi_objective:  # a multi-objective study; Tune's ASHA uses the first
        metrics: Any = [o.name for o in sweep.objectives]
        modes: Any = ["max" if o.goal == "maximize" else "min" for o in sweep.objectives]
    else:
        metrics, modes = sweep.metric, "max" if sweep.goal == "maximize" else "min"
    searcher = StudySearch(
        space=define_by_run(sweep), metric=metrics, mode=modes,
        sampler=sampler or make_sampler(sweep),
        study_name=study_name, storage=storage)
    recorder = StudyRecorder(searcher, sweep, baseline, observers, chaos)
    mode = "max" if sweep.goal == "maximize" else "min"
    if sweep.early_terminate:
        scheduler: Any = ASHAScheduler(
            time_attr="step", metric=sweep.metric, mode=mode, max_t=sweep.max_steps,
            grace_period=sweep.early_terminate.grace_steps,
            reduction_factor=sweep.early_terminate.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(
        tune.with_parameters(_train_one, sweep=sweep, cache_dir=str(cache_dir), chaos=chaos),
        trial_resources(sweep, cluster))
    searched = [p.name for p in sweep.searched]
    reporter = (output or RayOutput(None)).reporter(
        parameter_columns=searched,
        metric_columns=["step", *dict.fromkeys(["clip_score", *(o.name for o in sweep.objectives)]),
                        "clip_score_stderr", "train_loss"],
        # Not sort_by_metric: Ray 2.60 crashes sorting a finished trial that has no score.
        max_report_frequency=15, metric=sweep.metric, mode=mode)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=n_new,
                                    max_concurrent_trials=slots, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=_absolute(storage_path),
            callbacks=[recorder], progress_reporter=reporter, verbose=1, stop=recorder.stopper,
            failure_config=tune.FailureConfig(max_failures=sweep.resources.max_retries),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=sweep.metric,
                checkpoint_score_order=mode)),
    )
    tuner.fit()
    return recorder
