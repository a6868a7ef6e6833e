"""``python -m benchmarks.interrupt``: seconds from Ctrl-C to the end of ``python -m hpo.run``.

The goal (issue 31) is an exit within 5 s at any moment of a sweep, with exit code 130 and
nothing lost. Each moment is a fresh sweep driver (the FAST tiny sweep of the tests, its own
local Ray, one trial at a time) that gets SIGINT once its output shows the moment:

- ``baseline``: the base model is being scored (``scoring the base model``);
- ``trial``: a trial is training (a second after its ``started`` line);
- ``between``: a trial has just ended (its ``completed``/``stopped early`` line is printed from
  the recorder's hook, which holds a Ctrl-C until its study write is done), the next not begun;
- ``confirmation``: the top trials are being rescored on fresh seeds.

The signal goes to the driver's whole process group, as a terminal's Ctrl-C does (Ray's own
processes get it too). :func:`interrupt_at` is also what ``tests/hpo/test_interrupt.py`` uses,
with a bound generous for a loaded machine; the figures here are the ones to compare with 5 s.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import DELETE, REPO, git_commit, short_commit, write_section, write_sweep

# moment -> (the output line that shows it, seconds to wait after that line)
MOMENTS: dict[str, tuple[str, float]] = {
    "baseline": (r"scoring the base model without LoRA", 0.0),
    "trial": (r"^trial \d+\s+started:", 1.0),
    "between": (r"^trial \d+\s+(completed|stopped early)", 0.0),
    "confirmation": (r"confirming on fresh seeds", 0.5),
}
GOAL_SECONDS = 5.0


@dataclass(frozen=True)
class Interrupted:
    """One driver stopped by SIGINT: its exit code, the seconds from the signal to its exit
    (None: the moment never came, or it did not exit within the bound), and its output."""

    moment: str
    returncode: int | None
    seconds: float | None
    output: str


def interrupt_at(command: Sequence[str], moment: str, *, group: bool = False,
                 wait_for_moment: float = 600, wait_for_exit: float = 60) -> Interrupted:
    """Run ``command`` (from the repository), send SIGINT when its output shows ``moment``
    (:data:`MOMENTS`), and time its exit. ``group``: signal its whole process group, as a
    terminal does (the command runs in a session of its own either way, so the caller's
    process never gets it)."""
    pattern, delay = MOMENTS[moment]
    # SIGINT at its default in the driver, as in a terminal: a caller started in the
    # background of a script (`cmd &`) has SIGINT ignored, the driver would inherit that, and
    # Python then installs no KeyboardInterrupt handler (the sweep would run on to its end).
    driver = subprocess.Popen(list(command), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert driver.stdout is not None
        for line in driver.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    output: list[str] = []
    sent: float | None = None
    deadline = time.monotonic() + wait_for_moment
    ended = False
    while not ended:
        limit = deadline if sent is None else sent + wait_for_exit
        try:
            line = lines.get(timeout=max(0.0, limit - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            ended = True
            break
        output.append(line)
        if sent is None and re.search(pattern, line):
            time.sleep(delay)
            sent = time.monotonic()
            if group:
                os.killpg(driver.pid, signal.SIGINT)
            else:
                driver.send_signal(signal.SIGINT)
    if ended:
        driver.wait()
        # seconds to exit: the pipe closes when the driver and what it started are gone
        seconds = None if sent is None else time.monotonic() - sent
        return Interrupted(moment, driver.returncode, seconds, "".join(output))
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    return Interrupted(moment, None, None, "".join(output))


def driver_command(sweep: Path, out: Path, trials: int, *extra: str) -> list[str]:
    """``python -m hpo.run`` on ``sweep``, one trial at a time (so "between trials" exists)."""
    return [sys.executable, "-m", "hpo.run", "--sweep", str(sweep), "--trials", str(trials),
            "--out", str(out), "--concurrency", "1", *extra]


@dataclass
class InterruptTimes:
    """Seconds from Ctrl-C to exit at each moment (None: not measured; see ``errors``)."""

    seconds: dict[str, float | None] = field(default_factory=dict)
    codes: dict[str, int | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    load: tuple[float, ...] = ()

    def markdown(self) -> str:
        rows = [f"| {m} | {'n/a' if s is None else f'{s:.1f} s'} | {self.codes.get(m)} | "
                f"{'yes' if s is not None and s <= GOAL_SECONDS else 'NO'} |"
                for m, s in self.seconds.items()]
        return "\n".join([
            "## Ctrl-C: seconds to exit (`python -m benchmarks.interrupt`)",
            "",
            f"| moment | SIGINT to exit | exit code | within {GOAL_SECONDS:g} s |",
            "|---|---|---|---|",
            *rows,
            "",
            "One driver per moment (the tests' FAST tiny sweep, a local Ray, one trial at a "
            "time); the signal goes to its process group, as a terminal's Ctrl-C does. Load "
            f"average at the end: {', '.join(f'{x:.2f}' for x in self.load)}.",
            *(f"- {m}: {e}" for m, e in self.errors.items()),
            "",
        ])


# The tests' FAST tiny sweep (tests/sweep_files.py): every moment comes within a minute or two.
FAST = {
    "name": "interrupt",
    "data": {"synthetic": {"n_images": 6}},
    "eval": {"images_per_prompt": 1, "inference_steps": 2, "every_steps": 4},
    "parameters": {"max_train_steps": {"values": [8, 12]}, "preservation": DELETE,
                   "preservation_weight": DELETE},
    "preservation": DELETE,
    "early_terminate": DELETE,
    "confirm": {"top_k": 2, "images_per_prompt": 1},
}


def measure_interrupt(work: Path, moments: Sequence[str] = tuple(MOMENTS),
                      trials: int = 3) -> InterruptTimes:
    """Time a Ctrl-C at each of ``moments``, each in a fresh folder under ``work``."""
    times = InterruptTimes()
    for moment in moments:
        folder = work / moment
        prompts = [ln for ln in (REPO / "sweeps/prompts/tiny_heldout.txt").read_text(
            encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")][:10]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
        sweep = write_sweep(folder, overrides={
            **FAST, "eval": {**FAST["eval"], "prompts": str(folder / "prompts.txt")}})
        got = interrupt_at(driver_command(sweep, folder / "runs", trials), moment, group=True)
        times.seconds[moment] = got.seconds
        times.codes[moment] = got.returncode
        if got.returncode != 130:
            tail = got.output.strip().splitlines()[-1:] or ["no output"]
            times.errors[moment] = f"exit code {got.returncode}: {tail[0][:200]}"
    times.load = os.getloadavg()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interrupt",
                                     description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--moment", action="append", choices=tuple(MOMENTS), default=None,
                        help="only this moment (repeatable; default: all)")
    parser.add_argument("--record", action="store_true",
                        help="write the table into BENCHMARKS.md (its own marked section)")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="interrupt-") as tmp:
        times = measure_interrupt(Path(tmp), args.moment or tuple(MOMENTS))
    print(times.markdown())
    if args.record:
        begin, end = "<!-- interrupt:begin -->", "<!-- interrupt:end -->"
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_section(begin, end, "\n".join([
            begin, times.markdown().rstrip("\n"), "",
            f"Measured {when} on {os.cpu_count()} CPU cores, commit "
            f"{short_commit(git_commit(), 10)}, load average {load[0]:.1f} at the start.",
            end]) + "\n")
    return 0 if all(s is not None and s <= GOAL_SECONDS for s in times.seconds.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
