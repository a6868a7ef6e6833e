"""What the measurements share: sweep files written to a temp folder, sweep runs as
subprocesses (cold caches, memory sampled), and a study read back as plain records.

A sweep is always run the way a user runs it: ``python -m hpo.run --sweep FILE --trials N
--out DIR`` in a child process, from the repository root, with ``--out`` in a fresh temporary
folder so the tiny model, the latent cache and the study all start cold.
"""

from __future__ import annotations

import copy
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_SWEEP = REPO / "sweeps" / "tiny.yaml"
HYUNDAI_SWEEP = REPO / "sweeps" / "hyundai.yaml"
DELETE = object()  # an override value that removes the key
RESULTS = REPO / "benchmarks" / "results.json"
MARKDOWN = REPO / "BENCHMARKS.md"


def git_commit() -> str:
    """The repository's HEAD commit (empty outside a git checkout), with ``+dirty`` when
    tracked source files differ from it (the figures files a benchmark writes do not count)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False)

    head = git("rev-parse", "HEAD").stdout.strip()
    changed = git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    figures = {"BENCHMARKS.md", "benchmarks/results.json",
               "benchmarks/search_pipeline_table.json"}
    dirty = any(line[3:].strip() not in figures for line in changed)
    return f"{head}+dirty" if head and dirty else head


def short_commit(commit: str, width: int = 7) -> str:
    """``commit`` cut to ``width`` hex digits, keeping a ``+dirty`` mark."""
    head, _, mark = commit.partition("+")
    return head[:width] + (f"+{mark}" if mark else "")


def merge_results(values: Mapping[str, Any]) -> None:
    """Merge ``values`` into ``benchmarks/results.json`` as it is now (several benchmarks,
    possibly in separate processes, write their own keys)."""
    current = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    current.update(values)
    RESULTS.write_text(json.dumps(current, indent=2, default=str) + "\n")


def write_section(begin: str, end: str, section: str) -> None:
    """Replace the part of BENCHMARKS.md between the ``begin`` and ``end`` markers with
    ``section`` (which carries both markers), or append it when the markers are missing; then
    rebuild the Summary at the top from ``results.json`` (:mod:`benchmarks.summary`)."""
    text = MARKDOWN.read_text() if MARKDOWN.is_file() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    MARKDOWN.write_text(with_recorded_summary(text))


def with_recorded_summary(text: str) -> str:
    """``text`` (BENCHMARKS.md) with its Summary rebuilt from ``results.json`` as it is now."""
    from benchmarks.summary import with_summary

    return with_summary(text, json.loads(RESULTS.read_text()) if RESULTS.is_file() else {})


def marked_sections(text: str) -> str:
    """The sections other commands wrote into BENCHMARKS.md between ``<!-- NAME:begin -->`` and
    ``<!-- NAME:end -->`` markers (not the Summary), to keep when the rest is rewritten."""
    blocks = re.finditer(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->\n?", text,
                         flags=re.DOTALL)
    return "".join(m.group(0) for m in blocks if m.group(1) != "summary")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (inclusive method); both equal the value for one value."""
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float(values[0])
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_sweep(folder: Path, base: Path = TINY_SWEEP, overrides: Mapping[str, Any] | None = None,
                name: str = "sweep.yaml") -> Path:
    """Write ``base`` with ``overrides`` (merged key by key) to ``folder/name``.

    Relative paths are made absolute against the repository, except the training folder,
    which moves into ``folder/data`` so a synthetic dataset is generated there (cold) and
    nothing is shared with other runs.
    """
    raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    data = raw.setdefault("data", {})
    data["train_dir"] = str(Path(folder) / "data")
    prompts = Path(raw["eval"]["prompts"])
    raw["eval"]["prompts"] = str(prompts if prompts.is_absolute() else REPO / prompts)
    merged = _merge(raw, overrides or {})
    Path(folder).mkdir(parents=True, exist_ok=True)
    file = Path(folder) / name
    file.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    return file


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial of a study, with the timings the sweep stored in its user attrs."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None
    params: dict[str, Any]
    start: float | None  # epoch seconds (Optuna datetime_start: when the searcher asked)
    end: float | None  # epoch seconds (Optuna datetime_complete: when the result was told)
    attrs: dict[str, Any]

    def attr(self, key: str, default: float = 0.0) -> float:
        value = self.attrs.get(key)
        return default if value is None else float(value)

    @property
    def span(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start


def study_records(study) -> list[TrialRecord]:
    """Finished trials of an Optuna study as :class:`TrialRecord` (RUNNING/WAITING skipped)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ("COMPLETE", "PRUNED", "FAIL"):
            continue
        out.append(TrialRecord(
            number=t.number, state=t.state.name, value=t.value, params=dict(t.params),
            start=t.datetime_start.timestamp() if t.datetime_start else None,
            end=t.datetime_complete.timestamp() if t.datetime_complete else None,
            attrs=dict(t.user_attrs)))
    return out


@dataclass
class SweepRun:
    """One ``python -m hpo.run`` process, measured from outside, and the study it left."""

    wall_seconds: float
    started_at: float  # epoch seconds, just before the process was started
    ended_at: float
    slots: int  # trials at once, as the driver logged it
    records: list[TrialRecord]
    study_attrs: dict[str, Any]
    peak_tree_rss_mb: float
    peak_process_rss_mb: float
    summary: str
    trials: int
    best_value: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0  # 0, or hpo.run.NOT_PRESERVED: no confirmed winner keeps the base model


def _tree_rss(root: psutil.Process) -> tuple[float, float]:
    """Total and largest RSS (MB) over a process and all its descendants."""
    total = biggest = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for proc in procs:
        try:
            rss = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
        total += rss
        biggest = max(biggest, rss)
    return total, biggest


def run_sweep(sweep_file: Path, trials: int, out: Path, extra_args: Sequence[str] = (),
              sample_every: float = 0.2) -> SweepRun:
    """Run a sweep in a child process, sampling the memory of its whole process tree.

    ``out`` should be a fresh folder (cold caches). Raises RuntimeError with the output's tail
    when the command fails; a sweep that ran to its end counts as run, also when its confirmed
    winner fails the preservation requirement (``hpo.run.NOT_PRESERVED``, exit code 4: a
    result of the search, kept in ``exit_code``).
    """
    import optuna

    from hpo.run import NOT_PRESERVED

    command = [sys.executable, "-m", "hpo.run", "--trials", str(trials), "--sweep",
               str(sweep_file), "--out", str(out), *extra_args]
    started_at = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    root = psutil.Process(proc.pid)
    chunks: list[str] = []
    # Read output in a thread so a full pipe never blocks the child.
    import threading

    reader = threading.Thread(target=lambda: chunks.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    peak_tree = peak_one = 0.0
    while proc.poll() is None:
        total, biggest = _tree_rss(root)
        peak_tree, peak_one = max(peak_tree, total), max(peak_one, biggest)
        time.sleep(sample_every)
    wall = time.perf_counter() - started
    ended_at = time.time()
    reader.join(timeout=10)
    output = "".join(chunks)
    if proc.returncode not in (0, NOT_PRESERVED):
        raise RuntimeError(f"sweep {sweep_file} failed ({proc.returncode}):\n{output[-3000:]}")
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("sweep ")), None)
    summary = "" if start is None else "\n".join(lines[start:start + 2])
    match = re.search(r"running \d+ trial\(s\), (\d+) at a time", output)
    slots = int(match.group(1)) if match else 1
    name = yaml.safe_load(Path(sweep_file).read_text(encoding="utf-8"))["name"]
    storage = f"sqlite:///{(Path(out) / name / 'optuna.db').resolve()}"
    study = optuna.load_study(study_name=name, storage=storage)
    records = study_records(study)
    complete = [r.value for r in records if r.state == "COMPLETE" and r.value is not None]
    return SweepRun(
        wall_seconds=wall, started_at=started_at, ended_at=ended_at, slots=slots,
        records=records, study_attrs=dict(study.user_attrs), peak_tree_rss_mb=peak_tree,
        peak_process_rss_mb=peak_one, summary=summary, trials=trials,
        best_value=max(complete) if complete else None, exit_code=proc.returncode)


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number for the tables; ``n/a`` for None/NaN."""
    if value is None or value != value:  # NaN
        return "n/a"
    return f"{value:.{digits}f}{unit}"


@dataclass(frozen=True)
class Settings:
    """How much of each measurement to run; written into the file next to its figures."""

    chunk_steps: int = 10  # throughput: steps per timed chunk
    chunks: int = 20  # throughput: timed chunks per loop (after one warm-up chunk)
    search_seeds: int = 100
    search_trials: int = 20
    eval_repeats: int = 5
    demo_repeats: int = 3
    demo_trials: int = 20
    early_stop_trials: int = 20
    eval_prompts: int | None = None  # None: every prompt of the sweep


@dataclass
class Results:
    """Everything one run measured, filled in by :func:`benchmarks.run.measure`
    and turned into BENCHMARKS.md by :func:`benchmarks.render.render`.

    A measurement left at ``None`` (or empty) was skipped or failed; ``errors`` says which.
    """

    settings: Settings
    quick: bool
    started: float = field(default_factory=time.time)
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()
    elapsed: float | None = None
    throughput: Any = None
    throughput_sd15: Any = None
    search: Any = None
    eval_cost: Any = None
    demo: list[Any] = field(default_factory=list)
    overhead: list[Any] = field(default_factory=list)
    early_stop: Any = None
    soak: Any = None
    interrupt: Any = None  # benchmarks.interrupt.InterruptTimes
    errors: dict[str, str] = field(default_factory=dict)
