"""What a sweep will spend, before it starts: training and evaluation, in UNet sample-passes.

A sweep's compute is almost all UNet passes, and their count follows from the sweep file alone:

- a **training sample** (one latent through the UNet, forward and backward) counts
  :data:`TRAIN_PASSES_PER_SAMPLE` = 3 forward passes: a backward pass costs about twice a
  forward one (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1:
  training takes ~6N FLOPs per token against ~2N for the forward pass). With the base weights
  frozen their weight gradients are skipped, so for a LoRA the true ratio lies between 2 and 3;
  ``python -m benchmarks.gpu`` measures it on a GPU. An optimizer step trains
  ``train_batch_size x gradient_accumulation_steps`` samples. Preservation's training remedies
  (``trials.train.preserve``) add to each sample (:data:`PRESERVATION_PASSES`): ``prior``
  trains a class sample beside it (3 more), ``dop`` runs the base model on the trigger-less
  caption without gradient (1) and trains that twin (3 more); a searched remedy counts the mean
  of its listed values;
- an **evaluation image** counts ``eval.inference_steps`` passes, twice that with
  classifier-free guidance (``guidance_scale > 1``: the pipeline runs the UNet on the prompt
  and on the empty prompt), scaled by its area when ``eval.width x height`` differs from the
  training resolution. A rung draws :func:`rung_images`; the baseline draws one rung; the
  confirmation ``top_k + 1`` (the candidates and the base model) on its own image count.

Which trials train how far: without early stopping every trial trains to its
``max_train_steps`` (with steps as a fidelity, the largest candidate) and is scored at each of
its rungs. With ASHA the forecast is **ideal synchronous successive halving** (Jamieson &
Talwalkar 2016): all ``n`` trials reach the first milestone, ``ceil(n / r**k)`` reach milestone
``k``. Ray's asynchronous ASHA (Li et al. 2020) promotes a little more than that while its
rungs fill (the demo trained 660 steps where the ideal is 600), so this is an estimate, said as
such. With steps as a dimension the work is averaged over the candidate step counts.

Prompts as a fidelity (``early_terminate.rung_prompts``) make an ASHA-only rung draw a prompt
subset: :func:`rung_images` per step. Racing (``hpo.sweep.racing``) stops only trials found
significantly worse part-way through a rung, which nothing before the sweep can count; the
forecast gives its bound (:attr:`Forecast.racing`): every trial ASHA would stop at a milestone
is stopped there at racing's first look instead (``min_prompts`` brand prompts, no control
images). The sweep's real figure lies between that and the ASHA arm; the summary measures it.

Seconds come from a :class:`Throughput` (UNet passes per second while training and while
drawing), which the front end picks (``hpo.forecast``); the measured split of a finished sweep,
for the closing summary, is :func:`measured`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hpo.sweep.fidelity import StepsPlan, apply, asha_rungs, fidelity_rungs, subset_rungs
from hpo.sweep.spec import INTEGRAL, Sweep

TRAIN_PASSES_PER_SAMPLE = 3.0
# Passes a preservation remedy adds to each training sample (module docstring).
PRESERVATION_PASSES = {"none": 0.0, "prior": 3.0, "dop": 4.0}


@dataclass(frozen=True)
class Work:
    """Units of compute: optimizer steps, rung images drawn and scored, trial setups."""

    steps: float
    images: float
    setups: float

    def __add__(self, other: Work) -> Work:
        return Work(self.steps + other.steps, self.images + other.images,
                    self.setups + other.setups)

    def scaled(self, factor: float) -> Work:
        return Work(self.steps * factor, self.images * factor, self.setups * factor)


def _images(images_per_rung: int | Mapping[int, int], step: int) -> int:
    """A rung's images: one count for every rung, or per step (prompt subsets)."""
    return images_per_rung if isinstance(images_per_rung, int) else images_per_rung[step]


def ideal_asha(n_trials: int, milestones: Sequence[int], max_steps: int,
               eval_rungs: Sequence[int], images_per_rung: int | Mapping[int, int],
               reduction_factor: int, raced_images: int | None = None) -> Work:
    """Work of synchronous successive halving over ``n_trials``.

    ``milestones`` are ASHA's decision steps (``grace * r**k`` below ``max_steps``); a trial
    stopped at a milestone trained that many steps and was scored at every evaluation rung up
    to it; the survivors of the last milestone train to ``max_steps``. ``images_per_rung``: one
    count, or a count per rung step. ``raced_images``: racing's bound, a stopped trial drew only
    this many images at the rung where it stops.
    """
    stops = [m for m in sorted(milestones) if m < max_steps] + [max_steps]
    work = Work(0.0, 0.0, 0.0)
    reached = n_trials
    for k, stop in enumerate(stops):
        survivors = 0 if k == len(stops) - 1 else math.ceil(n_trials / reduction_factor ** (k + 1))
        stopped_here = reached - survivors
        scored = [r for r in eval_rungs if r <= stop]
        drawn = sum(_images(images_per_rung, r) for r in scored)
        if raced_images is not None and k < len(stops) - 1 and stop in scored:
            drawn += min(raced_images, _images(images_per_rung, stop)) \
                - _images(images_per_rung, stop)
        work = work + Work(float(stopped_here * stop), float(stopped_here * drawn),
                           float(stopped_here))
        reached = survivors
    return work


def no_early_stopping(n_trials: int, max_steps: int, eval_rungs: Sequence[int],
                      images_per_rung: int | Mapping[int, int]) -> Work:
    """Work of ``n_trials`` trained to ``max_steps`` and scored at ``eval_rungs``."""
    drawn = sum(_images(images_per_rung, r) for r in eval_rungs)
    return Work(float(n_trials * max_steps), float(n_trials * drawn), float(n_trials))


def typical_values(sweep: Sweep) -> dict[str, Any]:
    """The configuration whose cost stands for all when one is timed: each parameter's middle
    value (the median of numbers, the middle one listed otherwise: ``attn`` of ``[cross_attn,
    attn, attn_ff]``; a range's midpoint, geometric for ``log_uniform_values``). The LoRA's
    rank and modules change a step's and an image's cost (on the demo ``attn_ff`` draws about
    1.6 times as slowly as ``cross_attn``), the learning rate does not."""
    values: dict[str, Any] = {}
    for p in sweep.parameters:
        if p.kind == "value":
            values[p.name] = p.value
        elif p.kind == "values":
            numbers = all(isinstance(v, int | float) for v in p.values)
            listed = sorted(p.values) if numbers else list(p.values)
            values[p.name] = listed[len(listed) // 2]
        else:
            assert p.low is not None and p.high is not None
            mid = math.sqrt(p.low * p.high) if p.kind == "log_uniform_values" \
                else (p.low + p.high) / 2
            values[p.name] = round(mid) if p.name in INTEGRAL else mid
    return values


def train_passes_per_sample(method: str | None) -> float:
    """UNet passes of one training sample with preservation remedy ``method`` (None or
    ``none``: without one). Raises ``KeyError`` for an unknown method."""
    return TRAIN_PASSES_PER_SAMPLE + PRESERVATION_PASSES[method or "none"]


def sweep_train_passes_per_sample(sweep: Sweep) -> float:
    """A sweep's passes per training sample: its fixed remedy's, or the mean over the values
    of ``parameters.preservation`` when it is searched (taken as equally likely)."""
    param = sweep.parameter("preservation")
    methods = list(param.grid() or ()) if param is not None else []
    if not methods:
        methods = [sweep.preservation.method]
    return sum(train_passes_per_sample(m) for m in methods) / len(methods)


def scored_prompts(sweep: Sweep) -> int:
    """Prompts a rung draws: the held-out prompts, and the control prompts when the sweep
    measures preservation (``preservation.trigger``). The one place that counts them; every
    image count below follows. (The base model's own control images, drawn once per study and
    seed, and prior preservation's class images are not counted: a few hundred images.)"""
    return len(sweep.eval.prompt_list) + len(sweep.preservation.control_prompt_list)


def rung_images(sweep: Sweep, prompts: int | None = None) -> int:
    """Images drawn and scored at one rung of one trial (and by the baseline); ``prompts``:
    a rung that scores that many of the held-out prompts (and as many control prompts)."""
    if prompts is None:
        return scored_prompts(sweep) * sweep.eval.images_per_prompt
    control = prompts if sweep.preservation.measured else 0
    return (prompts + control) * sweep.eval.images_per_prompt


def screening_images(sweep: Sweep) -> int:
    """Images of a screening rung (ASHA's alone, ``hpo.sweep.fidelity.subset_rungs``): the
    brand prompts only, ``early_terminate.rung_prompts`` of them when set; no control images,
    since no constraint is decided there."""
    prompts = len(sweep.eval.prompt_list)
    budget = sweep.early_terminate.rung_prompts if sweep.early_terminate else None
    return min(budget or prompts, prompts) * sweep.eval.images_per_prompt


def racing_first_look(sweep: Sweep) -> int | None:
    """Images a trial has drawn when racing can first stop it (``min_prompts`` rounded up to a
    whole chunk, brand prompts only), or None without racing."""
    r = sweep.racing
    if r is None:
        return None
    return math.ceil(r.min_prompts / r.chunk) * r.chunk * sweep.eval.images_per_prompt


def confirmation_images(sweep: Sweep) -> int:
    """Images of the confirmation: ``top_k`` LoRAs and the base model on the fresh seeds."""
    c = sweep.confirm
    return (c.top_k + 1) * scored_prompts(sweep) * c.images_per_prompt if c.top_k else 0


def passes_per_image(sweep: Sweep, inference_steps: int | None = None) -> float:
    """UNet sample-passes of one evaluation image, counted at the training resolution: a rung's
    (``eval.inference_steps``), or one of ``inference_steps`` sampler steps."""
    e, side = sweep.eval, sweep.data.resolution
    guided = 2 if e.guidance_scale > 1 else 1
    steps = inference_steps or e.inference_steps
    return steps * guided * (e.width or side) * (e.height or side) / side ** 2


def confirmation_passes_per_image(sweep: Sweep) -> float:
    """UNet sample-passes of one confirmation image (its own sampler steps: full size)."""
    return passes_per_image(sweep, sweep.confirm.inference_steps)


@dataclass(frozen=True)
class Split:
    """Training and evaluation, in UNet sample-passes or in seconds; evaluation is the rungs,
    the baseline and the confirmation."""

    training: float
    rungs: float
    baseline: float = 0.0
    confirmation: float = 0.0

    @property
    def evaluation(self) -> float:
        return self.rungs + self.baseline + self.confirmation

    @property
    def total(self) -> float:
        return self.training + self.evaluation

    @property
    def eval_share(self) -> float:
        return self.evaluation / self.total if self.total else 0.0


@dataclass(frozen=True)
class Throughput:
    """UNet sample-passes per second while training and while drawing, and their source."""

    train: float
    evaluation: float
    device: str  # "gpu": seconds are GPU-seconds of whole GPUs; "cpu": trial seconds
    source: str

    def seconds(self, passes: Split) -> Split:
        e = self.evaluation
        return Split(passes.training / self.train, passes.rungs / e, passes.baseline / e,
                     passes.confirmation / e)


@dataclass(frozen=True)
class Forecast:
    """A sweep's work before it runs: per arm (with ASHA, without early stopping, racing)."""

    trials: int
    samples_per_step: int
    images_per_rung: int
    passes_per_image: float
    baseline_images: int
    confirmation_images: int
    full: Work  # no early stopping
    asha: Work | None  # ideal successive halving; None when the sweep has no early stopping
    racing: Work | None = None  # racing's bound (module docstring); None without racing
    # Rungs scored (a prompt-subset rung counts as one), per arm: full, asha
    rungs: tuple[float, float | None] = (0.0, None)
    # UNet passes per training sample, preservation's included (sweep_train_passes_per_sample)
    train_passes_per_sample: float = TRAIN_PASSES_PER_SAMPLE
    # Passes of a confirmation image (full size); None: a rung image's
    confirmation_passes_per_image: float | None = None
    screening_images: int = 0  # images of a screening rung (0: the sweep has none)

    @property
    def planned(self) -> Work:
        """The work of the arm this sweep runs (with racing: the ASHA arm, its upper bound)."""
        return self.asha or self.full

    def passes(self, work: Work) -> Split:
        image = self.passes_per_image
        full = self.confirmation_passes_per_image or image
        return Split(work.steps * self.samples_per_step * self.train_passes_per_sample,
                     work.images * image, self.baseline_images * image,
                     self.confirmation_images * full)


def _trial_lengths(sweep: Sweep, steps: StepsPlan) -> list[int]:
    """The step counts a trial trains to: the largest candidate (steps as a fidelity), or each
    candidate (steps as a dimension, taken as equally likely)."""
    return [steps.candidates[-1]] if steps.fidelity else list(steps.candidates)


def _arm(sweep: Sweep, steps: StepsPlan, trials: int, early_stop: bool,
         raced: bool = False, count_rungs: bool = False) -> Work:
    """One arm's work; ``count_rungs``: every rung counts one image (to count rungs)."""
    subset = subset_rungs(sweep, steps) if early_stop else ()
    images: int | dict[int, int] = 1 if count_rungs else rung_images(sweep)
    if subset and not count_rungs:
        images = {r: screening_images(sweep) if r in subset else rung_images(sweep)
                  for r in {*steps.rungs, *steps.candidates}}
    lengths = _trial_lengths(sweep, steps)
    total = Work(0.0, 0.0, 0.0)
    for length in lengths:
        if steps.fidelity:
            scored = steps.rungs if early_stop else fidelity_rungs(
                replace(sweep, early_terminate=None), steps.candidates)
            rungs = [r for r in scored if r <= length]
        else:
            rungs = sweep.rungs(length)
        et = sweep.early_terminate
        if early_stop and et is not None:
            milestones = [m for m in asha_rungs(sweep, sweep.max_steps) if m < length]
            total = total + ideal_asha(trials, milestones, length, rungs, images,
                                       et.reduction_factor,
                                       racing_first_look(sweep) if raced else None)
        else:
            total = total + no_early_stopping(trials, length, rungs, images)
    return total.scaled(1 / len(lengths))


def forecast(sweep: Sweep, steps: StepsPlan, trials: int) -> Forecast:
    """The work of ``trials`` trials of ``sweep`` run as ``steps`` says (a grid stops at its
    size, counted as the run counts it: without ``max_train_steps`` where steps are a
    fidelity), with ASHA (when the sweep has it) and without early stopping."""
    grid = apply(sweep, steps).grid_size() if sweep.method == "grid" else None
    n = min(trials, grid) if grid else trials
    t = sweep.train
    return Forecast(
        trials=n, samples_per_step=t.train_batch_size * t.gradient_accumulation_steps,
        images_per_rung=rung_images(sweep), passes_per_image=passes_per_image(sweep),
        baseline_images=rung_images(sweep), confirmation_images=confirmation_images(sweep),
        full=_arm(sweep, steps, n, early_stop=False),
        asha=_arm(sweep, steps, n, early_stop=True) if sweep.early_terminate else None,
        racing=_arm(sweep, steps, n, early_stop=True, raced=True)
        if sweep.early_terminate and sweep.racing else None,
        rungs=_rung_counts(sweep, steps, n),
        train_passes_per_sample=sweep_train_passes_per_sample(sweep),
        confirmation_passes_per_image=confirmation_passes_per_image(sweep),
        screening_images=screening_images(sweep) if subset_rungs(apply(sweep, steps), steps)
        else 0)


def _rung_counts(sweep: Sweep, steps: StepsPlan, trials: int) -> tuple[float, float | None]:
    """Rungs scored without early stopping and with ASHA, each counted once (a screening
    rung's image count is no multiple of a full rung's)."""
    full = _arm(sweep, steps, trials, early_stop=False, count_rungs=True).images
    asha = _arm(sweep, steps, trials, early_stop=True, count_rungs=True).images \
        if sweep.early_terminate else None
    return full, asha


@dataclass(frozen=True)
class Measured:
    """What a sweep's trials spent by their own timers (seconds, summed over trials) and how
    far they went (optimizer steps, rungs); baseline and confirmation from the study attrs."""

    seconds: Split
    setup_seconds: float
    steps: int
    rungs: int
    trials: int
    device: str  # "cuda" or "cpu"


def measured(trials: Iterable[Mapping[str, Any]], study_attrs: Mapping[str, Any]) -> Measured:
    """Sum the trials' user attrs (``train_seconds``, ``eval_seconds``, ``setup_seconds``,
    ``last_step``, ``score_per_rung``, ``device``), the baseline's ``baseline_eval_seconds``
    and each confirmation record's ``eval_seconds`` (study attrs ``confirm_*``)."""
    train = evals = setup = 0.0
    steps = rungs = count = 0
    device = "cpu"
    for attrs in trials:
        count += 1
        train += float(attrs.get("train_seconds") or 0.0)
        evals += float(attrs.get("eval_seconds") or 0.0)
        setup += float(attrs.get("setup_seconds") or 0.0)
        steps += int(attrs.get("last_step") or 0)
        rungs += len(attrs.get("score_per_rung") or {})
        device = "cuda" if attrs.get("device") == "cuda" else device
    confirm = sum(float(v.get("eval_seconds") or 0.0) for k, v in study_attrs.items()
                  if k.startswith("confirm_") and isinstance(v, dict))
    baseline = float(study_attrs.get("baseline_eval_seconds") or 0.0)
    return Measured(Split(train, evals, baseline, confirm), setup, steps, rungs, count, device)
