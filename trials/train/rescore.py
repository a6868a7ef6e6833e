"""Score a saved LoRA (or the base model) again, on other seeds: the confirmation of a winner.

A sweep picks its winner as the maximum of noisy scores, so the winner's own score is biased
upward (the winner's curse). Scoring the top trials' saved LoRAs again on *fresh* seeds gives
estimates that the selection has not seen. This module does one such scoring; which trials to
confirm, and what the result means, is the orchestrator's business (``hpo.verdict.confirm``).

The images are drawn exactly as at a rung (same pipeline, prompts, steps and guidance) with
only the base seed and, optionally, the number of images per prompt changed, so every LoRA and
the baseline rescored with the same ``seed`` share their images' seeds (common random numbers)
and can be compared prompt by prompt.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from trials.config import TrialConfig
from trials.models.lora import WEIGHTS_NAME
from trials.train.loop import base_evaluator


def rescore(config: TrialConfig, lora_dir: Path | None, seed: int,
            images_per_prompt: int | None = None) -> dict[str, Any]:
    """Score ``lora_dir`` (a folder with ``pytorch_lora_weights.safetensors``; None = the base
    model) on the prompts of ``config.eval`` with base seed ``seed``.

    Returns the rung metrics of :meth:`trials.eval.evaluator.Evaluator.score` (``clip_score``,
    ``clip_score_stderr``, ``per_prompt``, ``clip_i``, ...) plus ``seed``,
    ``images_per_prompt`` and ``eval_seconds``; the image grid goes to
    ``config.output_dir/samples.png``. Raises ``FileNotFoundError`` when the LoRA file is
    missing.
    """
    if lora_dir is not None and not (Path(lora_dir) / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{lora_dir}: no {WEIGHTS_NAME} to rescore")
    eval_spec = replace(config.eval, seed=seed,
                        images_per_prompt=images_per_prompt or config.eval.images_per_prompt)
    config = replace(config, eval=eval_spec)
    evaluator, _ = base_evaluator(config)  # the base model's control images on these seeds
    started = time.perf_counter()
    if lora_dir is not None:
        # diffusers reads the adapter config (rank, alpha, modules) stored with the weights.
        evaluator.pipe.load_lora_weights(str(lora_dir))
    scores = evaluator.score(Path(config.output_dir))
    scores.update(seed=seed, images_per_prompt=eval_spec.images_per_prompt,
                  eval_seconds=time.perf_counter() - started)
    return scores
