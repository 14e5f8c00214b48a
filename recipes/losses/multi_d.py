"""Losses for K discriminators (random-projection GAN, FrameGAN): D losses, and the generator's combination.

Each discriminator k gives logits (B, K). Its own loss is the BCE GAN loss; the discriminators' losses are
summed, which with element-wise optimizers (Adam, RMSprop) is exactly K independent discriminators with K
optimizers (block k of the grouped weights only gets gradient from loss k).

Optional, beyond the paper: the R1 penalty (Mescheder, Geiger & Nowozin 2018) of each discriminator on its
OWN input, the fixed projection of real data: (gamma / 2) E ||grad_p D_k(p)||^2, p = P_k x (`r1_penalties`).

Generator, with l_k = BCE(D_k(G(z)), 1) (non-saturating):
- "mean":        (1/K) sum_k l_k (Neyshabur et al., rpgan);
- "sum":         sum_k l_k (FrameGAN authors' `vanilla` mode; the mean times K);
- "hypervolume": -sum_k log(eta - l_k), eta = delta * max_k l_k with the max taken on DETACHED losses
                 (Albuquerque et al. 2019, hGAN/FrameGAN; delta = 1.5 in their scripts, + 1e-8 as in code).
                 d/dl_k = 1 / (eta - l_k): the discriminators G is losing to weigh most.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GeneratorLoss = Literal["mean", "sum", "hypervolume"]
NADIR_EPS = 1e-8


def discriminator_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-discriminator loss (K,): BCE(D_k(x), 1) + BCE(D_k(G(z)), 0), each a mean over the batch."""
    real = F.binary_cross_entropy_with_logits(
        real_logits.float(), torch.ones_like(real_logits, dtype=torch.float), reduction="none"
    ).mean(0)
    fake = F.binary_cross_entropy_with_logits(
        fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float), reduction="none"
    ).mean(0)
    return real + fake


def generator_losses(fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-discriminator non-saturating generator loss l_k (K,) = BCE(D_k(G(z)), 1), mean over the batch."""
    ones = torch.ones_like(fake_logits, dtype=torch.float)
    return F.binary_cross_entropy_with_logits(fake_logits.float(), ones, reduction="none").mean(0)


def hypervolume_loss(losses: torch.Tensor, delta: float = 1.5) -> torch.Tensor:
    """-sum_k log(eta - l_k) with eta = delta * max_k l_k (detached) + 1e-8; needs delta > 1."""
    if delta <= 1.0:
        raise ValueError(f"hypervolume nadir slack delta must be > 1, got {delta}")
    nadir = delta * losses.detach().max() + NADIR_EPS
    return -torch.log(nadir - losses).sum()


def combine_generator_losses(losses: torch.Tensor, mode: GeneratorLoss, delta: float = 1.5) -> torch.Tensor:
    """The scalar the generator minimises, from the K losses (see the module docstring)."""
    if mode == "mean":
        return losses.mean()
    if mode == "sum":
        return losses.sum()
    if mode == "hypervolume":
        return hypervolume_loss(losses, delta)
    raise ValueError(f"unknown generator loss {mode!r} (mean, sum or hypervolume)")


def r1_penalties(real_logits: torch.Tensor, projected_real: torch.Tensor) -> torch.Tensor:
    """Each discriminator's R1 term (K,) = E_x ||grad_p D_k(p)||^2, p = P_k x, with the graph kept.

    `projected_real` (B, K, ...) must require grad and `real_logits` (B, K) come from it with channel k
    feeding discriminator k only (grouped convs), so one gradient of the summed logits holds every
    discriminator's own input gradient."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), projected_real, create_graph=True)
    return grad.float().square().flatten(2).sum(2).mean(0)
