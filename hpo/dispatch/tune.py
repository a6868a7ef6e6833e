"""Running a sweep on Ray: starting it, the trainable, the baseline and confirmation tasks.

Keeping Ray's API in this wing (this module, :mod:`hpo.dispatch.recorder`,
:mod:`hpo.dispatch.searcher`, :mod:`hpo.dispatch.ray_output`, and the names Ray keeps private
in :mod:`hpo.dispatch.ray_private`) means an upgrade of Ray touches one folder. The trial code
(``trials``) never imports Ray: the trainable here adapts ``trials.train.loop.run_trial``'s
``report`` callback to ``ray.tune.report``; :class:`~hpo.dispatch.recorder.StudyRecorder`
writes what it reports into the study.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from hpo.dispatch import ray_private
from hpo.dispatch.chaos import ChaosPlan
from hpo.dispatch.cluster import check_address
from hpo.dispatch.ray_output import RayOutput
from hpo.dispatch.recorder import StudyRecorder, SweepObserver
from hpo.dispatch.referee import asker as referee_asker
from hpo.dispatch.referee import start as referee_start
from hpo.dispatch.rungs import NODE_ID, RESUME_FROM, RESUMED_FROM_STEP, RESUMED_RUNGS
from hpo.dispatch.searcher import StudySearch
from hpo.sweep.space import define_by_run, make_sampler
from hpo.sweep.spec import Sweep
from trials.api import (
    CLIP_SCORE,
    CLIP_SCORE_STDERR,
    PER_PROMPT,
    STEP,
    TRAIN_LOSS,
    RungReport,
    TrialConfig,
    TrialError,
)

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
            # Loopback only: a sweep on one machine needs no socket another machine can reach
            # (hpo.dispatch.ray_private.loopback_node says why this is not an argument).
            with ray_private.loopback_node():
                ray.init(num_cpus=num_cpus, include_dashboard=False,
                         object_store_memory=256 * 2**20, log_to_driver=True)
        if output is not None:
            output.started_ray = True
    if output is not None:
        output.divert_worker_logs()
    return dict(ray.cluster_resources())


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
               chaos: ChaosPlan | None = None, referee: Any = None) -> None:
    """The function trainable: one trial, reported to Tune rung by rung; with a ``referee``
    (racing) it asks it part-way through each rung whether to go on.

    A retried trial (its process died; ``FailureConfig.max_failures``) goes on from Tune's
    latest checkpoint, its last rung (:func:`trials.api.run_trial`'s ``resume_from``), and
    first reports ``resumed_from_step`` alone, so the study and the console say so at once. A
    trial re-queued after its driver died (``config[RESUME_FROM]``, from the study) goes on
    from its predecessor's last rung checkpoint the same way, and first reports the rungs
    before it too (``resumed_rungs``).
    """
    from trials.api import resume_step, resumed_rungs, run_trial

    context = tune.get_context()
    work = Path(context.get_trial_dir()) / "rungs"
    config = dict(config)
    requeued = config.pop(RESUME_FROM, None)  # a trial re-queued after its driver died
    trial_config = sweep.trial_config(config, output_dir=work, cache_dir=Path(cache_dir))
    fault = chaos.fault_for(context.get_trial_id(), trial_config.params.max_train_steps) \
        if chaos else None
    if fault:
        if fault["kind"] == "crash":
            # The mark that lets the retry go past the crash must be where every attempt looks:
            # Tune's trial dir is not (a fresh actor gets the driver's staging folder, a reused
            # one the working directory: FunctionTrainable.setup and .reset), so the soak's
            # crashes in reused actors struck their retries too.
            fault = {**fault, "mark_dir": str(Path(cache_dir) / "faults" / context.get_trial_id())}
        trial_config = replace(trial_config, extras={**trial_config.extras, "fault": fault})

    def report(step: int, rung: RungReport, checkpoint_dir: Path) -> bool:
        # The Ray border: Tune takes a flat dict of JSON-able values; the recorder reads it
        # back as a RungReport (absent measures are left out, so ASHA sees only numbers).
        result = {**rung.to_dict(), NODE_ID: ray.get_runtime_context().get_node_id()}
        if rung.is_raced:
            # A partial rung: no checkpoint to export; the recorder keeps it in the study as the
            # trial's `raced` record (never an intermediate value for TPE). ASHA does get its
            # mean over the prompts drawn (an unbiased estimate of the full score, the shared
            # order being a shuffle): ASHA records every trial that reaches a milestone, and a
            # rung that only ever recorded the trials racing let through would keep its cutoff
            # high and stop trials the fixed sweep keeps. The trial ends here either way.
            tune.report(result)
        else:
            # Tune copies the folder into its storage; the rung folder is then not needed.
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return False  # ASHA stops the trial from outside

    try:
        race = None if referee is None \
            else referee_asker(referee, trial_config.params.max_train_steps)
        # Tune's own checkpoint (this trial's last attempt died), else the one the study kept
        # for a trial re-queued after its driver died (the same parameters: another Tune trial).
        checkpoint = tune.get_checkpoint()
        inherited = checkpoint is None and requeued is not None
        if inherited:
            checkpoint = tune.Checkpoint(requeued)
        # A local folder (a copy, for remote storage) for as long as the trial reads it.
        with (checkpoint.as_directory() if checkpoint is not None
              else contextlib.nullcontext(None)) as folder:
            resume_from = None if folder is None else Path(folder)
            step = None if resume_from is None else resume_step(resume_from)
            if step is not None:
                first = {RESUMED_FROM_STEP: step,
                         NODE_ID: ray.get_runtime_context().get_node_id()}
                if inherited:  # the recorder has none of the rungs before it: they come along
                    first[RESUMED_RUNGS] = [r.to_dict() for r in resumed_rungs(resume_from)]
                tune.report(first)
            run_trial(trial_config, report, race, resume_from)
    except Exception as err:  # a failed trial must not stop the sweep, nor be retried blindly
        tune.report({"trial_error": f"{type(err).__name__}: {err}",
                     "sweep_error": is_sweep_wide(err)})


def is_sweep_wide(err: Exception) -> bool:
    """Whether an error would fail every trial alike (bad data, model or config), not this
    trial's parameters: such an error stops the sweep instead of burning its budget."""
    return isinstance(err, TrialError) and err.every_trial


def _absolute(storage_path: str) -> str:
    """Tune wants an absolute path or a URI (s3://, gs://, ...)."""
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def run_baseline(sweep: Sweep, config: TrialConfig, cluster: dict[str, float]) -> dict[str, Any]:
    """Score the base model (no LoRA) on a worker with a trial's resources."""
    from trials.api import run_baseline as baseline_task

    res = trial_resources(sweep, cluster)
    task = ray.remote(num_cpus=res["cpu"], num_gpus=res.get("gpu", 0), max_retries=1)(
        baseline_task)
    # No ray.cancel on Ctrl-C: the driver's exit ends its Ray job, and the raylet force-exits
    # the job's leased workers, this task's included. Cancelling instead raced with a task
    # completing at that moment and tripped a check in Ray's core worker ("Tried to complete
    # task that was not pending"), killing the driver with exit code 1 instead of 130.
    return ray.get(task.remote(config))


def rescore_tasks(sweep: Sweep, cluster: dict[str, float],
                  jobs: dict[str, tuple[TrialConfig, str | None]], seed: int,
                  images_per_prompt: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rescore LoRAs (None = the base model) in parallel Ray tasks with a trial's resources.

    ``jobs`` maps a key to (config, LoRA folder). Yields ``(key, scores)`` as each task ends,
    so the caller can record it at once; a task that raised yields ``{"error": ...}``.
    """
    from trials.api import rescore

    res = trial_resources(sweep, cluster)
    task = ray.remote(num_cpus=res["cpu"], num_gpus=res.get("gpu", 0), max_retries=1)(rescore)
    pending = {task.remote(config, None if lora is None else Path(lora), seed,
                           images_per_prompt): key for key, (config, lora) in jobs.items()}
    # On Ctrl-C the tasks still running end with the driver's Ray job (see run_baseline).
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        try:
            scores = ray.get(ready[0])
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None) or err
            scores = {"error": f"{type(cause).__name__}: {cause}"[:2000]}
        yield key, scores


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
    referee = start_referee(sweep, storage, study_name) if sweep.racing else None
    recorder = StudyRecorder(searcher, sweep, baseline, observers, chaos, referee)
    mode = "max" if sweep.goal == "maximize" else "min"
    if sweep.early_terminate:
        scheduler: Any = ASHAScheduler(
            time_attr=STEP, metric=sweep.metric, mode=mode, max_t=sweep.max_steps,
            grace_period=sweep.early_terminate.grace_steps,
            reduction_factor=sweep.early_terminate.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(
        tune.with_parameters(_train_one, sweep=sweep, cache_dir=str(cache_dir), chaos=chaos,
                             referee=referee),
        trial_resources(sweep, cluster))
    searched = [p.name for p in sweep.searched]
    reporter = (output or RayOutput(None)).reporter(
        parameter_columns=searched,
        metric_columns=[STEP, *dict.fromkeys([CLIP_SCORE, *(o.name for o in sweep.objectives)]),
                        CLIP_SCORE_STDERR, TRAIN_LOSS],
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
            # Tune keeps the 2 best rungs by the metric; with a preservation requirement the
            # exported rung is the best *feasible* one, which Tune cannot rank: keep them all.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if sweep.require is not None else 2,
                checkpoint_score_attribute=sweep.metric, checkpoint_score_order=mode)),
    )
    try:
        tuner.fit()
    finally:
        if referee is not None:
            ray.kill(referee)
    return recorder


def start_referee(sweep: Sweep, storage: optuna.storages.BaseStorage, study_name: str) -> Any:
    """The racing referee of this run, holding what earlier runs of the study found: each
    finished trial's best full rung (its per-prompt scores are in its user attrs), when it
    may be a reference (feasible where the sweep requires preservation)."""
    from hpo.verdict.preservation import trial_feasible

    referee = referee_start(sweep.racing)
    study = optuna.load_study(study_name=study_name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                           TrialState.PRUNED)):
        attrs = trial.user_attrs
        if attrs.get(PER_PROMPT) and attrs.get("best_step") is not None:
            usable = sweep.require is None or trial_feasible(trial) is True
            referee.record.remote(int(attrs["best_step"]), trial.number, attrs[PER_PROMPT],
                                  None, usable)
    return referee
