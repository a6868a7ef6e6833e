"""The world's AutoencoderKL: 3 x 32 x 32 images <-> 4 x 8 x 8 latents (downsampling by 4).

SD v1.5's VAE downsamples by 8 with 4 latent channels; this one keeps the 4 channels and the
class, and downsamples by 4 so a 32 px car still spans several latent cells. Trained as the
Stable Diffusion VAE is (Rombach et al. 2022, Sec. 3) minus the adversarial and perceptual
terms: reconstruction (L1 + MSE) plus a small KL weight. ``scaling_factor`` is set to 1 / std
of the latents, as SD does (0.18215 for its VAE), so the UNet sees unit-variance latents.
"""

from __future__ import annotations

import time

import torch
from diffusers import AutoencoderKL

from trials.toyworld.world import to_unit_range

KL_WEIGHT = 1e-5


def make_vae() -> AutoencoderKL:
    """The untrained world VAE (about 0.25 M parameters)."""
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )


def train_vae(images: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int,
              log_every: int = 25) -> tuple[AutoencoderKL, dict[str, float]]:
    """Train on uint8 ``images`` ``[n, 3, 32, 32]``; returns the VAE (eval mode) and its stats.

    Stats: final reconstruction MSE (mean of the last 20 steps, [-1, 1] range), the latent std
    the scaling factor came from, and wall seconds.
    """
    torch.manual_seed(seed)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    data = to_unit_range(images)
    start, recent = time.time(), []
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x = data[idx]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + torch.nn.functional.l1_loss(recon, x) + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = [*recent, mse.item()][-20:]
        if step % log_every == 0 or step == steps - 1:
            print(f"vae step {step}/{steps} mse {sum(recent) / len(recent):.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(data[i:i + 256]).latent_dist.mean
                             for i in range(0, min(len(data), 1024), 256)])
    std = float(latents.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae, {"recon_mse": sum(recent) / len(recent), "latent_std": std,
                 "seconds": time.time() - start}


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (unscaled) of every image, to sample latents cheaply per step."""
    means, stds = [], []
    data = to_unit_range(images)
    for i in range(0, len(data), 256):
        dist = vae.encode(data[i:i + 256]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)
