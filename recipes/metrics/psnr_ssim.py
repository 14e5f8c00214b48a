"""PSNR and SSIM per frame of reconstructions against their scenes (the CUP recipe's table, issue #19).

Videos ``(N, C, T, H, W)`` in [-1, 1] are compared in [0, 1] (data range 1), frame by frame; colour frames
are compared per channel and averaged. SSIM is Wang et al. 2004 (IEEE TIP 13(4)): an 11x11 Gaussian window
of sigma 1.5, K1 = 0.01, K2 = 0.03, valid positions only (frames under 11 pixels use a window of their size),
as ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

K1, K2, WINDOW, SIGMA = 0.01, 0.03, 11, 1.5


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) in [-1, 1] -> (N * T * C, 1, H, W) in [0, 1], float64."""
    n, c, t, h, w = video.shape
    return ((video.double() + 1) / 2).permute(0, 2, 1, 3, 4).reshape(n * t * c, 1, h, w)


def psnr_frames(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of every frame (N, T) (channels pooled), data range 1; inf for identical frames."""
    n, c, t = real.shape[:3]
    mse = (_frames(fake) - _frames(real)).square().reshape(n, t, -1).mean(-1)
    return 10 * torch.log10(1.0 / mse)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_frames(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of every frame (N, T) (channels averaged)."""
    n, c, t, h, w = real.shape
    a, b = _frames(fake), _frames(real)
    size = min(WINDOW, h, w)
    win = _gaussian(size, SIGMA * size / WINDOW).to(a.device)
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a**2
    var_b = F.conv2d(b * b, win) - mu_b**2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    c1, c2 = K1**2, K2**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.reshape(n, t, c, -1).mean(dim=(2, 3))
