"""``python -m hpo.run``: run a LoRA sweep with Ray Tune and Optuna.

Every check that can fail (sweep file, data folder, prompts, model folder, storage, output
folder, resources) runs before any trial starts, and prints one line naming what is wrong.
Rerunning the same command continues the study until ``--trials`` trials have finished.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import logging
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from hpo import forecast, plan
from hpo.dispatch.chaos import parse_chaos
from hpo.dispatch.cluster import check_address
from hpo.study import fingerprint, folders
from hpo.study.lock import StudyLocked, study_lock
from hpo.study.storage import redact
from hpo.sweep import fidelity
from hpo.sweep.space import baseline_values, make_sampler, run_seed, sampler_settings
from hpo.sweep.spec import PreflightError, Sweep, load_sweep, study_name
from trials.api import CLIP_SCORE, RungReport, TrialError

if TYPE_CHECKING:
    from hpo.dispatch.ray_output import RayOutput

log = logging.getLogger("hpo")


# Exit codes: 0 done; 2 refused before the sweep, or stopped by an error every trial would
# share (a full disk too); 3 the trials ran but the winner's confirmation on fresh seeds is
# missing or incomplete; 4 the confirmation ran and the winner fails the preservation
# requirement on fresh seeds (nothing is confirmed); 130 interrupted (Ctrl-C). 2, 3 and 130
# say: rerun the same command (once fixed); 4: search further (more --trials) or change it.
UNCONFIRMED = 3
NOT_PRESERVED = 4
EXIT_CODES = ("exit codes: 0 done; 2 refused before the sweep, or stopped by an error every "
              "trial would share; 3 the confirmation on fresh seeds is missing or incomplete; "
              "4 the winner fails the preservation requirement on fresh seeds; 130 "
              "interrupted (Ctrl-C)")


class SweepError(RuntimeError):
    """A problem found before the sweep starts; the message is one line."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpo.run",
        description="Run a LoRA hyperparameter sweep (Ray Tune + Optuna) from a sweep file.",
        epilog=EXIT_CODES)
    p.add_argument("--sweep", type=Path, default=Path("sweeps/hyundai.yaml"),
                   help="sweep file (default: sweeps/hyundai.yaml)")
    p.add_argument("--trials", type=int, default=20,
                   help="finished trials wanted in the study in total, counting earlier runs "
                        "(default: 20)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="at most this many trials at once (default: every GPU slot, or CPU "
                        "slot on a CPU-only cluster)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray "
                        "sized to this machine)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///OUT/STUDY/optuna.db; use "
                        "postgresql://... for a shared study)")
    p.add_argument("--storage-path", default=None,
                   help="Ray Tune's storage for results and checkpoints (default OUT/STUDY/ray); "
                        "on a multi-node cluster a folder every node shares, or an s3:// URI")
    p.add_argument("--steps-as", choices=fidelity.STEPS_AS, default="auto",
                   help="max_train_steps as a fidelity (trials train to the largest value, "
                        "rungs measure the smaller ones) or as a search dimension; auto: a "
                        "fidelity where the LR schedule makes a shorter run a prefix")
    p.add_argument("--study", default=None, help="study name (default: the sweep's name)")
    p.add_argument("--out", type=Path, default=Path("runs"),
                   help="output folder; the study's files go to OUT/STUDY (default: runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing study (rerunning the same command does too)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check of a real run (sweep, data, model, CLIP model, prompts, "
                        "address, an existing study's fingerprint), print the resolved sweep and "
                        "exit without starting Ray or writing anything")
    p.add_argument("--inject-faults", default=None, metavar="KIND=RATE,...",
                   help="testing only: make trials fail at random, e.g. kill=0.1,nan=0.05 "
                        "(kinds: kill, nan, oom, error, crash: killed once, then resumed; "
                        "KIND@AT[:STEP] fixes when, AT one of step, checkpoint, rung)")
    p.add_argument("--fault-seed", type=int, default=0, help="seed of --inject-faults")
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="log every trial as a run to this MLflow tracking server, e.g. "
                        "http://127.0.0.1:5000 (needs the mlflow extra)")
    p.add_argument("--wandb", action="store_true",
                   help="log every trial as a W&B run (needs the wandb extra; WANDB_MODE=offline "
                        "keeps it local)")
    p.add_argument("--wandb-project", default=None,
                   help="W&B project (default: $WANDB_PROJECT, else the study name)")
    p.add_argument("--wandb-entity", default=None, help="W&B entity (default: $WANDB_ENTITY)")
    p.add_argument("--gpu-throughput", type=float, default=None, metavar="PASSES_PER_S",
                   help="your GPU's UNet sample-passes per second at the sweep's resolution, "
                        "for the cost forecast in GPU-hours (default: measured by "
                        "python -m benchmarks.gpu on this GPU, else an A100's published figure)")
    p.add_argument("--verbose", action="store_true",
                   help="also print Ray's and Optuna's own output on the console (Tune's status "
                        "table, worker logs); it always goes to OUT/STUDY/driver.log")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


@contextmanager
def driver_lock(study_dir: Path) -> Iterator[None]:
    """Refuse a second driver writing the same output folder (the study itself is locked in
    its storage: :mod:`hpo.study.lock`)."""
    lock_path = study_dir / ".driver.lock"
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"{study_dir}: another sweep driver is running on this study "
                             f"(lock {lock_path})") from None
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # driver.log's title; a --storage URL's password must not reach a file (hpo.study.storage)
    words = sys.argv[1:] if argv is None else argv
    args.command = "python -m hpo.run " + shlex.join(redact(w) for w in words)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_args(args)
        args.chaos = parse_chaos(args.inject_faults, args.fault_seed)
        sweep = load_sweep(args.sweep)
        name = args.study or sweep.name
        study_dir = (args.out / name).resolve()
        steps = fidelity.plan_steps(sweep, args.steps_as)
        if args.dry_run:
            return dry_run(sweep, name, study_dir, args, steps)
        return run(fidelity.apply(sweep, steps), name, study_dir, args, steps)
    except (TrialError, SweepError, ValueError, StudyLocked) as err:
        if args.debug:
            raise
        print(f"error: {str(err).strip()}", file=sys.stderr)
        return 2
    except Exception as err:
        # A full disk or an unwritable path mid-sweep (Tune's files, the study, the outputs):
        # one line; the study keeps every finished trial and the rerun continues it.
        full = folders.disk_error(err)
        if full is None or args.debug:
            raise
        print(f"error: {folders.disk_error_line(full)}", file=sys.stderr)
        return 2


def check_args(args: argparse.Namespace) -> None:
    """Command-line values that no later check would catch."""
    if args.trials < 1:
        raise SweepError(f"--trials: must be >= 1 (got {args.trials})")
    if args.concurrency is not None and args.concurrency < 1:
        raise SweepError(f"--concurrency: must be >= 1 (got {args.concurrency})")
    bad_rate = forecast.check_rate(args.gpu_throughput)
    if bad_rate:
        raise SweepError(bad_rate)
    if args.study is not None:
        args.study, problem = study_name(args.study)
        if problem:
            raise SweepError(f"--study: {problem}")


def dry_run(sweep: Sweep, name: str, study_dir: Path, args: argparse.Namespace,
            steps: fidelity.StepsPlan) -> int:
    """Every check of :func:`run` that comes before Ray, writing nothing; then the plan.

    ``sweep`` is the file as written; the run (and its fingerprint) uses it with ``steps``
    applied."""
    import optuna

    from hpo.outputs import tracking
    from hpo.study import storage as studies

    tracking.check(args.mlflow, args.wandb)
    check_address(args.address)
    contents = plan.preflight(sweep, study_dir, args.out.resolve() / "cache", dry_run=True,
                              storage_path=args.storage_path,
                              storage_url=args.storage or studies.default_storage_url(study_dir))
    if args.address is None:  # the run would start Ray here: this machine is its one node
        plan.check_resources(sweep, [plan.local_node_resources()])
    storage_url = args.storage or studies.default_storage_url(study_dir)
    existing = None
    if args.storage or (study_dir / "optuna.db").is_file():
        storage = plan.connect_storage(storage_url)
        if name in {s.study_name for s in storage.get_all_studies()}:
            existing = optuna.load_study(study_name=name, storage=storage)
    if existing is not None and contents is not None:
        fingerprint.check_existing(existing, fidelity.apply(sweep, steps), contents)
    from hpo.verdict import precision

    # what the study's rungs measured so far says about their size
    measured = precision.lines(existing) if existing is not None else []
    print(plan.describe(sweep, name, study_dir, args, steps, measured or [
        "  rung precision measured from the study's per-prompt spread once trials and a "
        "confirmation are scored: prompts and images a rung needs (the summary and a dry run "
        "of the study print it)"]))
    return 0


def run(sweep: Sweep, name: str, study_dir: Path, args: argparse.Namespace,
        steps: fidelity.StepsPlan | None = None) -> int:
    """Check everything, then run the remaining trials and export the results (``steps``: how
    the sweep file's ``max_train_steps`` was planned, for the cost forecast)."""
    from hpo.dispatch import tune as tuning
    from hpo.dispatch.ray_output import RayOutput
    from hpo.outputs import artifacts, console, export, pareto, report, tracking
    from hpo.study import storage as studies
    from hpo.verdict import confirm
    from hpo.verdict.winner import breaks_on_fresh_seeds, confirmation_missing

    tracking.check(args.mlflow, args.wandb)

    storage_url = args.storage or studies.default_storage_url(study_dir)
    storage_label = studies.redact(storage_url)
    cache_dir = args.out.resolve() / "cache"
    check_address(args.address)  # before anything is written: ray.init would hang
    contents = plan.preflight(sweep, study_dir, cache_dir, storage_path=args.storage_path,
                              storage_url=storage_url)
    assert contents is not None
    made = folders.make_folders(study_dir, cache_dir)  # only now: a refused run leaves none
    try:
        storage = plan.connect_storage(storage_url)
    except PreflightError:
        folders.remove_made(made)
        raise

    # Ray's and Optuna's own output goes to driver.log (and the console only with --verbose).
    with study_lock(storage_url, name, study_dir), driver_lock(study_dir), \
            console.driver_log(study_dir / "driver.log", args.verbose, args.command) as record, \
            RayOutput(record, args.verbose) as ray_output:
        study = studies.open_study(storage, sweep, name)
        fingerprint.check_or_record(study, sweep, contents)
        studies.record_study_attrs(study, sweep, sampler_settings(sweep))
        requeued = studies.recover_interrupted(study, storage)
        if requeued:
            log.info("marked %d trial(s) left running by a stopped driver as FAIL and queued "
                     "their parameters again: %s", len(requeued), requeued)
        done = len(studies.counted_trials(study))
        remaining = args.trials - done
        grid = sweep.grid_size() if sweep.method == "grid" else None
        if grid is not None:
            remaining = min(remaining, grid - done)
        log.info("study %s in %s: %d trial(s) finished, %d to run", name, storage_label, done,
                 max(remaining, 0))
        started = time.time()
        interrupted = False
        stopped_by: str | None = None
        if remaining > 0:
            forecast.at_start(study, sweep, steps or fidelity.plan_steps(sweep), args)
            try:
                stopped_by = run_trials(sweep, name, storage, study, study_dir, cache_dir,
                                        remaining, args, ray_output)
            except KeyboardInterrupt:
                interrupted = True
            # Ctrl-C (a KeyboardInterrupt out of Tune's loop: hpo.dispatch.tune turns Tune's own
            # handler off) leaves trials RUNNING: make the study consistent.
            requeued = studies.recover_interrupted(study, storage)
            interrupted = interrupted or bool(requeued)
            if stopped_by:
                log.info("stopped: a trial failed for a reason every trial would share; %d "
                         "unfinished trial(s) queued again, fix it and rerun the same command",
                         len(requeued))
            elif interrupted:
                log.info("stopped early; %d unfinished trial(s) queued again, rerun the same "
                         "command to continue", len(requeued))
        if not interrupted and not stopped_by:
            try:  # resumable: only what is missing on the confirmation seeds is scored
                confirm.confirm(sweep, study, study_dir, cache_dir,
                                tuning.confirmation_scorer(sweep, args.address, ray_output))
            except KeyboardInterrupt:
                interrupted = True
        unconfirmed: dict[str, str] = {}
        broken: int | None = None
        if interrupted:
            # Ctrl-C must end within seconds: the outputs (the winner's LoRA copied and converted,
            # trials.csv, report.html) took 10 s and more on a loaded machine, and the study
            # holds everything they are made of; the rerun writes them.
            print(plan.interrupted_summary(study, study_dir, time.time() - started, started))
        else:
            baseline = study.user_attrs.get("baseline_clip_score")
            best_yaml = export.write_best_yaml(sweep, study, study_dir, storage_label, baseline)
            pareto.write_pareto_files(sweep, study, study_dir, storage_label, baseline)
            csv = export.write_trials_csv(study, study_dir)
            artifacts.write_study_note(study, sweep.eval.prompt_list)
            log.info("report: %s", report.write_report(study, study_dir))
            print(plan.summary(study, study_dir, best_yaml, csv, storage_url,
                               time.time() - started, started))
            unconfirmed = confirmation_missing(study) if sweep.confirm.top_k else {}
            broken = breaks_on_fresh_seeds(study) if sweep.confirm.top_k else None
    if stopped_by:
        reason = " ".join(line.strip() for line in stopped_by.splitlines() if line.strip())
        print(f"error: {reason}" if "rerun the same command" in reason else
              f"error: every trial would fail: {reason} (fix it and rerun the same command)",
              file=sys.stderr)
        return 2
    if interrupted:
        return 130
    if unconfirmed:
        print(f"error: the confirmation on fresh seeds is incomplete: {len(unconfirmed)} of its "
              "task(s) have no result (see above); fix the cause and rerun the same command: "
              "only those run", file=sys.stderr)
        return UNCONFIRMED
    if broken is not None:
        print(f"error: the winner, trial {broken}, fails the preservation requirement on fresh "
              "seeds (so does every confirmed candidate): it is not confirmed (see above); "
              "search further with more --trials, or change preservation.require",
              file=sys.stderr)
        return NOT_PRESERVED
    return 0


def run_trials(sweep: Sweep, name: str, storage, study, study_dir: Path, cache_dir: Path,
               remaining: int, args: argparse.Namespace, ray_output: RayOutput) -> str | None:
    """Start Ray, score the baseline once per study, and run ``remaining`` trials.

    Returns the error that stopped the sweep early (one every trial would hit), or None.
    """
    from hpo.dispatch import tune as tuning
    from hpo.outputs import artifacts, console, tracking

    # A new sampler seed for each run, from the sweep's seed and the study's size: a rerun
    # continues the search instead of replaying its first draws (hpo.sweep.space.run_seed).
    sampler = make_sampler(sweep, len(study.trials))
    runs = list(study.user_attrs.get("sampler_runs", []))
    runs.append({"trials_before": len(study.trials),
                 "seed": run_seed(sweep.seed, len(study.trials))})
    study.set_user_attr("sampler_runs", runs)

    cluster = tuning.start_ray(args.address, output=ray_output)
    plan.check_resources(sweep, tuning.node_resources())
    slots = tuning.concurrency(sweep, cluster, args.concurrency)
    if f"baseline_{CLIP_SCORE}" not in study.user_attrs:
        log.info("scoring the base model without LoRA (once per study)")
        config = sweep.trial_config(baseline_values(sweep), output_dir=study_dir / "baseline",
                                    cache_dir=cache_dir)
        scores = tuning.run_baseline(sweep, config, cluster)
        for key in RungReport.baseline_fields():  # what the base model's scoring measures
            study.set_user_attr(f"baseline_{key}", scores.get(key))
    artifacts.upload_baseline(study, study_dir, sweep.eval.prompt_list)  # once per study
    observer = artifacts.ArtifactObserver(artifacts.artifact_dir(study_dir),
                                          sweep.eval.prompt_list, study.user_attrs)
    log.info("running %d trial(s), %d at a time", remaining, slots)
    shown = console.SweepConsole(
        remaining, metrics=[*(o.name for o in sweep.objectives), sweep.metric, CLIP_SCORE],
        goal=sweep.goal, baseline_per_prompt=study.user_attrs.get("baseline_per_prompt"),
        record=ray_output.log)
    try:
        with shown.logging_above_bar():
            recorder = tuning.run_sweep(
                sweep, study_name=name, storage=storage, n_new=remaining, slots=slots,
                cluster=cluster, storage_path=args.storage_path or str(study_dir / "ray"),
                cache_dir=cache_dir, baseline=study.user_attrs.get(f"baseline_{CLIP_SCORE}"),
                chaos=args.chaos, sampler=sampler, output=ray_output,
                observers=[shown, observer, *tracking.observers(
                    sweep, name, study_dir, mlflow_uri=args.mlflow, use_wandb=args.wandb,
                    wandb_project=args.wandb_project, wandb_entity=args.wandb_entity)])
    finally:
        shown.close(keep=sys.exc_info()[0] is None)
    return recorder.stopper.reason


if __name__ == "__main__":
    code = main()
    # The driver holds ~900k objects (torch, diffusers, Ray, Tune); the interpreter's last full
    # garbage collection at exit took 4-5 s on a loaded 2-core machine (most of a Ctrl-C's exit
    # time) and frees nothing a process that ends needs freed.
    gc.freeze()
    raise SystemExit(code)
