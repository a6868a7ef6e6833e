"""The study side of a Tune run: the stopper, and the recorder of every trial.

Why the study is written by :class:`StudyRecorder`, not by the searcher as in Ray's OptunaSearch:
OptunaSearch tells Optuna COMPLETE with the last (partial) score for trials ASHA stopped early,
never sees the result at which ASHA stops a trial, and stores Ray's report counter as the
step. The recorder reports each rung at its training step (with its preservation figures,
:mod:`hpo.verdict.preservation`), tells PRUNED for early-stopped trials (by ASHA or by racing),
FAIL with the reason for failed ones, and COMPLETE with the best (feasible) rung's score among
the rungs that scored every prompt. In a racing sweep it also tells the referee
(:mod:`hpo.dispatch.referee`) every rung a trial finishes.

A retried trial goes on from its last rung checkpoint (:func:`hpo.dispatch.tune._train_one`),
so the rungs recorded before its process died stay, each recorded once; an attempt that
started over instead (it died before its first rung) replaces the rungs it reports again.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState
from ray import tune

from hpo.dispatch.chaos import ChaosPlan
from hpo.dispatch.rungs import (
    NODE_ID,
    RESUMED_FROM_STEP,
    RESUMED_RUNGS,
    Rung,
    best_attrs,
    per_rung_attrs,
    totals_attrs,
)
from hpo.dispatch.searcher import StudySearch
from hpo.study.folders import disk_error, disk_error_line
from hpo.study.storage import (
    CHECKPOINT_PATHS,
    RESUME_CHECKPOINTS,
    clear_intermediate,
    jsonable,
    retry_locked,
    set_intermediate,
)
from hpo.sweep.spec import Sweep
from hpo.verdict import preservation
from hpo.verdict.paired import at_places, paired_or_none
from trials.api import CLIP_SCORE, RACED, STEP, RungReport


class SweepStopper(tune.Stopper):
    """Stops the whole experiment once :class:`StudyRecorder` has seen a sweep-wide error."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.reason is not None


class SweepObserver(Protocol):
    """Something else that wants to know about rungs and finished trials (artifacts, notes).

    An observer may also define ``trial_started(ot_trial)``,
    ``trial_retried(ot_trial, attempt, reason)`` and ``trial_resumed(ot_trial, step)``; the
    recorder calls them when they exist (the console does, the outputs that only keep results
    do not).
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
    """A recorder hook that runs :func:`_uninterrupted`, and stops the sweep on a write that
    failed for want of space or permission (every trial's record would fail alike)."""
    @functools.wraps(hook)
    def held(self: StudyRecorder, *args: Any, **kwargs: Any) -> None:
        with _uninterrupted():
            try:
                hook(self, *args, **kwargs)
            except Exception as err:
                full = disk_error(err)
                if full is None:
                    raise
                # Raised to Tune, it would be logged and the sweep go on (on_checkpoint), or
                # fail the trial as if its parameters were at fault (on_trial_complete).
                self.disk_error = self.disk_error or full
                self.stopper.reason = self.stopper.reason or disk_error_line(full)
    return held


class StudyRecorder(tune.Callback):
    """Writes each trial's rungs, final state and user attrs into the Optuna study."""

    def __init__(self, searcher: StudySearch, sweep: Sweep, baseline: float | None,
                 observers: Sequence[SweepObserver] = (), chaos: ChaosPlan | None = None,
                 referee: Any = None) -> None:
        self.searcher = searcher
        self.chaos = chaos
        self.sweep = sweep
        self.baseline = baseline
        self.observers = list(observers)
        self.referee = referee  # racing: told every rung a trial finishes
        self.rungs: dict[str, list[Rung]] = {}
        self.raced: dict[str, Rung] = {}  # trial -> the partial rung racing stopped
        self.checkpoints: dict[str, list[str]] = {}
        self.started: dict[str, float] = {}
        self.nodes: dict[str, str] = {}  # trial -> the Ray node it reported from last
        self.finished = 0
        self.stopper = SweepStopper()  # its reason: the error that stopped the sweep
        self.disk_error: OSError | None = None  # a failed write (full disk) that stopped it

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
        if RESUMED_FROM_STEP in result and CLIP_SCORE not in result:  # a retry went on
            ot_trial = self.searcher.optuna_trial(trial.trial_id)
            step = int(result[RESUMED_FROM_STEP])
            ot_trial.set_user_attr(RESUMED_FROM_STEP, step)
            if result.get(RESUMED_RUNGS) and not self.rungs.get(trial.trial_id):
                self._inherit(trial.trial_id, ot_trial, result[RESUMED_RUNGS])
            self._note_node(trial.trial_id, ot_trial, result.get(NODE_ID))
            self._tell("trial_resumed", ot_trial, step)
            return
        if RACED in result and STEP in result:  # racing stopped this rung part-way
            partial = RungReport.from_dict(result)  # its scores: the prompts it drew
            self.raced[trial.trial_id] = Rung(partial, node_id=result.get(NODE_ID))
            if self.referee is not None and partial.per_prompt:
                # ASHA's cutoff counts the trials it stops; racing's counts this one, partial
                # (hpo.verdict.racing: never the best, possibly the cutoff)
                number = self.searcher.optuna_trial(trial.trial_id).number
                self.referee.record.remote(partial.step, number, list(partial.per_prompt),
                                           _listed(partial.prompt_indices), False, True)
            return
        if CLIP_SCORE not in result or STEP not in result:
            return
        report = RungReport.from_dict(result)
        rung = Rung(report, self._preservation(report), result.get(NODE_ID))
        self._went_back(trial.trial_id, rung.step)
        self.rungs.setdefault(trial.trial_id, []).append(rung)
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
        if not self.sweep.multi_objective:  # Optuna keeps no intermediate values for several
            # A rung of a prompt subset (ASHA's alone) too: every trial scores the same subset
            # there, and TPE compares a pruned trial's value only with others at its step.
            set_intermediate(self.searcher.storage, self.searcher.storage_id(trial.trial_id),
                             rung.step, float(rung.get(self.sweep.metric)))
        if self.referee is not None:
            usable = self.sweep.require is None or \
                preservation.is_feasible(rung.get("constraints")) is True
            self.referee.record.remote(rung.step, ot_trial.number, list(report.per_prompt),
                                       _listed(report.prompt_indices), usable)
        self._note_node(trial.trial_id, ot_trial, rung.node_id)

    def _inherit(self, trial_id: str, ot_trial: optuna.Trial, reports: list[dict]) -> None:
        """A trial re-queued after its driver died goes on from its predecessor's last rung:
        that trial's rungs (from the checkpoint) and rung checkpoints (from the study) become
        this one's, so its curve, its best rung and that rung's LoRA are as if never cut."""
        rungs = []
        for raw in reports:
            report = RungReport.from_dict(raw)
            rungs.append(Rung(report, self._preservation(report)))
        self.rungs[trial_id] = rungs
        self.checkpoints[trial_id] = [str(p) for p in
                                      ot_trial.user_attrs.get(RESUME_CHECKPOINTS, [])][:len(rungs)]
        if not self.sweep.multi_objective:
            for g in rungs:
                set_intermediate(self.searcher.storage, self.searcher.storage_id(trial_id),
                                 g.step, float(g.get(self.sweep.metric)))

    def _note_node(self, trial_id: str, ot_trial: optuna.Trial, node: str | None) -> None:
        if node and self.nodes.get(trial_id) != node:
            # Where a running trial is, for whoever watches the study (set again on retries).
            self.nodes[trial_id] = node
            ot_trial.set_user_attr(NODE_ID, node)

    @_held
    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        paths = self.checkpoints.setdefault(trial.trial_id, [])
        paths.append(checkpoint.path)
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
        # In the study at once: if the driver dies, the re-queued trial goes on from here.
        retry_locked(lambda: ot_trial.set_user_attr(CHECKPOINT_PATHS, [str(p) for p in paths]))
        rungs = self.rungs.get(trial.trial_id, [])
        if len(rungs) >= len(paths):  # checkpoint i belongs to rung i
            for observer in self.observers:
                observer.rung_saved(ot_trial, rungs[len(paths) - 1].as_dict(), checkpoint.path)

    def _went_back(self, trial_id: str, step: int) -> None:
        """Forget the rungs at or after ``step`` when an attempt reports such a step again: it
        started over, or from an older checkpoint, and the study keeps one curve, its own."""
        rungs = self.rungs.get(trial_id, [])
        kept = [g for g in rungs if g.step < step]
        if len(kept) == len(rungs):
            return
        self.rungs[trial_id] = kept
        self.checkpoints[trial_id] = self.checkpoints.get(trial_id, [])[:len(kept)]
        storage_id = self.searcher.storage_id(trial_id)
        clear_intermediate(self.searcher.storage, storage_id)
        if not self.sweep.multi_objective:
            for g in kept:
                set_intermediate(self.searcher.storage, storage_id, g.step,
                                 float(g.get(self.sweep.metric)))

    @_held
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The retried trial goes on from its last rung checkpoint (Tune's latest, the last rung
        # recorded here): the rungs so far stay, and it reports only the later ones. One that
        # starts over reports its rungs again, and _went_back drops the old ones then.
        self.raced.pop(trial.trial_id, None)
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
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
        return not rungs or rungs[-1].step < rungs[-1].report.max_train_steps

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
        elif trial.trial_id in self.raced:
            self._finish(trial, TrialState.PRUNED)
        elif not rungs:
            self._finish(trial, TrialState.FAIL, reason="the trial ended without a scored rung")
        elif rungs[-1].step < rungs[-1].report.max_train_steps:
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

    def _preservation(self, report: RungReport) -> dict[str, Any]:
        """The rung's control Δ, drift and leak with paired statistics, and its constraint
        values under the sweep's requirement (hpo.verdict.preservation)."""
        if not report.control_per_prompt:
            return {}  # nothing measured: no storage read on the driver for this rung
        base = at_places(self.searcher.study.user_attrs.get("baseline_control_per_prompt"),
                         _listed(report.prompt_indices))
        figures = preservation.control_stats(report.to_dict(), base)
        if figures and self.sweep.require is not None:
            figures["constraints"] = preservation.constraint_values(self.sweep.require,
                                                                    figures)
        return figures

    def _finish(self, trial: Any, state: TrialState, reason: str | None = None) -> None:
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
        rungs = self.rungs.get(trial.trial_id, [])
        raced = self.raced.get(trial.trial_id)
        attrs: dict[str, Any] = {"ray_trial_id": trial.trial_id,
                                 "wall_seconds": time.time() - self.started.get(
                                     trial.trial_id, time.time())}
        value = None
        values: list[float] | None = None
        # The trial's running totals are in its last report: a raced rung's, if it has one.
        last = raced or (rungs[-1] if rungs else None)
        if last is not None:
            attrs.update(totals_attrs(last, self.sweep.resources))
            attrs.update(per_rung_attrs(rungs, raced))
        # Only full rungs at a step the sweep may export can be the trial's result (a subset's
        # score is not comparable with a full one; a screening rung drew no control images).
        full = [i for i, g in enumerate(rungs) if g.report.may_be_result]
        if full:
            # The best rung by the first objective (ASHA's metric too); with several
            # objectives the trial's values are all taken at that rung.
            metric = self.sweep.metric
            pick = max if self.sweep.goal == "maximize" else min
            # With a preservation requirement, the best rung that meets it (its LoRA is the
            # one exported); only when none does, the best rung, which is then infeasible.
            feasible = [i for i in full if preservation.is_feasible(rungs[i].get("constraints"))]
            best_i = pick(feasible or full,
                          key=lambda i: _finite(rungs[i].get(metric), self.sweep.goal))
            best = rungs[best_i]
            value = float(best.get(metric) if best.get(metric) is not None else math.nan)
            values = [float(best.get(o.name)) if best.get(o.name) is not None else math.nan
                      for o in self.sweep.objectives] or [value]
            if state == TrialState.COMPLETE and not all(math.isfinite(v) for v in values):
                state = TrialState.FAIL
                reason = f"no finite value of every objective at step {best.step}: {values}"
            ckpts = self.checkpoints.get(trial.trial_id, [])
            lora = ckpts[best_i] if best_i < len(ckpts) else None
            attrs.update(
                **best_attrs(best),
                delta_vs_baseline=None if self.baseline is None
                else float(best.report.clip_score) - self.baseline,
                **self._paired_vs_baseline(_listed(best.report.per_prompt)),
                lora_path=None if lora is None else str(Path(lora)),
            )
        elif state == TrialState.COMPLETE:
            state, reason = TrialState.FAIL, "no rung that may be the result (every prompt " \
                "scored, at a step the sweep may export)"
        if reason:
            attrs["fail_reason"] = reason
        if self.chaos:  # the same draw the trial made, so the soak can account for it
            steps = self.sweep.trial_config(trial.config, output_dir=Path("."),
                                            cache_dir=Path(".")).params.max_train_steps
            attrs["injected_fault"] = self.chaos.fault_for(trial.trial_id, steps)
        for key, val in attrs.items():
            ot_trial.set_user_attr(key, jsonable(val))
        for key, bound in (attrs.get("constraints") or {}).items():
            # Optuna's own record (Optuna 5): TPE and NSGA-II learn the feasible region from it,
            # optuna-dashboard marks infeasible trials, the winner is chosen among feasible ones.
            # (Not `value`: that is the trial's objective value, told below.)
            retry_locked(lambda n=key, v=bound: ot_trial.set_constraint(n, v))
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


def _listed(values: Sequence[Any] | None) -> list[Any] | None:
    """A report's tuple as the list the referee and the paired statistics take."""
    return None if values is None else list(values)


def _finite(value: Any, goal: str) -> float:
    """A rung's metric for ranking rungs; a missing or NaN value ranks last."""
    if value is None or not math.isfinite(float(value)):
        return -math.inf if goal == "maximize" else math.inf
    return float(value)
