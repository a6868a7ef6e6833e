"""The console a person reads while a sweep runs: one line per trial event, and a progress bar.

:class:`SweepConsole` is a ``hpo.dispatch.recorder.SweepObserver`` that also hears trials start and
retry. It names each trial by its number in the study (Optuna's, as in ``trials.csv``, the
dashboard and the closing summary), never by Ray's ids, and prints:

- ``started``: the trial's searched parameters;
- each rung: its step, the score ± its stderr, the paired difference from the base model ± its
  paired stderr (the same prompts and seeds), and any figure of :data:`RUNG_FIGURES` the rung has;
- how it ended: completed, stopped early (by ASHA, or by racing part-way through a rung, with
  the paired test that stopped it) or failed, with the reason.

On a terminal a tqdm bar over this run's trials (elapsed time, ETA) stays below those lines.
When stdout is not a terminal (a pipe, a file, CI) there is no bar and no escape code: each
trial's last line ends with the same figures as plain text.

Ray's and Optuna's own output goes to ``runs/<study>/driver.log`` instead: :func:`driver_log`
routes their Python loggers there, and ``hpo.dispatch.ray_output.RayOutput`` what only Ray
prints (Tune's status table, the workers' stdout and stderr). ``--verbose`` prints it on the
console as well.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TextIO

from optuna.trial import TrialState
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hpo.verdict.paired import at_places, paired_or_none
from trials.api import DRIFT, LEAK, MAX_TRAIN_STEPS, PER_PROMPT, PROMPT_INDICES, RACED, STEP

log = logging.getLogger("hpo")

# Figures a rung may carry beyond its score, printed by name when the rung has them: the key in
# the rung dict -> (label, format). Preservation metrics (issue 21: control prompts scored at
# each rung) join here by name; a rung without them prints as before.
RUNG_FIGURES: dict[str, tuple[str, str]] = {
    "control_delta": ("control Δ", "+.2f"),
    DRIFT: ("drift", ".1f"),
    LEAK: ("leak", "+.2f"),
}
# Libraries whose log records are their own output, not ours: driver.log, console with --verbose.
LIBRARY_LOGGERS = ("ray", "optuna")
REASON_CHARS = 200  # a failure reason longer than this is cut on the console (the study has it)


def _number(value: Any, spec: str) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return None


def format_params(params: Mapping[str, Any]) -> str:
    """``rank 4, learning_rate 0.00296, target_modules attn`` (floats to 3 significant digits)."""
    def one(value: Any) -> str:
        return format(value, ".3g") if isinstance(value, float) else str(value)
    return ", ".join(f"{name} {one(value)}" for name, value in params.items())


def rung_figures(rung: Mapping[str, Any]) -> list[str]:
    """The :data:`RUNG_FIGURES` the rung has, formatted (``control Δ -0.41``)."""
    found = []
    for key, (label, spec) in RUNG_FIGURES.items():
        text = _number(rung.get(key), spec)
        if text is not None:
            found.append(f"{label} {text}")
    return found


def vs_base(per_prompt: Sequence[float] | None,
            baseline_per_prompt: Sequence[float] | None) -> str | None:
    """``Δ +6.74 ± 2.10 vs base``: paired over prompts, or None without both score lists."""
    paired = paired_or_none(per_prompt, baseline_per_prompt)
    if paired is None:
        return None
    stderr = _number(paired.stderr, ".2f")
    return f"Δ {paired.delta:+.2f}" + (f" ± {stderr}" if stderr else "") + " vs base"


def rung_line(rung: Mapping[str, Any], metrics: Sequence[str],
              baseline_per_prompt: Sequence[float] | None) -> str:
    """``step 15/60: clip_score 56.42 ± 2.73, Δ +6.74 ± 2.10 vs base`` (+ extra figures)."""
    step, total = rung.get(STEP), rung.get(MAX_TRAIN_STEPS)
    parts = []
    for name in metrics:
        value = _number(rung.get(name), ".2f")
        if value is None:
            continue
        stderr = _number(rung.get(f"{name}_stderr"), ".2f")
        parts.append(f"{name} {value}" + (f" ± {stderr}" if stderr else ""))
    places = rung.get(PROMPT_INDICES)
    delta = vs_base(rung.get(PER_PROMPT), at_places(baseline_per_prompt, places))
    parts += ([delta] if delta else []) + rung_figures(rung)
    subset = f" ({len(places)} prompts)" if places else ""  # ASHA-only rung: a prompt subset
    return (f"step {step}" + (f"/{total}" if total else "") + subset + ": "
            + ", ".join(parts or ["no score"]))


def finished_line(state: TrialState, attrs: Mapping[str, Any], metric: str) -> str:
    """How a trial ended: ``completed: best clip_score 74.14 at step 45, Δ +24.46 ± 3.05 vs
    base``, ``stopped early at step 15 (ASHA): ...`` or ``failed: <reason>``."""
    best = attrs.get("score_per_rung", {}).get(str(attrs.get("best_step")))
    score = _number(best, ".2f")
    figures = f"best {metric} {score} at step {attrs.get('best_step')}" if score else ""
    delta = _number(attrs.get("delta_vs_baseline"), "+.2f")
    if figures and delta:
        stderr = _number(attrs.get("delta_vs_baseline_stderr"), ".2f")
        figures += f", Δ {delta}" + (f" ± {stderr}" if stderr else "") + " vs base"
    if state == TrialState.COMPLETE:
        return "completed" + (f": {figures}" if figures else "")
    if state == TrialState.PRUNED and attrs.get(RACED):
        return raced_line(attrs[RACED]) + (f"; before: {figures}" if figures else "")
    if state == TrialState.PRUNED:
        return f"stopped early at step {attrs.get('last_step')} (ASHA)" + (
            f": {figures}" if figures else "")
    reason = " ".join(str(attrs.get("fail_reason") or "no reason recorded").split())
    if len(reason) > REASON_CHARS:
        reason = reason[:REASON_CHARS - 3] + "..."
    return f"failed: {reason}"


def raced_line(raced: Mapping[str, Any]) -> str:
    """``stopped by racing at step 30 after 16 of 48 prompts: Δ -9.12 ± 2.40 vs trial 3's
    rung (one-sided t, p 0.0008 < 0.01)``."""
    stderr = _number(raced.get("stderr"), ".2f")
    return (f"stopped by racing at step {raced.get('step')} after {raced.get('n')} of "
            f"{raced.get('prompts_total')} prompts: Δ {_number(raced.get('delta'), '+.2f')}"
            + (f" ± {stderr}" if stderr else "")
            + f" vs trial {raced.get('reference_trial')}'s rung"
            + (" (ASHA's cutoff)" if raced.get("against") == "cutoff" else "")
            + f" (one-sided {raced.get('test')}, "
            f"p {_number(raced.get('p_value'), '.2g')} < {raced.get('level')})")


class Progress:
    """This run's trials done out of ``total``: a live tqdm bar on a terminal, else plain text."""

    BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed, ETA {remaining}{postfix}"

    def __init__(self, total: int, stream: TextIO, live: bool) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.started = time.monotonic()
        self.bar: tqdm | None = None
        self._stop = threading.Event()
        if live:
            self.bar = tqdm(total=total, desc="trials", unit="trial", file=stream,
                            bar_format=self.BAR_FORMAT, dynamic_ncols=True, leave=True)
            # tqdm redraws only when told; the elapsed time and ETA should move between trials.
            threading.Thread(target=self._tick, name="progress-bar", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            if self.bar is not None:
                self.bar.refresh()

    def write(self, line: str) -> None:
        """A line above the bar (or a plain line)."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def advance(self, best: str | None = None) -> None:
        self.done += 1
        if self.bar is not None:
            if best:
                self.bar.set_postfix_str(best, refresh=False)
            self.bar.update(1)

    def text(self) -> str:
        """``[3/20 trials, 01:02 elapsed, ETA 05:31]`` for plain lines."""
        elapsed = time.monotonic() - self.started
        eta = "?" if not self.done else tqdm.format_interval(
            elapsed / self.done * max(self.total - self.done, 0))
        return (f"[{self.done}/{self.total} trials, {tqdm.format_interval(elapsed)} elapsed, "
                f"ETA {eta}]")

    def close(self, keep: bool = True) -> None:
        """Stop the bar; ``keep`` False clears it (after a Ctrl-C, whose ^C broke its line)."""
        self._stop.set()
        if self.bar is not None:
            self.bar.leave = keep
            self.bar.close()
            self.bar = None


class SweepConsole:
    """One line per trial event with the study's trial number, and a progress bar.

    ``stream`` is the console (stdout); ``record`` a file that gets the same lines (driver.log,
    so that its Ray lines can be read beside ours). ``live`` None: a bar when ``stream`` is a
    terminal.
    """

    def __init__(self, total: int, metrics: Sequence[str], goal: str = "maximize",
                 baseline_per_prompt: Sequence[float] | None = None,
                 stream: TextIO | None = None, record: TextIO | None = None,
                 live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.metrics = list(dict.fromkeys(metrics))
        self.goal = goal
        self.baseline_per_prompt = baseline_per_prompt
        self.record = record
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.progress = Progress(total, self.stream, self.live)
        self.best: tuple[float, int] | None = None  # (score, trial number) of this run's best
        self.seen: set[int] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks (the recorder and its observers) into tuner.pkl, which
        # this project never restores from; streams and the bar's thread cannot be pickled.
        return {**self.__dict__, "stream": None, "record": None, "progress": None}

    def show(self, number: int, text: str) -> None:
        line = f"trial {number:<3} {text}"
        self.progress.write(line)
        if self.record is not None:
            self.record.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def logging_above_bar(self) -> AbstractContextManager[Any]:
        """While the bar is live, our log lines are written above it instead of across it."""
        return logging_redirect_tqdm() if self.live else nullcontext()

    def trial_started(self, ot_trial: Any) -> None:
        if ot_trial.number in self.seen:  # a retry says so in trial_retried
            return
        self.seen.add(ot_trial.number)
        retry_of = ot_trial.user_attrs.get("retry_of")
        again = f" (again for trial {retry_of}, interrupted)" if retry_of is not None else ""
        self.show(ot_trial.number, f"started{again}: {format_params(ot_trial.params)}")

    def trial_retried(self, ot_trial: Any, attempt: int, reason: str) -> None:
        reason = " ".join(reason.split())[:REASON_CHARS] or "its process died"
        self.show(ot_trial.number, f"retrying (attempt {attempt}): {reason}")

    def trial_resumed(self, ot_trial: Any, step: int) -> None:
        self.show(ot_trial.number, f"resumed from step {step} (its last rung checkpoint)")

    def rung_saved(self, ot_trial: Any, rung: dict[str, Any], checkpoint_dir: str) -> None:
        self.show(ot_trial.number, rung_line(rung, self.metrics, self.baseline_per_prompt))

    def trial_finished(self, ot_trial: Any, state: TrialState, attrs: dict[str, Any]) -> None:
        best = attrs.get("score_per_rung", {}).get(str(attrs.get("best_step")))
        if state != TrialState.FAIL and _number(best, "f") is not None:
            better = self.best is None or (best > self.best[0] if self.goal == "maximize"
                                           else best < self.best[0])
            if better:
                self.best = (float(best), ot_trial.number)
        self.progress.advance(None if self.best is None else
                              f"best {self.metrics[0]} {self.best[0]:.2f} (trial "
                              f"{self.best[1]})")
        text = finished_line(state, attrs, self.metrics[0])
        self.show(ot_trial.number, text if self.live else f"{text}   {self.progress.text()}")

    def close(self, keep: bool = True) -> None:
        self.progress.close(keep)


@contextmanager
def driver_log(path: Path, verbose: bool, title: str) -> Iterator[TextIO]:
    """Append Ray's and Optuna's log records (and ours) to ``path``; keep theirs off the console
    unless ``verbose``. Yields the open file, for what else should go there (``RayOutput``).

    Each run appends below a line with ``title`` (the command), so reruns of a study read in
    order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as handle, ExitStack() as restore:
        handle.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n")

        def to_file() -> logging.Handler:
            # One each: ray.init(configure_logging=True) sets its format on its logger's handlers.
            handler = logging.StreamHandler(handle)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s"))
            return handler

        for name in LIBRARY_LOGGERS:
            logger, ours = logging.getLogger(name), to_file()
            kept, propagate = list(logger.handlers), logger.propagate
            if not verbose:
                for handler in kept:
                    logger.removeHandler(handler)
            logger.addHandler(ours)
            logger.propagate = verbose and propagate

            def undo(logger: logging.Logger = logger, ours: logging.Handler = ours,
                     kept: list = kept, propagate: bool = propagate) -> None:
                logger.removeHandler(ours)
                for handler in kept:
                    if handler not in logger.handlers:
                        logger.addHandler(handler)
                logger.propagate = propagate
            restore.callback(undo)
        hpo_logger, ours = logging.getLogger("hpo"), to_file()
        hpo_logger.addHandler(ours)
        restore.callback(hpo_logger.removeHandler, ours)
        yield handle
