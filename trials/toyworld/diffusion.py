"""The world's text encoder and UNet, trained together on the base world (no brand).

A CLIPTextModel (hidden 32, the real CLIP BPE vocabulary of 49408 ids) and a two-level
UNet2DConditionModel with cross-attention at both levels, trained from scratch with SD v1.5's
objective and noise schedule: epsilon prediction, MSE with min-SNR weighting (gamma 5, the
reference script's ``--snr_gamma``), DDPM ``scaled_linear`` betas 0.00085-0.012 over 1000
steps. Captions are
dropped (replaced by "") 10 % of the time so classifier-free guidance works at sampling, as in
SD's training. The text encoder is trained too (SD's was frozen CLIP; there is no pretrained
one here): no weight decay, so embeddings of tokens the world never uses (e.g. "hyundai") stay
as initialised rather than shrinking towards zero.
"""

from __future__ import annotations

import time

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from trials.models.components import SD15_SCHEDULER_CONFIG

CAPTION_DROPOUT = 0.1
SNR_GAMMA = 5.0
CROSS_ATTENTION_DIM = 32


def make_text_encoder() -> CLIPTextModel:
    """A small CLIP text transformer with SD v1.5's tokenizer ids and 77-token context."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=CROSS_ATTENTION_DIM, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        hidden_act="quick_gelu", projection_dim=CROSS_ATTENTION_DIM,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))


def make_unet() -> UNet2DConditionModel:
    """A two-level UNet for 4 x 8 x 8 latents, cross-attention at both levels."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=8, norm_num_groups=8)


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids ``[n, 77]``, padded as the reference script does."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def train_text_to_image(latent_mean: torch.Tensor, latent_std: torch.Tensor,
                        scaling_factor: float, captions: list[str], tokenizer: CLIPTokenizer,
                        steps: int, batch_size: int, lr: float, seed: int, log_every: int = 25,
                        ) -> tuple[UNet2DConditionModel, CLIPTextModel, dict[str, float]]:
    """Train UNet + text encoder on cached VAE posteriors ``[n, 4, 8, 8]`` and their captions.

    Returns both networks in eval mode and stats (final loss = mean of the last 50 steps).
    """
    torch.manual_seed(seed)
    text_encoder = make_text_encoder()
    unet = make_unet()
    scheduler = DDPMScheduler(**SD15_SCHEDULER_CONFIG)
    alphas_cumprod = scheduler.alphas_cumprod
    ids = tokenize(tokenizer, captions)
    empty = tokenize(tokenizer, [""])[0]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW([
        {"params": list(unet.parameters()), "weight_decay": 1e-2},
        {"params": list(text_encoder.parameters()), "weight_decay": 0.0},
    ], lr=lr)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * max(0.0, 1 - s / steps)))
    gen = torch.Generator().manual_seed(seed)
    start, recent = time.time(), []
    unet.train()
    text_encoder.train()
    for step in range(steps):
        idx = torch.randint(0, len(latent_mean), (batch_size,), generator=gen)
        eps = torch.randn(latent_mean[idx].shape, generator=gen)
        latents = (latent_mean[idx] + latent_std[idx] * eps) * scaling_factor
        tokens = ids[idx].clone()
        drop = torch.rand(batch_size, generator=gen) < CAPTION_DROPOUT
        tokens[drop] = empty
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        hidden = text_encoder(tokens, return_dict=False)[0]
        pred = unet(noisy, t, hidden, return_dict=False)[0]
        # Min-SNR weighting (Hang et al. 2023; the reference script's --snr_gamma): faster
        # convergence than plain MSE, which matters on a CPU budget.
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        weight = snr.clamp(max=SNR_GAMMA) / snr
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        recent = [*recent, loss.item()][-50:]
        if step % log_every == 0 or step == steps - 1:
            print(f"unet step {step}/{steps} loss {sum(recent) / len(recent):.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    unet.eval()
    text_encoder.eval()
    return unet, text_encoder, {"loss": sum(recent) / len(recent), "seconds": time.time() - start}
