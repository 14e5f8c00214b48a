"""CUP reconstruction models (issue #19): the U-Net, the DCGAN-style discriminator of the adversarial term and
the FrameGAN-prior encoder.

Every model sees the measurement through the known operator: the sensed image y (V, H + (T - 1) s, W) in units
of A x is back-projected per view without the sum over views (:class:`Backproject`, V * T channels of H x W).

- :class:`CupNet`: a two-level U-Net (Ronneberger et al. 2015, frames as channels) -> the T grey frames.
- :class:`PatchDiscriminator`: the slides' "DCGAN-style fully convolutional discriminator" on a T-frame video
  (frames as channels): strided 4x4 convolutions, LeakyReLU 0.2, BatchNorm after the first layer, no linear
  layer (Radford et al. 2016), a map of logits, one per receptive field (PatchGAN-like).
- :class:`PriorNet`: the FrameGAN-prior variant: an encoder from the back-projection to the latent of a FROZEN
  trained FrameGAN generator, rendered through it: per-frame codes of G_F, or (with G_V) G_V's one z.
- :class:`CupForward`: A and its adjoint in torch (differentiable), for per-sample latent optimisation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recipes.models.framegan import LEAK, init_dcgan, render_video


class Backproject(nn.Module):
    """The fixed per-view adjoint: (B, V, H + (T - 1) s, W) -> (B, V * T, H, W)."""

    def __init__(self, mask: np.ndarray, frames: int, shear: int, complementary: bool) -> None:
        super().__init__()
        m = torch.as_tensor(mask, dtype=torch.float32)
        masks = torch.stack([m, 1 - m]) if complementary else m[None]
        self.register_buffer("masks", masks[:, None])  # (V, 1, H, W)
        rows = torch.arange(frames)[:, None] * shear + torch.arange(m.shape[0])[None]
        self.register_buffer("rows", rows, persistent=False)  # (T, H)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y[:, :, self.rows, :] * self.masks).flatten(1, 2)


class CupForward(nn.Module):
    """A x in torch: (B, T, H, W) -> (B, V, H + (T - 1) s, W); its adjoint: ``Backproject`` summed over V."""

    def __init__(self, back: Backproject) -> None:
        super().__init__()
        self.back = back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, w = x.shape[0], x.shape[-1]
        masks, rows = self.back.masks, self.back.rows
        enc = (x[:, None] * masks[None]).flatten(2, 3)  # (B, V, T * H, W)
        y = enc.new_zeros(b, len(masks), int(rows.max()) + 1, w)
        return y.index_add(2, rows.flatten(), enc)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class CupNet(nn.Module):
    """Back-projection, then a two-level U-Net with skips: sensed (B, V, H', W) -> scene (B, T, H, W)."""

    def __init__(self, p, mask: np.ndarray, frames: int, width: int = 32) -> None:
        super().__init__()
        self.frames, self.norm = frames, 1.0 / (p.scale * frames * p.fill)
        self.back = Backproject(mask, frames, p.shear, p.complementary)
        cin, w = p.views * frames, width
        self.enc1, self.enc2, self.mid = _block(cin, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _block(2 * w, w)
        self.out = nn.Conv2d(w, frames, 1)

    def forward(self, sensed: torch.Tensor) -> torch.Tensor:
        x = self.back(sensed.float() * self.norm)
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 4, 0, -h % 4))  # two halvings need sides divisible by 4
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)[..., :h, :w]


class PatchDiscriminator(nn.Module):
    """DCGAN-style, fully convolutional: (B, T, H, W) in [-1, 1] -> logits (B, 1, H / 8, W / 8).

    Conv(T -> w, 4, 2, 1) + LeakyReLU, Conv(w -> 2w) + BN + LeakyReLU, Conv(2w -> 4w) + BN + LeakyReLU (each
    k4 s2 p1), Conv(4w -> 1, 3, 1, 1); DCGAN's N(0, 0.02) init (``recipes.models.framegan.init_dcgan``)."""

    def __init__(self, frames: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(frames, w, 4, 2, 1),
            nn.LeakyReLU(LEAK, inplace=True),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(LEAK, inplace=True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1),
            nn.BatchNorm2d(4 * w),
            nn.LeakyReLU(LEAK, inplace=True),
            nn.Conv2d(4 * w, 1, 3, 1, 1),
        )
        init_dcgan(self)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


class PriorNet(nn.Module):
    """Encoder to the latent of a frozen FrameGAN generator, rendered through it.

    The back-projection goes through three conv blocks (two halvings), is flattened and mapped linearly to
    T per-frame codes of G_F (``gv`` None) or to G_V's one z (then G_V gives the T codes). ``generator`` maps
    codes (B, T, D) to videos (B, C, T, H, W); the output is their channel mean (B, T, H, W)."""

    def __init__(
        self, p, mask: np.ndarray, frames: int, gf: nn.Module, gv: nn.Module | None = None, width: int = 32
    ) -> None:
        super().__init__()
        self.frames, self.norm = frames, 1.0 / (p.scale * frames * p.fill)
        self.back = Backproject(mask, frames, p.shear, p.complementary)
        h, w_px = mask.shape
        w = width
        self.enc = nn.Sequential(
            _block(p.views * frames, w),
            nn.MaxPool2d(2),
            _block(w, 2 * w),
            nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
        )
        self.gf, self.gv = gf, gv
        self.latent_dim = gv.fc[0].in_features if gv is not None else frames * gf.z_dim
        self.head = nn.Linear(4 * w * (h // 4) * (w_px // 4), self.latent_dim)
        for g in (gf, gv):
            if g is not None:
                g.eval()
                g.requires_grad_(False)

    def train(self, mode: bool = True) -> PriorNet:
        super().train(mode)
        for g in (self.gf, self.gv):  # the generators stay frozen: BN in eval mode
            if g is not None:
                g.eval()
        return self

    def encode(self, sensed: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.back(sensed.float() * self.norm)).flatten(1))

    def render(self, latent: torch.Tensor) -> torch.Tensor:
        codes = self.gv(latent) if self.gv is not None else latent.unflatten(1, (self.frames, -1))
        return render_video(self.gf, codes).mean(1)

    def forward(self, sensed: torch.Tensor) -> torch.Tensor:
        return self.render(self.encode(sensed))
