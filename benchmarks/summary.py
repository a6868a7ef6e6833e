"""The Summary at the top of BENCHMARKS.md, rendered from ``benchmarks/results.json``.

The file is written by several commands at different times: ``benchmarks.speed``,
``benchmarks.search_pipeline`` and ``benchmarks.winners_curse`` each replace their own marked
section and record their figures in ``results.json``; ``benchmarks.run`` rewrites sections 1-6
(which keep a table of their own, headed with that run's date). A summary written by hand, or
by one of them, goes stale when another runs (the file once opened with the random-weight
world's 1.35x, 77 s and 58 % above the toy world's sections). So the summary is rebuilt from
``results.json`` every time any of them writes the file (:func:`benchmarks.common.write_section`,
:func:`benchmarks.run.main`): each row is the latest recorded figure, with when and at which
commit it was measured, and the section below that tells how. ``python -m benchmarks.speed
--sections none`` rewrites it without measuring anything.

Pure text in, text out: nothing here measures or reads a file.
"""

from __future__ import annotations

import re
from typing import Any

BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"
# Issue 15's targets (the Speed section states the same) and issue 1's for the demo.
TRAINER_TARGET = 2.0
EVAL_SHARE_TARGET = 0.25
ASHA_TARGET = 0.50
STEPS_TARGET = 0.60
DEMO_TARGET_S = 300.0
OVERHEAD_TARGET_S = 2.0
# Issue 30's: cheap rungs rank within 0.05 of full ones; the demo in 180 s with a winner > 5
# paired stderr over the base model that keeps it.
RANK_MARGIN = 0.05
CHEAP_DEMO_TARGET_S = 180.0
_RUN_LINE = re.compile(r"Written by `python -m benchmarks\.run[^`]*` \([^)]*\) on ([^.]+)\.")


def _commit(commit: str) -> str:
    """A short commit, keeping a ``+dirty`` mark."""
    head, plus, rest = commit.partition("+")
    return head[:7] + (f"+{rest}" if plus else "")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _when(run: dict[str, Any] | None) -> str:
    if not run:
        return "not recorded"
    return f"{run.get('date', '?')}, git {_commit(str(run.get('git_commit', '')))}"


def _met(ok: bool, floor: str = "") -> str:
    return "met" if ok else "**missed**" + floor


def rows(r: dict[str, Any]) -> list[str]:
    """One table row per figure recorded in ``results.json`` (``r``); none for what is not."""
    out = []
    t, ev, sw = r.get("trainer"), r.get("eval"), r.get("sweeps")
    speed = "section Speed"
    if t and r.get("trainer_vs_reference") is not None:
        ratio = r["trainer_vs_reference"]
        out.append(f"| trainer vs the real `train_text_to_image_lora.py` | **{ratio:.2f}x** "
                   f"({t['fused_sps']:.2f} vs {t['reference_sps']:.2f} samples/s, tiny SD "
                   f"model, CPU) | >= {TRAINER_TARGET:g}x: {_met(ratio >= TRAINER_TARGET)} | "
                   f"{_when(t.get('run'))}; {speed} |")
        out.append(f"| fused vs sequential accumulation | **{r['fused_vs_sequential']:.2f}x** "
                   f"| | {_when(t.get('run'))}; {speed} |")
    if ev and r.get("eval_share") is not None:
        floor = (ev.get("floor") or {}).get("unet_only")
        below = f" (floor {_pct(floor)}: see {speed})" if floor is not None else ""
        out.append(f"| evaluation share of a demo trial ({ev.get('measured_on', '')}) | "
                   f"**{_pct(r['eval_share'])}**" + (
                       f"; {_pct(floor)} if a rung cost only its UNet passes"
                       if floor is not None else "")
                   + f" | <= {_pct(EVAL_SHARE_TARGET)}: "
                   f"{_met(r['eval_share'] <= EVAL_SHARE_TARGET, below)} | "
                   f"{_when(ev.get('run'))}; {speed} |")
    if sw:
        work = r.get("asha_work_fraction")
        ideal = r.get("asha_ideal_fraction")
        asha = r.get("asha_compute_fraction")
        if asha is not None:
            detail = "".join([
                f"; {_pct(work)} counted in work" if work is not None else "",
                f" (ideal successive halving {_pct(ideal)})" if ideal is not None else "",
                "; same winner within paired stderr"
                if sw.get("asha_same_winner_within_stderr") else ""])
            floor = f" (floor {_pct(ideal)})" if ideal is not None else ""
            out.append(f"| ASHA compute vs none ({sw.get('trials')} trials each) | "
                       f"**{_pct(asha)}** of the CPU-seconds{detail} | <= {_pct(ASHA_TARGET)}:"
                       f" {_met(asha <= ASHA_TARGET, floor)} | {_when(sw.get('run'))}; "
                       f"{speed} |")
        steps = r.get("steps_fidelity_compute_fraction")
        if steps is not None:
            out.append(f"| steps as a fidelity vs a dimension | **{_pct(steps)}** of the "
                       "compute to reach the dimension arm's best | "
                       f"<= {_pct(STEPS_TARGET)}: {_met(steps <= STEPS_TARGET)} | "
                       f"{_when(sw.get('run'))}; {speed} |")
        wall, over = r.get("demo_wall_seconds"), r.get("overhead_median_seconds")
        if wall is not None and over is not None:
            out.append(f"| demo sweep ({sw.get('trials')} trials of sweeps/tiny.yaml) | "
                       f"**{wall:.0f} s** wall, peak RSS {r.get('demo_peak_rss_mb', 0):.0f} MB"
                       f" (process tree), **{over:.2f} s** overhead per trial (median) | "
                       f"< {DEMO_TARGET_S / 60:.0f} min: {_met(wall < DEMO_TARGET_S)}; <= "
                       f"{OVERHEAD_TARGET_S:g} s per trial: {_met(over <= OVERHEAD_TARGET_S)} | "
                       f"{_when(sw.get('run'))}; {speed} |")
    sp = r.get("search_pipeline")
    if sp and sp.get("methods"):
        n = str(sp.get("n_trials", 20))
        regrets = ", ".join(f"{m} {by[n]['median_regret']:.2f}"
                            for m, by in sp["methods"].items() if n in by)
        out.append(f"| search on the real pipeline ({sp.get('configurations')} configurations,"
                   f" {sp.get('seeds')} seeds) | median regret after {n} trials (CLIP-T "
                   f"points): {regrets} | | {_when(sp)}; section Search efficiency on the real "
                   "pipeline |")
    wc = r.get("winners_curse")
    if wc and wc.get("mean_curse") is not None:
        out.append(f"| winner's curse over {len(wc.get('runs', []))} sweeps | search minus "
                   f"confirmed score {wc['mean_curse']:+.2f} (sd {wc.get('sd_curse', 0):.2f}) "
                   f"CLIP-T points | | {_when(wc)}; section The winner's curse |")
    out += cheap_rung_rows(r)
    return out


def cheap_rung_rows(r: dict[str, Any]) -> list[str]:
    """Issue 30's rows (``benchmarks.cheap_rungs``): rank agreement, same winner, the demo."""
    out = []
    cr = r.get("cheap_rungs")
    if cr and r.get("eval_rank_spearman_cheap") is not None:
        full, cheap = r["eval_rank_spearman_full"], r["eval_rank_spearman_cheap"]
        good = sum(1 for w in cr.get("winners", []) if w.get("as_good"))
        when = f"{cr.get('date')}, git {_commit(str(cr.get('commit', '')))}"
        passes = [row["passes"]["total"] for row in cr.get("sweeps", [])]
        arms = {a: [row["passes"]["total"] for row in cr["sweeps"] if row["arm"] == a]
                for a in ("full", "cheap")}
        ratio = (sum(arms["cheap"]) / sum(arms["full"])) if passes and all(arms.values()) \
            else None
        out.append(f"| cheap rungs (1 image per prompt) vs full (2), rank agreement with an "
                   f"independent reference over {len(cr.get('ranks', []))} demo studies | "
                   f"Spearman **{cheap:.3f}** cheap, {full:.3f} full; cheap arm's winner as good "
                   f"in {good} of {len(cr.get('winners', []))} TPE seeds; "
                   f"{_pct(ratio)} of the full arm's UNet passes | cheap >= full - "
                   f"{RANK_MARGIN}: {_met(cheap >= full - RANK_MARGIN)} | {when}; section "
                   "Cheap rungs |")
    demo = r.get("demo_cheap_rungs")
    if demo and demo.get("wall_seconds") is not None:
        gain = demo.get("gain_in_stderr")
        out.append(f"| demo (`make demo`, 20 trials, from cold; load {demo.get('load_before')}"
                   f" before) | **{demo['wall_seconds']:.0f} s** wall; winner "
                   f"{'n/a' if gain is None else f'{gain:.1f}'} paired stderr over the base "
                   f"model, {'keeps' if demo.get('preserves') else 'does NOT keep'} it | <= "
                   f"{CHEAP_DEMO_TARGET_S:.0f} s: "
                   f"{_met(demo['wall_seconds'] <= CHEAP_DEMO_TARGET_S)}; > 5 stderr: "
                   f"{_met(gain is not None and gain > 5)} | {demo.get('date')}, git "
                   f"{_commit(str(demo.get('commit', '')))}; section Cheap rungs |")
    return out


def summary_section(results: dict[str, Any], markdown: str = "") -> str:
    """The marked Summary section for ``results`` (``results.json``); ``markdown`` (the file
    as it is) gives the date of ``benchmarks.run``'s sections 1-6, which are not in it."""
    table = rows(results)
    lines = [BEGIN, "## Summary", "",
             "The latest figure of each measurement recorded in `benchmarks/results.json`, "
             "with when and where it was measured and the section that says how (this table "
             "is rewritten from that file whenever a benchmark writes this one).", ""]
    if table:
        lines += ["| figure | result | target | measured |", "|---|---|---|---|", *table]
    else:
        lines.append("Nothing is recorded in `benchmarks/results.json` yet.")
    lines += ["", "Not measured: SD v1.5 shapes on a GPU (no GPU here); the SD v1.5-shaped "
              "smoke test (`tests/hpo/test_sd15_smoke.py`) runs the real architecture on a CPU "
              "in CI, for correctness, not speed."]
    run = _RUN_LINE.search(markdown)
    if run:
        lines += ["", f"Sections 1-6 (`python -m benchmarks.run`) were last written on "
                  f"{run.group(1)} and keep their own table (below); their figures are not "
                  "in `results.json`, so not in this one."]
    return "\n".join([*lines, END]) + "\n"


def with_summary(markdown: str, results: dict[str, Any]) -> str:
    """``markdown`` with its Summary section replaced by one from ``results``, or inserted
    after the title when it has none."""
    section = summary_section(results, markdown)
    if BEGIN in markdown and END in markdown:
        head, rest = markdown.split(BEGIN, 1)
        return head + section + "\n" + rest.split(END, 1)[1].lstrip("\n")
    title, _, body = markdown.partition("\n")
    if not title.startswith("# "):
        return section + "\n" + markdown
    return f"{title}\n\n{section}\n" + body.lstrip("\n")
