"""Scoring at a rung: drawing the held-out prompts' images and measuring them.

Open :mod:`~trials.eval.evaluator` first: it draws the seeded images with the current UNet and
scores them. It uses :mod:`~trials.eval.score` (image generation, the CLIP scorer: CLIP-T and
CLIP-I, the image grid), :mod:`~trials.eval.fast_eval` (prompt embeddings kept, LoRA merged
while drawing) and :mod:`~trials.eval.subject_fidelity` (CLIP-I and DINO against held-out real
images, with :mod:`~trials.eval.dino`). Imports ``trials.data``, ``trials.models`` and below.
"""
