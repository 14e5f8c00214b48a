"""WGAN losses and TGAN's Lipschitz constraints: singular value clipping, BN gamma and weight clipping.

Facts (pfnet-research/tgan `updaters/tgan_updater_wgan.py`):
- L_D = mean D(fake) - mean D(real), L_G = -mean D(fake).
- Singular value clipping (SVC), every `freq` = 5 iterations: each critic weight W is viewed as
  (out_ch, -1), decomposed W = U diag(s) V^T, s clipped to <= 1, and W rebuilt.
- BN gamma clipping at the same time: gamma clamped to [0.01 sigma, sigma], sigma = sqrt(running variance).
  Under DDP each rank's running statistics come from its own batches (DDP only broadcasts rank 0's buffers
  at the start of each forward), so clipping with them would give each rank different gammas and the
  replicas would drift apart. With `group` set (train_step passes the DDP critic's process group) the
  running means and variances are first averaged over the ranks (one all-reduce), so every rank clips
  with the same sigma and the parameters stay bitwise identical. Single-process training is unchanged.
- The weight-clipping baseline clamps every critic parameter to [-0.01, 0.01] after every update.

Which weights SVC touches (`scope`), following the project rule "paper by default, code as an option":
- "paper" (default): the paper clips the weights of convolutional *and linear* layers, i.e. every parameter
  with ndim >= 2 (1-D/2-D/3-D conv and transposed-conv kernels and linear matrices; biases and BN gammas
  excluded).
- "code": the authors' code clips only parameters with ndim >= 4, i.e. 2-D and 3-D conv kernels.
TGAN's critic (`recipes.models.tgan.VideoCritic`) has only 3-D and 2-D conv kernels, so both scopes clip
exactly the same five kernels there (four Conv3d, one Conv2d). They differ only for critics that hold linear
layers or 1-D convs (e.g. a user's own critic with a linear head), where "code" leaves those unconstrained.

Speed: weights are grouped by matrix shape and each group goes through ONE batched `torch.linalg.svd` on the
weights' own device (no Python loop over matrices, no host round trip); groups whose singular values are all
<= 1 already are left untouched. `bench/bench_svc.py` measures it against the authors' per-layer SciPy SVD.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

SvcScope = Literal["paper", "code"]


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """L_D = mean D(fake) - mean D(real) (the critic minimises it)."""
    return d_fake.mean() - d_real.mean()


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """L_G = -mean D(fake)."""
    return -d_fake.mean()


def svc_parameters(module: nn.Module, scope: SvcScope = "paper") -> list[nn.Parameter]:
    """The weights SVC clips under `scope` (see the module docstring)."""
    if scope not in ("paper", "code"):
        raise ValueError(f"SVC scope must be 'paper' or 'code', got {scope!r}")
    min_ndim = 2 if scope == "paper" else 4
    return [p for p in module.parameters() if p.ndim >= min_ndim]


@torch.no_grad()
def clip_singular_values_(module: nn.Module, *, scope: SvcScope = "paper", bound: float = 1.0) -> float:
    """Clip the singular values of every selected weight (viewed as (out, -1)) to <= `bound`, in place.

    Returns the largest singular value seen before clipping (useful to log how far the critic drifts).
    """
    groups: dict[tuple[int, int, torch.dtype, torch.device], list[nn.Parameter]] = defaultdict(list)
    for p in svc_parameters(module, scope):
        groups[(p.shape[0], p[0].numel(), p.dtype, p.device)].append(p)
    largest = 0.0
    for params in groups.values():
        mats = torch.stack([p.reshape(p.shape[0], -1) for p in params])  # (L, out, rest)
        u, s, vh = torch.linalg.svd(mats, full_matrices=False)
        top = float(s[:, 0].max())
        largest = max(largest, top)
        if top <= bound:
            continue
        clipped = (u * s.clamp(max=bound).unsqueeze(-2)) @ vh  # U diag(min(s, bound)) V^T
        for p, w in zip(params, clipped, strict=True):
            p.copy_(w.view_as(p))
    return largest


def _tracked_bns(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.weight is not None
        and m.running_var is not None
    ]


@torch.no_grad()
def average_running_stats_(module: nn.Module, group: Any = None) -> None:
    """Replace every BN running mean / variance by its mean over the ranks of `group` (one all-reduce of
    all of them together; every rank ends with the same bits)."""
    bns = _tracked_bns(module)
    if not bns:
        return
    stats = [t for m in bns for t in (m.running_mean, m.running_var) if t is not None]
    flat = torch.cat([t.reshape(-1) for t in stats])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    for t, part in zip(stats, flat.split([t.numel() for t in stats]), strict=True):
        t.copy_(part.view_as(t))


@torch.no_grad()
def clip_bn_gamma_(module: nn.Module, *, low: float = 0.01, group: Any = None) -> int:
    """Clamp every BN gamma to [low * sigma, sigma], sigma = sqrt(running_var); returns the BN layer count.

    `group`: a torch.distributed process group (or `dist.group.WORLD`) whose ranks first average their
    running statistics (see the module docstring); None = this process's statistics only."""
    if group is not None:
        average_running_stats_(module, group)
    bns = _tracked_bns(module)
    for m in bns:
        std = m.running_var.sqrt().to(m.weight.dtype)
        m.weight.copy_(torch.minimum(torch.maximum(m.weight, low * std), std))
    return len(bns)


@torch.no_grad()
def clip_weights_(module: nn.Module, *, c: float = 0.01) -> None:
    """WGAN weight-clipping baseline: every parameter (BN gammas too, as in the code) into [-c, c]."""
    for p in module.parameters():
        p.clamp_(-c, c)


def apply_lipschitz_constraint_(
    critic: nn.Module,
    *,
    method: Literal["svc", "clip", "none"],
    iteration: int,
    svc_every: int = 5,
    svc_scope: SvcScope = "paper",
    group: Any = None,
) -> float | None:
    """After the critic update of (1-based) `iteration`: SVC + gamma clipping every `svc_every` iterations,
    or weight clipping every iteration. Returns the largest singular value before SVC when it ran.

    `group`: the process group of a DDP critic (its running statistics are averaged before gamma
    clipping); None for single-process training."""
    if method == "svc":
        if iteration % svc_every == 0:
            largest = clip_singular_values_(critic, scope=svc_scope)
            clip_bn_gamma_(critic, group=group)
            return largest
    elif method == "clip":
        clip_weights_(critic)
    elif method != "none":
        raise ValueError(f"unknown Lipschitz constraint {method!r} (svc, clip, none)")
    return None
