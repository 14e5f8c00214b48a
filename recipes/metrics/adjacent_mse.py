"""FrameGAN's adjacent-frame MSE (belaalb/frameGAN ``bouncing_balls/test.py``), as the authors compute it.

Per video, frames in [-1, 1] are binarised (``> 0`` -> 1, everything else 0: the authors set
``a[a > 0] = 1`` and ``a[a < 0] = 0``, so an exact 0 stays 0), ``sklearn.metrics.mean_squared_error`` of each
frame with the previous one (the mean over all pixels) is averaged over the T-1 adjacent pairs, and the report
is the mean and the population std (``np.std``) over videos. The authors compute it for real clips, generated
clips and a baseline of independent latent codes pushed through the frame generator (their
``test_lin_interp``; it is not an interpolation). It measures smoothness only: a static video scores 0, so
pair it with the physics metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def adjacent_frame_mse(videos: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(B, C, T, H, W)`` in [-1, 1] -> ``(B,)`` mean over adjacent pairs of the binarised-frame MSE."""
    x = torch.as_tensor(videos)
    if x.ndim != 5 or x.shape[2] < 2:
        raise ValueError(f"expected videos (B, C, T>=2, H, W), got {tuple(x.shape)}")
    binary = (x > 0).float()
    per_pair = (binary[:, :, 1:] - binary[:, :, :-1]).square().mean(dim=(1, 3, 4))  # (B, T-1)
    return per_pair.mean(dim=1).double().cpu().numpy()


def adjacent_mse_summary(videos: torch.Tensor | np.ndarray) -> dict[str, float]:
    """``{"mean", "std", "n"}`` over videos, as the authors print them."""
    per_video = adjacent_frame_mse(videos)
    return {"mean": float(per_video.mean()), "std": float(per_video.std()), "n": len(per_video)}


@torch.no_grad()
def independent_latent_videos(
    frame_generator: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_videos: int,
    n_frames: int,
    z_dim: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The authors' baseline: every frame from its own ``z ~ N(0, I)`` through the frame generator.

    ``frame_generator`` maps ``(N, z_dim)`` codes to ``(N, C, H, W)`` frames in [-1, 1]; returns
    ``(n_videos, C, n_frames, H, W)``. Seeded, unlike the authors' ``np.random.randn``.
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n_videos * n_frames, z_dim, generator=gen).to(device)
    frames = frame_generator(z)
    c, h, w = frames.shape[1:]
    return frames.reshape(n_videos, n_frames, c, h, w).transpose(1, 2).contiguous()
