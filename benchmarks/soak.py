"""The soak: a 60-trial tiny sweep with faults injected at random (issues 7 and 31).

About 10% of trials SIGKILL themselves (on every attempt, so the retry dies too), 5% hit a
NaN loss, and 20% crash once (SIGKILL at a random step, mid-step, mid-checkpoint or just after a
rung) and are retried from their last complete rung checkpoint. Afterwards every trial must be
accounted for in the study (COMPLETE, PRUNED, or FAIL with a reason), each injected ``kill`` or
``nan`` must have ended as a FAIL with a reason, each crashed trial must have ended like its
uninterrupted twin (the same parameters run again here without a fault: every rung's score
within 1e-3, the best rung's LoRA within 1e-5), nothing may be left RUNNING, and ``best.yaml``
must load as a trial config.

Run: ``python -m benchmarks.soak [--trials 60] [--seed 0]``; prints a markdown section.
"""

from __future__ import annotations

import argparse
import math
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
    resumed: int = 0  # crashed trials retried from a checkpoint (the rest started over)
    twins_equal: int = 0  # crashed trials that ended like their uninterrupted twin
    twin_differences: tuple[float, float] = (0.0, 0.0)  # largest |score|, |LoRA| difference

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
            f"Crashed once and retried: {self.resumed} resumed from a rung checkpoint; "
            f"{self.twins_equal} ended like their uninterrupted twin (largest differences: "
            f"score {self.twin_differences[0]:.2g}, LoRA {self.twin_differences[1]:.2g}).",
            "",
            "A fault is drawn per trial at a random step; it fires only if the trial gets that "
            "far (ASHA stops some trials first). A fired kill or nan is survived when its trial "
            "ended FAIL with a reason and the sweep went on; a fired crash when its retry ended "
            "like its uninterrupted twin. Data lost counts trials missing from the study, left "
            "RUNNING, FAIL without a reason, that went past a fault unharmed, or crashed and "
            "then failed or differed from their twin.",
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


def _twin(sweep_file: Path, trial: optuna.trial.FrozenTrial, folder: Path) -> tuple[float, float]:
    """Run ``trial``'s parameters again, uninterrupted, in this process up to its last step;
    returns the largest differences from what the study recorded: |score| over its rungs and
    |LoRA| at its best rung (inf when a rung or the LoRA is missing; 0 for a trial stopped at
    a screening rung, which keeps no LoRA)."""
    import torch
    from safetensors.torch import load_file

    from hpo.sweep import fidelity
    from hpo.sweep.spec import load_sweep
    from trials.api import WEIGHTS_NAME, run_trial

    sweep = load_sweep(sweep_file)
    sweep = fidelity.apply(sweep, fidelity.plan_steps(sweep))  # as hpo.run runs it
    # Ray gives a trial's worker cpu_per_trial threads; the same sums run in the same order.
    torch.set_num_threads(max(1, int(sweep.resources.cpu_per_trial)))
    out = folder / f"twin-{trial.number}"
    config = sweep.trial_config(trial.params, output_dir=out, cache_dir=folder / "runs/cache")
    last = int(trial.user_attrs["last_step"])
    scores: dict[str, float] = {}

    def report(step: int, rung, checkpoint: Path) -> bool:
        scores[str(step)] = rung.clip_score
        return step >= last

    run_trial(config, report)
    score = max((abs(scores[s] - v) if s in scores else math.inf)
                for s, v in trial.user_attrs["score_per_rung"].items())
    if trial.user_attrs.get("best_step") is None:  # stopped at a screening rung: no LoRA kept
        return score, 0.0
    recorded = Path(trial.user_attrs.get("lora_path") or "") / WEIGHTS_NAME
    twin = out / f"step-{int(trial.user_attrs['best_step']):06d}" / WEIGHTS_NAME
    if not recorded.is_file() or not twin.is_file():
        return score, math.inf
    a, b = load_file(recorded), load_file(twin)
    return score, max(float((a[k] - b[k]).abs().max()) for k in a)


def run_soak(trials: int = 60, faults: str = "kill=0.1,nan=0.05,crash=0.2", seed: int = 0,
             out: Path | None = None) -> SoakResult:
    """Run the soak sweep in ``out`` (a temporary folder by default) and account for it."""
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(out or tmp)
        started = time.perf_counter()
        sweep_file = _sweep_file(folder)
        done = subprocess.run(
            [sys.executable, "-m", "hpo.run", "--sweep", str(sweep_file), "--trials",
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
        survived = lost = not_reached = resumed = equal = 0
        worst = [0.0, 0.0]
        for t in study.trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
            fault = t.user_attrs.get("injected_fault")
            reason = t.user_attrs.get("fail_reason")
            if t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and not reason):
                lost += 1
            if fault and fault["kind"] == "crash":
                injected["crash"] = injected.get("crash", 0) + 1
                if t.user_attrs.get("attempt", 1) < 2:  # stopped or finished before it
                    not_reached += 1
                elif t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                    lost += 1  # a crash once must not cost the trial
                else:
                    resumed += "resumed_from_step" in t.user_attrs
                    differences = _twin(sweep_file, t, folder)
                    worst = [max(w, d) for w, d in zip(worst, differences, strict=True)]
                    if differences[0] <= 1e-3 and differences[1] <= 1e-5:
                        equal += 1
                        survived += 1
                    else:
                        lost += 1
            elif fault:
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
                          valid, wall, resumed, equal, (worst[0], worst[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--faults", default="kill=0.1,nan=0.05,crash=0.2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(run_soak(args.trials, args.faults, args.seed).markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
