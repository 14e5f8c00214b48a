"""VideoGAN's two-stream generator, as used non-adversarially by video GLO (GLANN-VIDEO).

A 2-D background stream paints one still image; a 3-D foreground stream paints a moving video plus a mask;
the output is ``m * f + (1 - m) * b`` with ``b`` repeated over time (Vondrick et al. 2016, ``main.lua``;
ported to PyTorch as ``netG_new`` in danielafrimi/GLANN-VIDEO ``model_video_orig.py``).

With the defaults (``nz=100, frames=32, size=64, width=64``) the layers are exactly the reference's:

- background: ConvT2d nz->512 (k4) -> 256 -> 128 -> 64 (k4 s2 p1, BN + ReLU) -> 3 (k4 s2 p1) + tanh;
- foreground trunk: ConvT3d nz->512 with kernel (2, 4, 4) -> 256 -> 128 -> 64 (k4 s2 p1, BN + ReLU);
- heads: video ConvT3d 64->3 (4, 2, 1) + tanh, mask ConvT3d 64->1 (4, 2, 1) + sigmoid.

Other sizes keep the same pattern: ``log2(size / 4)`` doubling layers in each stream, channels halving from
``width * 2**(n - 1)`` down to ``width``, and the trunk's first temporal kernel ``frames / 2**n`` so that the
foreground doubles time together with space. The mask sparsity penalty of VideoGAN (``nn.L1Penalty(0.1)``,
0.1 * mean |m|) is not part of the module: :func:`mask_l1_penalty` computes it from the returned mask, and the
recipe adds it only when asked (GLANN-VIDEO has no such term).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import nn

Init = Literal["xavier", "videogan"]


class TwoStreamOutput(NamedTuple):
    """Everything the generator paints; ``video`` is what losses see."""

    video: torch.Tensor  # (B, C, T, H, W) in [-1, 1]
    foreground: torch.Tensor  # (B, C, T, H, W) in [-1, 1]
    background: torch.Tensor  # (B, C, H, W) in [-1, 1]
    mask: torch.Tensor  # (B, 1, T, H, W) in [0, 1]


def _doublings(size: int) -> int:
    n = int(round(math.log2(size / 4))) if size >= 8 else 0
    if size < 8 or 4 * 2**n != size:
        raise ValueError(f"size must be 4 * 2**k with k >= 1 (8, 16, 32, 64, 128, ...), got {size}")
    return n


def _up_block(dims: int, c_in: int, c_out: int, kernel, stride=1, padding=0) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    return [conv(c_in, c_out, kernel, stride, padding), norm(c_out), nn.ReLU(inplace=True)]


def _stream(dims: int, nz: int, width: int, n: int, first_kernel) -> nn.Sequential:
    """nz -> 4x4 (x T0) then n - 1 doublings, ending with ``width`` channels at size / 2."""
    chans = [width * 2 ** (n - 1 - k) for k in range(n)]
    layers = _up_block(dims, nz, chans[0], first_kernel)
    for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
        layers += _up_block(dims, c_in, c_out, 4, 2, 1)
    return nn.Sequential(*layers)


class TwoStreamGenerator(nn.Module):
    """z (B, nz) -> video (B, channels, frames, size, size) in [-1, 1].

    ``normalize_z`` divides z by its (detached) L2 norm in the forward pass, as GLANN-VIDEO and GLANN do, so
    the generator only ever sees points on the unit sphere whatever the mapping feeds it.
    """

    def __init__(
        self,
        nz: int = 100,
        *,
        frames: int = 32,
        size: int = 64,
        channels: int = 3,
        width: int = 64,
        normalize_z: bool = True,
        init: Init = "xavier",
    ) -> None:
        super().__init__()
        n = _doublings(size)
        t0, rem = divmod(frames, 2**n)
        if rem or t0 < 1:
            raise ValueError(
                f"frames must be a multiple of 2**log2(size/4) = {2**n} for size {size} "
                f"(the foreground doubles time with space), got {frames}"
            )
        self.nz, self.frames, self.size, self.channels = nz, frames, size, channels
        self.normalize_z = normalize_z
        self.background = nn.Sequential(
            _stream(2, nz, width, n, 4), nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()
        )
        self.trunk = _stream(3, nz, width, n, (t0, 4, 4))
        self.foreground = nn.Sequential(nn.ConvTranspose3d(width, channels, 4, 2, 1), nn.Tanh())
        self.mask = nn.Sequential(nn.ConvTranspose3d(width, 1, 4, 2, 1), nn.Sigmoid())
        self.reset_parameters(init)

    def reset_parameters(self, init: Init = "xavier") -> None:
        """Re-initialise the weights.

        ``xavier``: GLANN-VIDEO's ``weights_init`` (Xavier-normal, gain sqrt(2), on conv weights only; biases
        and BatchNorm keep PyTorch's defaults). ``videogan``: VideoGAN's conv N(0, 0.01), bias 0, BN weight
        N(1, 0.02), BN bias 0.
        """
        if init not in ("xavier", "videogan"):
            raise ValueError(f"init must be 'xavier' or 'videogan', got {init!r}")
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                if init == "xavier":
                    nn.init.xavier_normal_(m.weight, gain=math.sqrt(2.0))
                else:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) and init == "videogan":
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def parts(self, z: torch.Tensor) -> TwoStreamOutput:
        """Run both streams and composite; returns the video and its ingredients."""
        if z.ndim != 2 or z.shape[1] != self.nz:
            raise ValueError(f"z must be (B, {self.nz}), got {tuple(z.shape)}")
        if self.normalize_z:
            z = z / z.norm(dim=1, keepdim=True).detach().clamp_min(1e-12)
        b = self.background(z[:, :, None, None])  # (B, C, H, W)
        h = self.trunk(z[:, :, None, None, None])  # (B, width, T/2, H/2, W/2)
        f = self.foreground(h)  # (B, C, T, H, W)
        m = self.mask(h)  # (B, 1, T, H, W)
        video = m * f + (1 - m) * b.unsqueeze(2)  # broadcasting replicates m over C and b over T
        return TwoStreamOutput(video, f, b, m)

    def forward(self, z: torch.Tensor, *, parts: bool = False) -> torch.Tensor | TwoStreamOutput:
        """The video, or with ``parts=True`` all that :meth:`parts` returns (DDP wrappers can ask for it)."""
        out = self.parts(z)
        return out if parts else out.video


def mask_l1_penalty(mask: torch.Tensor, weight: float = 0.1) -> torch.Tensor:
    """VideoGAN's ``nn.L1Penalty(0.1, sizeAverage=true)`` on the mask: ``weight * mean |m|``."""
    return weight * mask.abs().mean()
