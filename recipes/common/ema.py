"""An exponential moving average of a generator's weights, which samples and evaluation can use instead of the
raw weights (an option of the TGAN and FrameGAN recipes; neither paper averages)."""

from __future__ import annotations

import torch


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- decay_t * ema + (1 - decay_t) * model for every parameter, buffers (BN running statistics)
    copied. decay_t = min(decay, (1 + step) / (10 + step)) so the average forgets the initialisation early.
    Why: a GAN's generator weights swing between checkpoints a few hundred steps apart, and the average of the
    recent weights samples better than any one of them (Yazici et al. 2019, "The unusual effectiveness of
    averaging in GAN training")."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
