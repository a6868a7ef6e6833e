"""``python -m benchmarks.run [--quick]``: measure on the machine at hand, write BENCHMARKS.md.

One module per measurement; this one runs them in turn and :mod:`benchmarks.render` turns
their results into the file:

1. trainer throughput, ours against the reference loop (:mod:`benchmarks.throughput`);
2. orchestration overhead of the 20-trial demo sweep (:mod:`benchmarks.overhead`);
3. early stopping, the same budget with ASHA and without (:mod:`benchmarks.early_stop`);
4. search efficiency, TPE against random and grid on a surrogate (:mod:`benchmarks.search`);
5. the demo's wall time and peak memory (:mod:`benchmarks.demo`);
6. evaluation cost, the share of a trial spent drawing and scoring (:mod:`benchmarks.eval_cost`);
7. with ``--soak``, the 60-trial sweep with random faults (:mod:`benchmarks.soak`);
8. with ``--interrupt``, seconds from Ctrl-C to exit at each moment of a sweep
   (:mod:`benchmarks.interrupt`).

A measurement that fails is reported as failed in the file and the others still run; the
command then exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from benchmarks.common import REPO, Results, Settings, marked_sections, with_recorded_summary
from benchmarks.render import render

SECTIONS = ("throughput", "search", "eval_cost", "demo", "early_stop")

FULL = Settings()  # the defaults are the full run
QUICK = Settings(chunks=8, search_seeds=40, eval_repeats=3, demo_repeats=1,
                 early_stop_trials=10)


def _log(message: str) -> None:
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _attempt(res: Results, section: str, fn: Callable[[], None]) -> None:
    started = time.perf_counter()
    _log(f"{section}: start")
    try:
        fn()
    except Exception as err:  # one failed measurement must not lose the others
        traceback.print_exc()
        lines = str(err).strip().splitlines()
        res.errors[section] = f"{type(err).__name__}: {lines[-1] if lines else ''}"
    _log(f"{section}: done in {time.perf_counter() - started:.0f} s")


def measure(settings: Settings, quick: bool, sections: Sequence[str] = SECTIONS,
            sd15_model: str | None = None) -> Results:
    """Run the selected measurements; never raises for a failed measurement."""
    res = Results(settings, quick, load_before=os.getloadavg())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as tmp:
        work = Path(tmp)

        def throughput() -> None:
            from benchmarks.throughput import measure_sd15, measure_tiny

            res.throughput = measure_tiny(work / "throughput", settings.chunk_steps,
                                          settings.chunks)
            res.throughput_sd15 = measure_sd15(work / "throughput-sd15", settings.chunk_steps,
                                               settings.chunks, model=sd15_model)

        def search() -> None:
            from benchmarks.search import measure_search

            res.search = measure_search(settings.search_seeds, settings.search_trials)

        def eval_cost() -> None:
            from benchmarks.eval_cost import measure_eval_cost

            res.eval_cost = measure_eval_cost(work / "eval-cost", settings.eval_repeats,
                                              settings.eval_prompts)

        def demo() -> None:
            from benchmarks.demo import measure_demo
            from benchmarks.eval_cost import sweep_share
            from benchmarks.overhead import from_run

            for i in range(settings.demo_repeats):
                run = measure_demo(settings.demo_trials)
                res.demo.append(run)
                res.overhead.append(from_run(run.sweep))
                _log(f"demo run {i + 1}: {run.wall_seconds:.0f} s")
            if res.eval_cost is not None:
                records = [r for d in res.demo for r in d.sweep.records]
                res.eval_cost = replace(res.eval_cost, sweep_share=sweep_share(records))

        def early_stop() -> None:
            from benchmarks.early_stop import measure_early_stop

            res.early_stop = measure_early_stop(settings.early_stop_trials)

        def soak() -> None:
            from benchmarks.soak import run_soak

            res.soak = run_soak()

        def interrupt() -> None:
            from benchmarks.interrupt import measure_interrupt

            res.interrupt = measure_interrupt(work / "interrupt")

        steps = {"throughput": throughput, "search": search, "eval_cost": eval_cost,
                 "demo": demo, "early_stop": early_stop, "soak": soak, "interrupt": interrupt}
        for section in (*SECTIONS, "soak", "interrupt"):
            if section in sections:
                _attempt(res, section, steps[section])
    res.elapsed = time.perf_counter() - started
    res.load_after = os.getloadavg()
    return res


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (1 when a measurement failed)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, seeds and trials (under 15 minutes on 2 cores)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="demo sweep runs (median reported; default 3, 1 with --quick)")
    parser.add_argument("--only", action="append", choices=SECTIONS, default=None,
                        help="run only this measurement (repeatable); 'demo' gives the "
                             "overhead figures too")
    parser.add_argument("--soak", action="store_true",
                        help="also run the 60-trial fault soak (about 10 minutes on 2 cores)")
    parser.add_argument("--interrupt", action="store_true",
                        help="also time Ctrl-C at each moment of a sweep (about 4 minutes)")
    parser.add_argument("--sd15-model", default=None,
                        help="a real SD v1.5 diffusers folder for the GPU throughput run "
                             "(default: SD v1.5's architecture with random weights)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.repeats is not None:
        settings = replace(settings, demo_repeats=max(1, args.repeats))
    sections = (*(args.only or SECTIONS), *(["soak"] if args.soak else []),
                *(["interrupt"] if args.interrupt else []))
    res = measure(settings, args.quick, sections, args.sd15_model)
    # Sections 1-6 are rewritten; what the other benchmarks wrote is kept, and the Summary is
    # rebuilt from results.json (it must not quote this run's table as today's figures).
    kept = marked_sections(args.out.read_text(encoding="utf-8")) if args.out.is_file() else ""
    text = with_recorded_summary(render(res).rstrip("\n") + "\n\n" + kept)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    _log(f"wrote {args.out} in {res.elapsed / 60:.1f} min")
    return 1 if res.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
