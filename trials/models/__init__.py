"""The frozen Stable Diffusion parts and the LoRA adapters put on them.

:mod:`~trials.models.components` loads the tokenizer, text encoder, VAE, UNet and scheduler
(a hub id, a local diffusers folder, the toy world or the tiny model) and builds the pipeline;
:mod:`~trials.models.lora` attaches, saves and describes a LoRA (or DoRA) on the UNet. Imports
``trials.config``, ``trials.data`` and the toy world's paths (``trials.toyworld``).
"""
