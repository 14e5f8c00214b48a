"""FrameGAN (Albuquerque, Monteiro & Falk 2019, arXiv 1901.11384; code belaalb/frameGAN): models.

Stage 1 trains a DCGAN-like frame generator G_F against K discriminators, each behind its own FIXED unit-norm
random projection (Neyshabur et al. 2017). Stage 2 trains a video generator G_V (FC stack + 2-layer BiLSTM)
that maps one noise vector to one latent per frame and renders them through the FROZEN G_F, against K 3-D
discriminators behind fixed per-frame projections.

The K discriminators run batched: the K projections are one convolution with K output channels and every
later layer is one grouped convolution (groups=K), so one kernel launch per layer serves all K. The grouped
weights of discriminator k are the k-th block of out-channels, so `LoopDiscriminators.from_batched` copies
them into K separate modules (same maths, a Python loop: the reference for tests and bench_framegan).

Exact layer shapes (30x30 frames, 30-frame clips) are the authors' (`frames_generator/model.py`,
`bouncing_balls/models_zoo.py`); the widths are parameters only so CPU smoke runs can shrink them.
Differences from the authors' code, all documented where they happen:
- discriminators return logits and the loss uses BCE-with-logits (the stable form of their sigmoid + BCELoss);
- projections default to i.i.d. Gaussian directions (Neyshabur's rpgan); `projection_init="uniform"` gives the
  authors' weight_norm(Conv) with PyTorch's default (uniform) direction;
- G_V reshapes its 3840-vector PER SAMPLE to (30, 128); the authors' raw `view(30, B, 128)` interleaves batch
  items (`raw_view=True` reproduces it).

Initialisation (`init`): "dcgan" (default) draws every conv/linear weight of G_F and of the discriminators
from N(0, 0.02) with zero biases, as DCGAN and the authors' code (their G_F and both stages'
discriminators); BN weights N(1, 0.02). "pytorch" keeps PyTorch's default (Kaiming-uniform) init. G_V
keeps PyTorch's default in both cases, as the authors' code (it sets no init for the navigator; the paper
says nothing).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.2
INITS = ("dcgan", "pytorch")


def init_weights(module: nn.Module, init: str) -> None:
    """Apply `init` ("dcgan" or "pytorch", see the module docstring) to `module`'s conv/linear/BN layers."""
    if init == "dcgan":
        init_dcgan(module)
    elif init != "pytorch":  # "pytorch": the layers already hold PyTorch's default init
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def init_dcgan(module: nn.Module) -> None:
    """DCGAN / authors' init: conv/linear weights N(0, 0.02), BN weights N(1, 0.02), biases 0.

    A grouped conv's weight holds the K discriminators' kernels side by side, so drawing it element-wise is
    the same distribution as K separate convs."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# --- stage 1: frame generator ------------------------------------------------------------------------------


class FrameGenerator(nn.Module):
    """G_F: z (B, z_dim) -> frame (B, C, size, size) in [-1, 1]; size 30 (authors) or 64 (DCGAN layout).

    30x30: Linear(z -> 2*2*w) + BN + ReLU, view (w, 2, 2), ConvT(w->w) 4x4, ConvT(w->w/2) 8x8, ConvT(w/2->w/4)
    16x16 (k4 s2 p1, each + BN + ReLU), ConvT(w/4->C, k4 s2 p2) 30x30, tanh; w = 1024 in the paper.
    64x64: Linear(z -> 4*4*w), then ConvT w -> w/2 -> w/4 -> w/8 -> C (k4 s2 p1): 8, 16, 32, 64.
    """

    def __init__(
        self, *, size: int = 30, channels: int = 1, z_dim: int = 100, width: int = 1024, init: str = "dcgan"
    ) -> None:
        super().__init__()
        if size == 30:
            start, chans, last_pad = 2, [width, width, width // 2, width // 4], 2
        elif size == 64:
            start, chans, last_pad = 4, [width, width // 2, width // 4, width // 8], 1
        else:
            raise ValueError(f"FrameGAN frame size must be 30 or 64, got {size}")
        self.size, self.channels, self.z_dim, self.start, self.width = size, channels, z_dim, start, width
        self.fc = nn.Sequential(
            nn.Linear(z_dim, start * start * width),
            nn.BatchNorm1d(start * start * width),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(chans[-1], channels, 4, 2, last_pad), nn.Tanh()]
        self.deconv = nn.Sequential(*layers)
        init_weights(self, init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.width, self.start, self.start)
        return self.deconv(h)


# --- K discriminators behind fixed random projections ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One convolution of a discriminator: output channels, kernel, stride, padding (per spatial dim)."""

    out: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]


def _spec(out: int, k, s, p, dim: int) -> ConvSpec:
    def t(v):
        return tuple(v) if isinstance(v, tuple | list) else (v,) * dim

    return ConvSpec(out, t(k), t(s), t(p))


def frame_discriminator_spec(size: int, width: int = 256) -> tuple[ConvSpec, list[ConvSpec]]:
    """Stage 1 (2-D): projection k8 s2 p3 -> conv stack -> 1 logit (authors' shapes for 30x30).

    30: 30 -P-> 15 -> 8 (k4 s2 p2) -> 4 -> 2 (k4 s2 p1) -> 1 (k4 s1 p1).
    64: 64 -P-> 32 -> 16 -> 8 -> 4 -> 1 (k4 s1 p0).
    """
    proj = _spec(1, 8, 2, 3, 2)
    if size == 30:
        layers = [
            _spec(width, 4, 2, 2, 2),
            _spec(2 * width, 4, 2, 1, 2),
            _spec(4 * width, 4, 2, 1, 2),
            _spec(1, 4, 1, 1, 2),
        ]
    elif size == 64:
        layers = [
            _spec(width, 4, 2, 1, 2),
            _spec(2 * width, 4, 2, 1, 2),
            _spec(4 * width, 4, 2, 1, 2),
            _spec(1, 4, 1, 0, 2),
        ]
    else:
        raise ValueError(f"FrameGAN frame size must be 30 or 64, got {size}")
    return proj, layers


def video_discriminator_spec(width: int = 256) -> tuple[ConvSpec, list[ConvSpec]]:
    """Stage 2 (3-D), authors' shapes for (1, 30, 30, 30): per-frame projection k(1,8,8) s(1,3,3) p(0,2,2) ->
    30x9x9 -> 15x4x4 (k4 s2 p1) -> 7x3x3 (k4 s(2,1,1) p1) -> 4x2x2 (k4 s1 p(0,1,1)) -> 1x1x1 (k4 s1 p(0,1,1)).
    Other sizes work if every layer has room; leftover positions are averaged (see MultiDiscriminator).
    """
    proj = _spec(1, (1, 8, 8), (1, 3, 3), (0, 2, 2), 3)
    layers = [
        _spec(width, 4, 2, 1, 3),
        _spec(2 * width, 4, (2, 1, 1), 1, 3),
        _spec(3 * width, 4, 1, (0, 1, 1), 3),
        _spec(1, 4, 1, (0, 1, 1), 3),
    ]
    return proj, layers


def random_projections(
    k: int, in_channels: int, kernel: Sequence[int], *, init: str, generator: torch.Generator
) -> torch.Tensor:
    """K unit-norm filters (K, in_channels, *kernel): Gaussian (rpgan) or PyTorch's default uniform."""
    shape = (k, in_channels, *kernel)
    if init == "gaussian":
        v = torch.randn(shape, generator=generator)
    elif (
        init == "uniform"
    ):  # kaiming_uniform(a=sqrt(5)) of a 1-output conv is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(in_channels * math.prod(kernel))
        v = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    else:
        raise ValueError(f"projection init must be 'gaussian' or 'uniform', got {init!r}")
    return v / v.flatten(1).norm(dim=1).view(k, *([1] * (len(shape) - 1)))


def one_output_position(spatial: Sequence[int], spec: ConvSpec) -> bool:
    """Whether `spec` maps an input of this spatial size to a single output position whose window holds every
    input position (then the conv is one dot product per output channel)."""
    return all(
        (n + 2 * p - k) // s == 0 and n + p <= k
        for n, k, s, p in zip(spatial, spec.kernel, spec.stride, spec.padding, strict=True)
    )


def _conv(dim: int):
    return (nn.Conv2d, F.conv2d) if dim == 2 else (nn.Conv3d, F.conv3d)


def forward_in_parts(d: nn.Module, parts: Sequence[torch.Tensor], projected: bool) -> torch.Tensor:
    """D's logits of each batch in `parts`, each through its own graph, concatenated: the logits of one
    forward of their concatenation (D has no batch statistics), but a gradient of one part's logits (R1's, of
    the real half of a real + fake batch) then runs through that part's graph only. (A concatenation split
    again inside D would not do: the engine would run the other part's backward on zeros.)"""
    return torch.cat([d(part, projected=projected) for part in parts])


class MultiDiscriminator(nn.Module):
    """K discriminators as grouped convolutions: x (B, C, ...) -> logits (B, K), one launch per layer.

    `projection` (K, C, *kernel) is a buffer: never trained, in no optimizer, saved with the weights.
    Layer i is one Conv with groups=K whose out-channel block k belongs to discriminator k. Either init draws
    like K separate convs (N(0, 0.02) is element-wise; PyTorch's default uses the per-group fan-in).
    LeakyReLU 0.2, no BN.
    """

    def __init__(
        self,
        k: int,
        in_channels: int,
        proj: ConvSpec,
        layers: Sequence[ConvSpec],
        *,
        projection_init: str = "gaussian",
        projection_seed: int = 0,
        init: str = "dcgan",
        dot_head: bool = False,
    ) -> None:
        super().__init__()
        self.k, self.dim, self.proj_spec, self.specs = k, len(proj.kernel), proj, list(layers)
        self.dot_head = dot_head
        conv_cls, self._conv = _conv(self.dim)
        gen = torch.Generator().manual_seed(projection_seed)
        self.register_buffer(
            "projection", random_projections(k, in_channels, proj.kernel, init=projection_init, generator=gen)
        )
        convs, c_in = [], 1
        for s in self.specs:
            convs.append(conv_cls(k * c_in, k * s.out, s.kernel, s.stride, s.padding, groups=k))
            c_in = s.out
        self.convs = nn.ModuleList(convs)
        init_weights(self.convs, init)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Every discriminator's own fixed projection of x: (B, C, ...) -> (B, K, ...)."""
        p = self.proj_spec
        return self._conv(x, self.projection.to(x.dtype), None, p.stride, p.padding)

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor], *, projected: bool = False) -> torch.Tensor:
        """Logits (B, K); `projected=True`: x is already `project(...)`'s output (channel k feeds D_k).
        A sequence of batches: see `forward_in_parts`."""
        if not isinstance(x, torch.Tensor):
            return forward_in_parts(self, x, projected)
        h = x if projected else self.project(x)
        for conv in self.convs[:-1]:
            h = F.leaky_relu(conv(h), LEAK)
        if self.dot_head and one_output_position(h.shape[2:], self.specs[-1]):
            return self._dot_head(h)
        return self.convs[-1](h).flatten(2).mean(2)  # (B, K); a 1x1(x1) map for the authors' sizes

    def _dot_head(self, h: torch.Tensor) -> torch.Tensor:
        """The last conv where its output is one position: per discriminator, the dot product of its input
        with the kernel taps that see it (the taps over padding multiply zeros). The same sum as the grouped
        conv in another order: CPU backends run a grouped conv whose kernel overhangs a 2x2 input slowly."""
        conv, spec = self.convs[-1], self.specs[-1]
        taps = tuple(slice(p, p + n) for p, n in zip(spec.padding, h.shape[2:], strict=True))
        w = conv.weight[(slice(None), slice(None), *taps)].reshape(self.k, spec.out, -1)
        return torch.einsum("bkx,kox->bko", h.reshape(len(h), self.k, -1), w).flatten(1) + conv.bias


class SingleDiscriminator(nn.Module):
    """One discriminator: its projection (buffer) and its own conv stack -> logits (B,)."""

    def __init__(self, projection: torch.Tensor, proj: ConvSpec, layers: Sequence[ConvSpec]) -> None:
        super().__init__()
        self.dim, self.proj_spec = len(proj.kernel), proj
        conv_cls, self._conv = _conv(self.dim)
        self.register_buffer("projection", projection.clone())
        mods: list[nn.Module] = []
        c_in = 1
        for i, s in enumerate(layers):
            mods.append(conv_cls(c_in, s.out, s.kernel, s.stride, s.padding))
            if i < len(layers) - 1:
                mods.append(nn.LeakyReLU(LEAK))
            c_in = s.out
        self.net = nn.Sequential(*mods)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        p = self.proj_spec
        return self._conv(x, self.projection.to(x.dtype), None, p.stride, p.padding)

    def forward(self, x: torch.Tensor, *, projected: bool = False) -> torch.Tensor:
        h = x if projected else self.project(x)
        return self.net(h).flatten(1).mean(1)


class LoopDiscriminators(nn.Module):
    """Reference: K separate discriminators called in a Python loop; same interface as MultiDiscriminator."""

    def __init__(self, discriminators: Sequence[SingleDiscriminator]) -> None:
        super().__init__()
        self.k = len(discriminators)
        self.discriminators = nn.ModuleList(discriminators)

    @classmethod
    def from_batched(cls, multi: MultiDiscriminator) -> LoopDiscriminators:
        """K modules holding exactly the weights of `multi` (block k of every grouped conv)."""
        discs = []
        for k in range(multi.k):
            d = SingleDiscriminator(multi.projection[k : k + 1], multi.proj_spec, multi.specs)
            convs = [m for m in d.net if isinstance(m, nn.Conv2d | nn.Conv3d)]
            with torch.no_grad():
                for conv, grouped in zip(convs, multi.convs, strict=True):
                    n = conv.out_channels
                    conv.weight.copy_(grouped.weight[k * n : (k + 1) * n])
                    conv.bias.copy_(grouped.bias[k * n : (k + 1) * n])
            discs.append(d)
        return cls(discs)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([d.project(x) for d in self.discriminators], dim=1)

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor], *, projected: bool = False) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            return forward_in_parts(self, x, projected)
        if projected:
            return torch.stack(
                [d(x[:, k : k + 1], projected=True) for k, d in enumerate(self.discriminators)], 1
            )
        return torch.stack([d(x) for d in self.discriminators], dim=1)


def frame_discriminators(
    k: int, *, size: int = 30, channels: int = 1, width: int = 256, **options: Any
) -> MultiDiscriminator:
    """Stage 1: K 2-D discriminators on frames (B, C, size, size) -> (B, K) logits. `options`:
    MultiDiscriminator's (projection_init, projection_seed, init, dot_head)."""
    return MultiDiscriminator(k, channels, *frame_discriminator_spec(size, width), **options)


def video_discriminators(
    k: int, *, channels: int = 1, width: int = 256, **options: Any
) -> MultiDiscriminator:
    """Stage 2: K 3-D discriminators on clips (B, C, T, H, W) -> (B, K) logits. `options`: as
    frame_discriminators'."""
    return MultiDiscriminator(k, channels, *video_discriminator_spec(width), **options)


# --- stage 2: video generator ----------------------------------------------------------------------------


LSTM_SPREAD = 0.25  # spread_codes_: std over z of G_V's LSTM outputs (PyTorch's init: about 0.02)


class VideoGenerator(nn.Module):
    """G_V: z (B, z_dim) -> one latent per frame (B, T, code_dim) in [-1, 1] for the frozen G_F.

    FC z -> 512 -> 1024 -> 2048 -> T*128 (bias-free, BN1d + ReLU each), reshape per sample to (T, 128),
    2-layer bidirectional LSTM(hidden 256, zero initial state), Linear(512 -> code_dim) + tanh.
    `raw_view=True` reproduces the authors' `view(T, B, 128)` without a transpose, which mixes batch items.
    Note (paper and code alike): tanh codes lie in [-1, 1] while G_F was trained on z ~ N(0, I), whose
    coordinates pass 1 in a third of draws; `output="sphere"` (beyond the paper) puts each code on the sphere
    of radius sqrt(code_dim) instead, where such z concentrate: no saturation, no blank-frame region.
    """

    def __init__(
        self,
        *,
        z_dim: int = 100,
        code_dim: int = 100,
        frames: int = 30,
        step_dim: int = 128,
        hidden: Sequence[int] = (512, 1024, 2048),
        lstm_hidden: int = 256,
        raw_view: bool = False,
        output: Literal["tanh", "sphere"] = "tanh",
    ) -> None:
        super().__init__()
        self.frames, self.step_dim, self.raw_view, self.output = frames, step_dim, raw_view, output
        dims = [z_dim, *hidden, frames * step_dim]
        fc: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            fc += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        self.fc = nn.Sequential(*fc)
        self.lstm = nn.LSTM(step_dim, lstm_hidden, num_layers=2, bidirectional=True)
        self.out = nn.Linear(2 * lstm_hidden, code_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pre = self._pre_tanh(z)
        if self.output == "sphere":  # radius sqrt(code_dim): where G_F's z ~ N(0, I) concentrate
            return (pre * (pre.shape[-1] ** 0.5 / pre.norm(dim=-1, keepdim=True))).transpose(0, 1)
        return torch.tanh(pre).transpose(0, 1)  # (B, T, code_dim)

    def _pre_tanh(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self._lstm_out(z))  # (T, B, code_dim)

    def _lstm_out(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        h = self.fc(z)
        if self.raw_view:  # authors' quirk: chunks of different samples interleave
            seq = h.view(self.frames, b, self.step_dim)
        else:
            seq = h.view(b, self.frames, self.step_dim).transpose(0, 1)  # (T, B, 128), sample-wise
        return self.lstm(seq)[0]  # (T, B, 2*hidden), zero initial state

    @torch.no_grad()
    def spread_codes_(self, z: torch.Tensor) -> None:
        """Data-dependent init (beyond the paper): scale the LSTM's input weights until its outputs vary with
        z (std over the batch `z` >= LSTM_SPREAD), then the output layer so that every pre-activation code
        coordinate has mean 0 and std 1 over the batch; BatchNorm statistics are left as they were.

        At PyTorch's init the LSTM's outputs hardly depend on z (std 0.02 over z) and the codes sit near 0
        (norm 0.4, where G_F's z have norm 10), where a trained G_F draws blank frames: the video
        discriminators rejected those at once and G_V stayed there, or, with only the output layer rescaled
        (weights x90), every z collapsed onto one video within 100 steps (issue #15).
        """
        buffers = {k: v.clone() for k, v in self.named_buffers()}
        for _ in range(8):  # the LSTM's input weights up until its outputs carry z (std over the batch)
            spread = self._lstm_out(z).std(1).mean().item()
            if spread >= LSTM_SPREAD:
                break
            for name, p in self.lstm.named_parameters():
                if name.startswith("weight_ih"):
                    p.mul_(min(4.0, LSTM_SPREAD / max(spread, 1e-8)) ** 0.5)
        pre = self._pre_tanh(z).flatten(0, 1)
        self.load_state_dict(buffers, strict=False)
        mean, std = pre.mean(0), pre.std(0).clamp_min(1e-8)
        self.out.weight.div_(std[:, None])
        self.out.bias.sub_(mean).div_(std)


def render_video(frame_generator: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Push per-frame codes (B, T, code_dim) through G_F -> video (B, C, T, H, W)."""
    b, t, d = codes.shape
    frames = frame_generator(codes.reshape(b * t, d))  # (B*T, C, H, W)
    return frames.view(b, t, *frames.shape[1:]).transpose(1, 2)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode (BN running stats) and no parameter gradients: the frozen G_F of stage 2."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
