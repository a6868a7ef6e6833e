"""BENCHMARKS.md from a run's :class:`Results`: the summary table, one section per
measurement, the machine it ran on and any failures.

:mod:`benchmarks.run` fills a :class:`Results` and hands it here. Nothing in this module
measures (apart from reading the machine's description), so the text can be rebuilt from
results made up in a test.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.common import REPO, Results, fmt, median

# The first column of the summary table, one row per figure the issue asks for.
ROWS = {
    "throughput": "1. Trainer throughput",
    "overhead": "2. Orchestration overhead",
    "early_stop": "3. Early stopping",
    "search": "4. Search efficiency",
    "demo": "5. Demo wall time and peak memory",
    "eval_cost": "6. Evaluation cost",
}
THROUGHPUT_TARGET = 1.3
OVERHEAD_TARGET = 2.0
DEMO_TARGET = 300.0


def _version(lib: str) -> str:
    try:
        return importlib.metadata.version(lib)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    """CPU, cores, memory, GPU and library versions, in one paragraph."""
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    libs = ", ".join(f"{lib} {_version(lib)}" for lib in (
        "torch", "diffusers", "transformers", "peft", "open-clip-torch", "ray", "optuna"))
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += " with uncommitted changes"
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB "
            f"RAM, {gpu}; {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}; {libs}" + (f"; git {commit}" if commit else ""))


def _target(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _pct(x: float | None) -> str:
    return fmt(None if x is None else 100 * x, 0, " %")


# ---------------------------------------------------------------- summary


def summary_rows(res: Results) -> list[str]:
    """The summary table, one or more rows per :data:`ROWS` entry."""
    rows = ["| figure | result | target |", "|---|---|---|"]

    def row(key: str, result: str, target: str = "") -> None:
        rows.append(f"| {ROWS[key]} | {result} | {target} |")

    def missing(key: str, section: str | None = None) -> str:
        err = res.errors.get(section or key)
        return f"failed: {err}" if err else "not measured (skipped)"

    t = res.throughput
    if t is not None and t.measured:
        where = "CPU" if t.device == "cpu" else t.device
        row("throughput", f"tiny model on {where}: ours {t.ours_sps:.1f} vs reference "
            f"{t.reference_sps:.1f} samples/s = **{t.ratio:.2f}x** (CPU-time ratio "
            f"{t.cpu_ratio:.2f}x)", f">= {THROUGHPUT_TARGET}x: "
            f"{_target(t.ratio >= THROUGHPUT_TARGET)}")
    else:
        row("throughput", "tiny model on CPU: " + missing("throughput"),
            f">= {THROUGHPUT_TARGET}x")
    g = res.throughput_sd15
    if g is not None and g.measured:
        row("throughput", f"SD v1.5 shapes on {g.device}: ours {g.ours_sps:.2f} vs reference "
            f"{g.reference_sps:.2f} samples/s = **{g.ratio:.2f}x**", "")
    else:
        row("throughput", "SD v1.5 shapes (512 px, fp16) on a GPU: "
            + (g.note if g is not None else missing("throughput")), "")

    if res.overhead:
        o = res.overhead
        per_trial = median([x.per_trial_median for x in o])
        row("overhead", f"{res.settings.demo_trials}-trial demo sweep: "
            f"{_pct(median([x.share for x in o]))} of slot-time not training or scoring "
            f"({_pct(median([x.share_after_startup for x in o]))} after start-up); "
            f"**{per_trial:.1f} s** per trial (median; amortised "
            f"{median([x.amortised_per_trial for x in o]):.1f} s); start-up "
            f"{median([x.startup_seconds for x in o]):.0f} s",
            f"<= {OVERHEAD_TARGET:.0f} s per trial: {_target(per_trial <= OVERHEAD_TARGET)}")
    else:
        row("overhead", missing("overhead", "demo"), f"<= {OVERHEAD_TARGET:.0f} s per trial")

    e = res.early_stop
    if e is not None:
        row("early_stop", f"{e.asha.trials} trials each: ASHA {e.asha.cpu_seconds:.0f} "
            f"CPU-s, best {fmt(e.asha.best_value, 3)}; without {e.full.cpu_seconds:.0f} CPU-s, "
            f"best {fmt(e.full.best_value, 3)}; ASHA saves **{_pct(e.cpu_saving)}**", "")
    else:
        row("early_stop", missing("early_stop"))

    s = res.search
    if s is not None:
        parts = [f"{m.label} {m.median:.3f} [{m.quartiles[0]:.3f}, {m.quartiles[1]:.3f}]"
                 for m in s.methods]
        row("search", f"median simple regret [IQR] at {s.n_trials} trials over {s.seeds} "
            f"seeds: " + "; ".join(parts), "")
    else:
        row("search", missing("search"))

    if res.demo:
        walls = [d.wall_seconds for d in res.demo]
        wall = median(walls)
        tree = median([d.peak_tree_rss_mb for d in res.demo])
        one = median([d.peak_process_rss_mb for d in res.demo])
        row("demo", f"**{wall:.0f} s** wall, peak RSS {tree:.0f} MB (whole process tree), "
            f"{one:.0f} MB (largest process)",
            f"< {DEMO_TARGET / 60:.0f} min: {_target(wall < DEMO_TARGET)}")
    else:
        row("demo", missing("demo"))

    c = res.eval_cost
    if c is not None:
        sweep = ("" if c.sweep_share is None else
                 f" ({_pct(c.sweep_share)} median over the demo sweep's trials)")
        row("eval_cost", f"**{_pct(c.share)}** of a trial's time{sweep}; "
            f"**{c.ips:.1f} images/s** drawn and scored", "")
    else:
        row("eval_cost", missing("eval_cost"))
    return rows


# ---------------------------------------------------------------- sections


def throughput_section(res: Results) -> list[str]:
    """The lines of section 1: trainer throughput, tiny model and SD v1.5 shapes."""
    out = ["## 1. Trainer throughput", ""]
    from benchmarks import throughput as mod

    out += [_doc(mod), ""]
    if res.throughput is None or not res.throughput.measured:
        out += [f"Tiny model: {res.errors.get('throughput', 'not measured (skipped)')}", ""]
    results = [r for r in (res.throughput, res.throughput_sd15) if r is not None]
    if results:
        out += ["| setting | shape | threads | steps per loop | ours, samples/s | reference, "
                "samples/s | ratio (median of chunk pairs) | CPU-time ratio | run_trial's own "
                "samples/s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            if not r.measured:
                out.append(f"| {r.setting} | {r.shape} | | | {r.note} | | | | |")
                continue
            lo, hi = min(r.pair_ratios), max(r.pair_ratios)
            out.append(
                f"| {r.setting} | {r.shape} | {r.threads} | {r.steps} ({len(r.ours)} timed "
                f"chunks of {r.chunk_steps} + 1 warm-up) | {r.ours_sps:.2f} | "
                f"{r.reference_sps:.2f} | **{r.ratio:.2f}x** (chunks: {lo:.2f}-{hi:.2f}) | "
                f"{fmt(r.cpu_ratio, 2, 'x')} | {fmt(r.run_trial_sps, 2)} |")
        out += ["", "Total time for the same steps, including the one-off cache build for ours "
                "(built once per sweep and shared by all its trials):", "",
                "| setting | cache build | ours: build + training | reference: training | "
                "cache pays for itself after |", "|---|---|---|---|---|"]
        for r in results:
            if r.measured:
                out.append(f"| {r.setting} | {r.cache_build_seconds:.2f} s | "
                           f"{r.ours_total:.1f} s | {r.reference_total:.1f} s | "
                           f"{fmt(r.break_even_steps, 0)} steps |")
        out.append("")
    return out


def overhead_section(res: Results) -> list[str]:
    """The lines of section 2: orchestration overhead, one row per demo run."""
    from benchmarks import overhead as mod

    out = ["## 2. Orchestration overhead (the demo sweep)", "", _doc(mod), ""]
    if not res.overhead:
        return [*out, res.errors.get("demo", "not measured (skipped)"), ""]
    out += ["| run | trials | slots | wall | start-up | tail | useful (train + score) | "
            "share not training or scoring | after start-up | per trial (median) | of which "
            "setup | of which the rest | amortised per trial | first trial |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, o in enumerate(res.overhead, 1):
        out.append(
            f"| {i} | {o.trials} | {o.slots} | {o.wall_seconds:.0f} s | {o.startup_seconds:.1f} s "
            f"| {o.tail_seconds:.1f} s | {o.useful_seconds:.0f} s | {_pct(o.share)} | "
            f"{_pct(o.share_after_startup)} | **{o.per_trial_median:.2f} s** | "
            f"{o.per_trial_setup_median:.2f} s | {o.per_trial_rest_median:.2f} s | "
            f"{o.amortised_per_trial:.2f} s | {o.first_trial_overhead:.1f} s |")
    return [*out, ""]


def early_stop_section(res: Results) -> list[str]:
    """The lines of section 3: ASHA against no early stopping."""
    from benchmarks import early_stop as mod

    out = ["## 3. Early stopping (ASHA) against none, same trial budget", "", _doc(mod), ""]
    e = res.early_stop
    if e is None:
        return [*out, res.errors.get("early_stop", "not measured (skipped)"), ""]
    out += ["| arm | trials | COMPLETE / PRUNED / FAIL | steps trained | CPU-seconds | "
            "GPU-seconds | wall | best clip_score | best params |",
            "|---|---|---|---|---|---|---|---|---|"]
    for a in (e.asha, e.full):
        out.append(f"| {a.label} | {a.trials} | {a.complete} / {a.pruned} / {a.failed} | "
                   f"{a.steps_trained} | {a.cpu_seconds:.0f} | {a.gpu_seconds:.0f} | "
                   f"{a.wall_seconds:.0f} s | {fmt(a.best_value, 4)} | {_params(a.best_params)} |")
    diff = e.score_difference
    out += ["", f"ASHA spent {_pct(1 - e.cpu_saving)} of the CPU-seconds of the sweep without "
            f"early stopping; its best score differs by {fmt(diff, 4)} (ASHA - none). The tiny "
            "model's scores come from random weights, so the score difference says only "
            "whether ASHA stopped the eventual winner, not how much quality it costs.", ""]
    return out


def search_section(res: Results) -> list[str]:
    """The lines of section 4: regret of each sampler on the surrogate."""
    from benchmarks import search as mod

    out = ["## 4. Search efficiency on a surrogate (TPE, random, grid)", "", _doc(mod), ""]
    s = res.search
    if s is None:
        return [*out, res.errors.get("search", "not measured (skipped)"), ""]
    best = ", ".join(f"{k} {_short(v)}" for k, v in s.best_params.items())
    out += [f"Optimum of the surrogate in the hyundai space: {s.best_value:.3f} at {best} "
            f"(one point of the ridge); a random configuration scores {s.median_config:.3f} "
            f"(median), so regret {s.best_value - s.median_config:.2f} is what a blind pick "
            "costs.", "",
            f"Simple regret after {s.n_trials} trials, {s.seeds} seeds (0 = found the optimum):",
            "", "| sampler | median | 25 % - 75 % | worst | seeds within 0.05 | within 0.1 | "
            + " | ".join(f"median after {k}" for k in s.checkpoints) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(s.checkpoints)]
    for m in s.methods:
        q = m.quartiles
        out.append(f"| {m.label} | **{m.median:.3f}** | {q[0]:.3f} - {q[1]:.3f} | "
                   f"{m.worst:.3f} | {_pct(m.share_within(0.05))} | "
                   f"{_pct(m.share_within(0.1))} | "
                   + " | ".join(f"{median(m.regrets_by_trials[k]):.3f}" for k in s.checkpoints)
                   + " |")
    out += ["", "TPE starts with 10 random trials (``n_startup_trials``), so it equals random "
            "search up to trial 10.", ""]
    return out


def demo_section(res: Results) -> list[str]:
    """The lines of section 5: the demo sweep's wall time, memory and summary."""
    from benchmarks import demo as mod

    out = [f"## 5. Demo sweep (`make demo`: {res.settings.demo_trials} trials of "
           "sweeps/tiny.yaml on CPU, cold caches)", "", _doc(mod), ""]
    if not res.demo:
        return [*out, res.errors.get("demo", "not measured (skipped)"), ""]
    walls = [d.wall_seconds for d in res.demo]
    mid = sorted(res.demo, key=lambda d: d.wall_seconds)[len(res.demo) // 2]
    out += ["| runs | wall time (median) | peak RSS, whole process tree | peak RSS, largest "
            "process |", "|---|---|---|---|",
            f"| {len(res.demo)} | {median(walls):.0f} s (all: "
            f"{', '.join(f'{w:.0f}' for w in walls)}) | "
            f"{median([d.peak_tree_rss_mb for d in res.demo]):.0f} MB | "
            f"{median([d.peak_process_rss_mb for d in res.demo]):.0f} MB |", "",
            f"Target: under {DEMO_TARGET / 60:.0f} minutes on 2 cores. The sweep's own summary "
            "(median run):", "", "```", mid.summary, "```", ""]
    return out


def eval_cost_section(res: Results) -> list[str]:
    """The lines of section 6: evaluation cost."""
    from benchmarks import eval_cost as mod

    out = ["## 6. Evaluation cost (sweeps/tiny.yaml's eval settings)", "", _doc(mod), ""]
    c = res.eval_cost
    if c is None:
        return [*out, res.errors.get("eval_cost", "not measured (skipped)"), ""]
    out += ["| prompts x images | inference steps | rungs | threads | setup | train | eval | "
            "eval share of the trial | images/s (save + draw + score) | images/s drawing only "
            "| images/s CLIP scoring only |", "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {c.prompts} x {c.images_per_prompt} | {c.inference_steps} | {c.rungs} | "
            f"{c.threads} | {median(c.setup_seconds):.2f} s | {median(c.train_seconds):.2f} s | "
            f"{median(c.eval_seconds):.2f} s | **{_pct(c.share)}** | **{c.ips:.1f}** | "
            f"{median(c.generate_ips):.1f} | {median(c.score_ips):.0f} |", "",
            f"Medians of {len(c.shares)} trial(s)."
            + ("" if c.sweep_share is None else
               f" In the demo sweep (2 trials at once on 2 cores) the median trial spent "
               f"{_pct(c.sweep_share)} of its setup + train + eval time scoring."), ""]
    return out


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _params(params: dict[str, Any] | None) -> str:
    return "" if not params else ", ".join(f"{k} {_short(v)}" for k, v in params.items())


def _doc(module: ModuleType) -> str:
    """A module's docstring as markdown: how each figure is measured is written once, next to
    the code that measures it. RST roles and double backticks become code spans, underlined
    titles become bold, indented blocks become fenced code."""
    text = (module.__doc__ or "").strip()
    text = re.sub(r":(?:func|mod|attr|class|meth):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    lines = text.splitlines()
    out: list[str] = []
    in_code = False
    for i, line in enumerate(lines):
        if line.strip() and set(line.strip()) == {"-"}:
            continue  # the underline of a title, handled with the title
        if i + 1 < len(lines) and lines[i + 1].strip() and set(lines[i + 1].strip()) == {"-"}:
            out += [f"**{line.strip()}**", ""]
            continue
        if line.startswith("    ") and not in_code:
            out.append("```")
            in_code = True
        elif in_code and line.strip() and not line.startswith("    "):
            while out and not out[-1].strip():
                out.pop()
            out += ["```", ""]
            in_code = False
        if line.endswith("::"):
            line = line[:-1]
        out.append(line[4:] if in_code else line)
    if in_code:
        out.append("```")
    return "\n".join(out)


def render(res: Results) -> str:
    """The whole of BENCHMARKS.md for ``res``."""
    s = res.settings
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(res.started))
    mode = "`--quick`" if res.quick else "full"
    took = "" if res.elapsed is None else f" The whole run took {res.elapsed / 60:.1f} min."
    load = ""
    if res.load_before:
        load = (f" Load average (1/5/15 min) at the start: "
                f"{' / '.join(f'{x:.1f}' for x in res.load_before)}")
        if res.load_after:
            load += f"; at the end: {' / '.join(f'{x:.1f}' for x in res.load_after)}"
        load += (". The machine was shared with other work, so wall times are noisy; ratios "
                 "come from measurements taken side by side in the same run.")
    lines = [
        "# Benchmarks",
        "",
        # Not "## Summary": that one, at the top, is rebuilt from results.json
        # (benchmarks.summary); this table is this run's, and keeps its date.
        f"## Sections 1-6 at a glance (`python -m benchmarks.run`, {when})",
        "",
        f"Written by `python -m benchmarks.run{' --quick' if res.quick else ''}` ({mode} "
        f"settings) on {when}.{took}",
        "",
        f"Machine: {machine()}.{load}",
        "",
        f"Settings: throughput {s.chunks} timed chunks of {s.chunk_steps} steps per loop; "
        f"search {s.search_seeds} seeds x {s.search_trials} trials; evaluation cost "
        f"{s.eval_repeats} trial(s); demo {s.demo_repeats} run(s) of {s.demo_trials} trials; "
        f"early stopping {s.early_stop_trials} trials per arm. Figures are medians of the "
        "repeats.",
        "",
        *summary_rows(res),
        "",
        *throughput_section(res),
        *overhead_section(res),
        *early_stop_section(res),
        *search_section(res),
        *demo_section(res),
        *eval_cost_section(res),
        *([res.soak.markdown()] if res.soak is not None else []),
        *([res.interrupt.markdown()] if res.interrupt is not None else []),
    ]
    if res.errors:
        lines += ["## Failures", ""]
        lines += [f"- {k}: {v}" for k, v in res.errors.items()]
        lines.append("")
    return "\n".join(lines)
