"""The soak: a 60-trial tiny sweep with faults injected at random (issue 7).

About 10% of trials SIGKILL themselves (on every attempt, so the retry dies too) and 5% hit a
NaN loss. Afterwards every trial must be accounted for in the study (COMPLETE, PRUNED, or
FAIL with a reason), each injected fault must have ended as a FAIL with a reason, nothing
may be left RUNNING, and ``best.yaml`` must load as a trial config.

Run: ``python -m benchmarks.soak [--trials 60] [--seed 0]``; prints a markdown section.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SoakResult:
    trials: int
    states: dict[str, int]
    injected: dict[str, int]
    not_reached: int
    survived: int
    lost: int
    best_yaml_valid: bool
    wall_seconds: float

    def markdown(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items()))
        injected = ", ".join(f"{n} {k}" for k, n in sorted(self.injected.items())) or "none"
        fired = sum(self.injected.values()) - self.not_reached
        return "\n".join([
            "## Soak: faults injected at random (`python -m benchmarks.soak`)",
            "",
            "| trials | end states | faults drawn | faults fired | faults survived | "
            "data lost | valid best.yaml | wall time |",
            "|---|---|---|---|---|---|---|---|",
            f"| {self.trials} | {states} | {injected} | {fired} | {self.survived} | "
            f"{self.lost} | {'yes' if self.best_yaml_valid else 'NO'} | "
            f"{self.wall_seconds:.0f} s |",
            "",
            "A fault is drawn per trial at a random step; it fires only if the trial gets that "
            "far (ASHA stops some trials first). A fired fault is survived when its trial ended "
            "FAIL with a reason and the sweep went on. Data lost counts trials missing from the "
            "study, left RUNNING, FAIL without a reason, or that went past a fault unharmed.",
            "",
        ])


def _sweep_file(folder: Path) -> Path:
    doc = yaml.safe_load((REPO / "sweeps/tiny.yaml").read_text())
    doc["name"] = "soak"
    doc["data"]["train_dir"] = str(folder / "data")
    doc["eval"]["prompts"] = str(REPO / "sweeps/prompts/tiny_heldout.txt")
    doc["eval"]["images_per_prompt"] = 1
    doc["eval"]["inference_steps"] = 2
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_soak(trials: int = 60, faults: str = "kill=0.1,nan=0.05", seed: int = 0,
             out: Path | None = None) -> SoakResult:
    """Run the soak sweep in ``out`` (a temporary folder by default) and account for it."""
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(out or tmp)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "hpo.run", "--sweep", str(_sweep_file(folder)), "--trials",
             str(trials), "--out", str(folder / "runs"), "--inject-faults", faults,
             "--fault-seed", str(seed)],
            cwd=REPO, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"soak sweep exited {done.returncode}:\n{done.stderr[-3000:]}")
        study = optuna.load_study(study_name="soak",
                                  storage=f"sqlite:///{folder / 'runs/soak/optuna.db'}")
        states: dict[str, int] = {}
        injected: dict[str, int] = {}
        survived = lost = not_reached = 0
        for t in study.trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
            fault = t.user_attrs.get("injected_fault")
            reason = t.user_attrs.get("fail_reason")
            if t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and not reason):
                lost += 1
            if fault:
                injected[fault["kind"]] = injected.get(fault["kind"], 0) + 1
                if t.state == TrialState.FAIL:
                    survived += bool(reason)
                elif t.user_attrs.get("last_step", 0) < fault["step"]:
                    not_reached += 1  # stopped by ASHA (or finished) before the fault's step
                else:
                    lost += 1  # went past its fault and did not fail: a bug
        lost += max(0, trials - len(study.trials))
        best = folder / "runs/soak/best.yaml"
        valid = False
        if best.is_file():
            from trials.config import load_trial_config

            load_trial_config(best, output_dir=folder / "x", cache_dir=folder / "cache")
            valid = True
        return SoakResult(len(study.trials), states, injected, not_reached, survived, lost,
                          valid, wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--faults", default="kill=0.1,nan=0.05")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(run_soak(args.trials, args.faults, args.seed).markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
