"""Experiment tracking: every trial as a run in MLflow (``--mlflow URI``) or W&B (``--wandb``).

Each trial becomes one run holding its parameters (searched and fixed), every rung's metrics at
its training step, every rung's image grid, and how it ended (COMPLETE, PRUNED, FAIL).

Why the trackers' own clients and not Ray Tune's ``MLflowLoggerCallback`` /
``WandbLoggerCallback``: Tune's callbacks log a result dict at Tune's report counter, so a rung
lands at step 1, 2, 3 instead of its training step; they cannot log an image (the rung's
folder is gone once Tune has copied it into a checkpoint); and they record an ASHA-stopped trial
as finished. The sweep already tells its observers
(:class:`hpo.dispatch.recorder.SweepObserver`) each rung, with its checkpoint folder, and each
trial's final state; these observers forward that to the tracker with its client
(``mlflow.MlflowClient``, ``wandb.init``).

A tracker that fails while the sweep runs (a server gone away) is logged once and then left
alone: tracking never stops a sweep. Before the sweep, :func:`check` fails in one line when the
extra is not installed or the MLflow server does not answer.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from hpo.sweep.spec import Sweep
from trials.api import STEP

log = logging.getLogger("hpo")

SAMPLES_NAME = "samples.png"  # trials.eval.evaluator.SAMPLES_NAME
_STATUS_MLFLOW = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED",
                  TrialState.FAIL: "FAILED"}


class TrackingError(ValueError):
    """A tracker cannot be used; the message is one line saying what to do."""


def _require(module: str, extra: str, flag: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackingError(
            f"{flag} needs the {module} package: pip install 'sd-lora-sweep[{extra}]' "
            f"(or pip install {module})") from None


def _run_params(sweep: Sweep, ot_trial: Any) -> dict[str, Any]:
    """Every parameter of the trial: the sampled ones and the sweep's fixed ones."""
    params = {p.name: p.value for p in sweep.parameters if p.is_fixed}
    params.update(ot_trial.params)
    return params


def _numbers(rung: dict[str, Any]) -> dict[str, float]:
    """The rung's scalar metrics (no lists, strings or missing values)."""
    return {k: float(v) for k, v in rung.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != STEP}


class _Guarded:
    """Calls into a tracker, so that its first failure is logged and tracking then stops."""

    name = "tracker"

    def __init__(self) -> None:
        self.broken = False

    def _safely(self, what: str, call, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # the tracker's failure must not stop the sweep
            self.broken = True
            log.warning("warning: %s: %s failed (%s: %s); no more tracking this sweep",
                        self.name, what, type(err).__name__, str(err).splitlines()[0][:300]
                        if str(err) else "")
            return None


class MlflowObserver(_Guarded):
    """One MLflow run per trial in the experiment named after the study."""

    name = "MLflow"

    def __init__(self, uri: str, sweep: Sweep, study_name: str) -> None:
        super().__init__()
        mlflow = _require("mlflow", "mlflow", "--mlflow")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.sweep = sweep
        experiment = self.client.get_experiment_by_name(study_name)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(study_name))
        self.runs: dict[int, str] = {}

    def _run(self, ot_trial: Any) -> str:
        number = ot_trial.number
        if number not in self.runs:
            run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}",
                                         tags={"optuna.trial": str(number)})
            run_id = run.info.run_id
            self.runs[number] = run_id
            for key, value in _run_params(self.sweep, ot_trial).items():
                self.client.log_param(run_id, key, value)
        return self.runs[number]

    def rung_saved(self, ot_trial: Any, rung: dict[str, Any], checkpoint_dir: str) -> None:
        self._safely("logging a rung", self._rung, ot_trial, rung, checkpoint_dir)

    def _rung(self, ot_trial: Any, rung: dict[str, Any], checkpoint_dir: str) -> None:
        run_id = self._run(ot_trial)
        step = int(rung[STEP])
        for key, value in _numbers(rung).items():
            self.client.log_metric(run_id, key, value, step=step)
        samples = Path(checkpoint_dir) / SAMPLES_NAME
        if samples.is_file():
            self.client.log_artifact(run_id, str(samples), artifact_path=f"step-{step:06d}")

    def trial_finished(self, ot_trial: Any, state: TrialState, attrs: dict[str, Any]) -> None:
        self._safely("finishing a run", self._finish, ot_trial, state, attrs)

    def _finish(self, ot_trial: Any, state: TrialState, attrs: dict[str, Any]) -> None:
        run_id = self._run(ot_trial)
        self.client.set_tag(run_id, "state", state.name)
        if attrs.get("fail_reason"):
            self.client.set_tag(run_id, "fail_reason", str(attrs["fail_reason"])[:4000])
        for key in ("best_step", "cpu_seconds", "gpu_seconds", "delta_vs_baseline"):
            value = attrs.get(key)
            if isinstance(value, int | float):
                self.client.log_metric(run_id, f"final_{key}", float(value))
        self.client.set_terminated(run_id, status=_STATUS_MLFLOW.get(state, "FINISHED"))


class WandbObserver(_Guarded):
    """One W&B run per trial, grouped by study. ``WANDB_MODE=offline`` keeps it local."""

    name = "W&B"

    def __init__(self, sweep: Sweep, study_name: str, study_dir: Path,
                 project: str | None = None, entity: str | None = None) -> None:
        super().__init__()
        self.wandb = _require("wandb", "wandb", "--wandb")
        self.sweep = sweep
        self.study_name = study_name
        self.dir = Path(study_dir)
        self.project = project or os.environ.get("WANDB_PROJECT") or study_name
        self.entity = entity or os.environ.get("WANDB_ENTITY")
        self.runs: dict[int, Any] = {}

    def _run(self, ot_trial: Any) -> Any:
        number = ot_trial.number
        if number not in self.runs:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.runs[number] = self.wandb.init(
                project=self.project, entity=self.entity, group=self.study_name,
                name=f"{self.study_name}-trial-{number}", dir=str(self.dir),
                config=_run_params(self.sweep, ot_trial), reinit="create_new")
        return self.runs[number]

    def rung_saved(self, ot_trial: Any, rung: dict[str, Any], checkpoint_dir: str) -> None:
        self._safely("logging a rung", self._rung, ot_trial, rung, checkpoint_dir)

    def _rung(self, ot_trial: Any, rung: dict[str, Any], checkpoint_dir: str) -> None:
        run = self._run(ot_trial)
        data: dict[str, Any] = dict(_numbers(rung))
        samples = Path(checkpoint_dir) / SAMPLES_NAME
        if samples.is_file():
            data["samples"] = self.wandb.Image(str(samples), caption=f"step {rung[STEP]}")
        run.log(data, step=int(rung[STEP]))

    def trial_finished(self, ot_trial: Any, state: TrialState, attrs: dict[str, Any]) -> None:
        self._safely("finishing a run", self._finish, ot_trial, state, attrs)

    def _finish(self, ot_trial: Any, state: TrialState, attrs: dict[str, Any]) -> None:
        run = self._run(ot_trial)
        run.summary["state"] = state.name
        for key in ("best_step", "cpu_seconds", "gpu_seconds", "delta_vs_baseline",
                    "fail_reason"):
            if attrs.get(key) is not None:
                run.summary[key] = attrs[key]
        run.finish(exit_code=1 if state == TrialState.FAIL else 0)
        self.runs.pop(ot_trial.number, None)


def check(mlflow_uri: str | None, use_wandb: bool) -> None:
    """Before Ray starts: the extras are installed and the MLflow server answers."""
    if use_wandb:
        _require("wandb", "wandb", "--wandb")
    if mlflow_uri:
        mlflow = _require("mlflow", "mlflow", "--mlflow")
        try:
            if mlflow_uri.startswith(("http://", "https://")):
                # The client retries a dead server with backoff for minutes; the server's
                # /health answers at once, so a wrong URI fails in seconds.
                urllib.request.urlopen(f"{mlflow_uri.rstrip('/')}/health", timeout=10).close()
            mlflow.MlflowClient(tracking_uri=mlflow_uri).search_experiments(max_results=1)
        except Exception as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise TrackingError(f"--mlflow {mlflow_uri}: the tracking server does not answer "
                                f"({type(err).__name__}: {first})") from None


def observers(sweep: Sweep, study_name: str, study_dir: Path, *, mlflow_uri: str | None,
              use_wandb: bool, wandb_project: str | None = None,
              wandb_entity: str | None = None) -> list[Any]:
    """The tracking observers the command line asks for (none by default)."""
    out: list[Any] = []
    if mlflow_uri:
        out.append(MlflowObserver(mlflow_uri, sweep, study_name))
    if use_wandb:
        out.append(WandbObserver(sweep, study_name, study_dir, wandb_project, wandb_entity))
    return out
