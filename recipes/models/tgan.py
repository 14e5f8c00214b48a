"""TGAN (Saito, Matsumoto & Saito, ICCV 2017): temporal generator G0, image generator G1, 3-D conv critic.

Layer for layer the Moving MNIST / golf networks of the authors' Chainer code (pfnet-research/tgan,
`FrameSeedGeneratorNoBetaInitUniform`, `VideoGeneratorInitUniform`, `VideoDiscriminatorNoBetaInitUniform`):

- G0: z0 ~ U(-1, 1)^100 as a length-1 sequence -> 1-D transposed convs 512 (k1) -> 256 -> 128 -> 128 -> 100
  (k4 s2 p1, length doubling to 16) -> tanh. BN without beta + ReLU between. Output z1: (N, 100, T).
- G1: z0 and z1_t through two bias-free linear branches (100 -> 4*4*256, BN + ReLU) concatenated to
  512x4x4, then bias-free transposed convs 512 -> 256 -> 128 -> 64 -> 32 (k4 s2 p1, BN with beta + ReLU)
  to 64x64 and a 3x3 transposed conv with bias to C channels, tanh. The T frames run as one batch of N*T.
- Critic: Conv3d(C -> 64, k4 s2 p1) + LReLU(0.2) (no BN), then 64 -> 128 -> 256 -> 512 with BN (no beta) +
  LReLU, down to 512 x T' x 4 x 4, then Conv2d(512 -> 1, k4) per remaining time step, no sigmoid.
- Every conv/linear weight starts U(-0.01, 0.01) (Chainer `Uniform(0.01)`), biases 0, BN gamma 1 and beta 0;
  BN eps 2e-5 and running-average momentum 0.1 as Chainer's defaults (decay 0.9).

Size-generic (documented deviation, the paper only uses 64x64x16): the number of up/down-sampling stages is
log2(size / 4), so 32x32 works for CPU smoke runs; G0 doubles the length from 1 to `n_frames` (a power of 2).
Where the critic ends with T' > 1 time steps, the authors reshape (N, 512, T', 4, 4) straight to
(N*T', 512, 4, 4), which mixes channels and time; we move time next to the batch first (identical for T' = 1)
and sum the T' scores per clip, which is what their `sum / batchsize` loss does with the N*T' outputs.

Conditional variant (our extension, off by default): with `n_classes = K > 0` a condition vector y (one-hot
class, or multi-hot when a clip holds several labelled objects, e.g. two MNIST digits) is concatenated to z0
at G0's input and at G1's z0 branch, and broadcast to K extra input planes of the critic (the usual cGAN
input conditioning).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 2e-5  # chainer.links.BatchNormalization default
LEAKY_SLOPE = 0.2  # chainer.functions.leaky_relu default
INIT_SCALE = 0.01  # "init-uniform-all": chainer.initializers.Uniform(0.01)


def _no_beta(bn: nn.modules.batchnorm._NormBase) -> nn.Module:
    """Drop the shift parameter of a BN layer (Chainer `use_beta=False`): gamma only, still normalised."""
    del bn.bias
    bn.register_parameter("bias", None)
    return bn


def init_uniform_(module: nn.Module, scale: float = INIT_SCALE) -> None:
    """Chainer `initialW=Uniform(scale)` on every conv/deconv/linear weight, zero biases, BN at (1, 0)."""
    for m in module.modules():
        if isinstance(
            m,
            nn.Conv1d
            | nn.Conv2d
            | nn.Conv3d
            | nn.ConvTranspose1d
            | nn.ConvTranspose2d
            | nn.ConvTranspose3d
            | nn.Linear,
        ):
            nn.init.uniform_(m.weight, -scale, scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


def default_init_(module: nn.Module) -> None:
    """PyTorch's own initialisation (`reset_parameters`) of every conv, deconv and linear layer."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            m.reset_parameters()


@torch.no_grad()
def orthogonal_init_(module: nn.Module) -> None:
    """Every conv / linear weight, viewed as (out, rest), set to a random semi-orthogonal matrix: all its
    singular values are 1, the most SVC allows, so a critic passes its input at full strength from the first
    step (U(-0.01, 0.01) kernels start with singular values far below 1). Biases and BN stay as they are."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            flat = torch.empty(m.weight.shape[0], m.weight[0].numel())
            nn.init.orthogonal_(flat)
            m.weight.copy_(flat.view_as(m.weight))


def _stages(size: int, what: str) -> int:
    """Number of stride-2 stages between a 4x4 bottom and `size`, which must be 4 * 2**n with n >= 1."""
    n = int(round(math.log2(size / 4))) if size >= 8 else 0
    if n < 1 or 4 * 2**n != size:
        raise ValueError(f"{what} must be 4 * 2**n with n >= 1 (8, 16, 32, 64, 128, ...), got {size}")
    return n


def check_cond(cond: torch.Tensor | None, n_classes: int, n: int, like: torch.Tensor) -> torch.Tensor | None:
    """The condition (N, n_classes) (one-hot, or multi-hot for clips with several labelled objects) cast to
    `like`'s device/dtype, or None for the unconditional model."""
    if n_classes == 0:
        if cond is not None:
            raise ValueError("a condition was given to an unconditional model (n_classes = 0)")
        return None
    if cond is None:
        raise ValueError(f"this model is conditional on {n_classes} classes: a condition is required")
    if cond.shape != (n, n_classes):
        raise ValueError(f"condition must have shape ({n}, {n_classes}), got {tuple(cond.shape)}")
    return cond.to(device=like.device, dtype=like.dtype)


def one_hot_labels(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Integer class labels (N,) -> float one-hot (N, n_classes)."""
    return F.one_hot(labels.long(), n_classes).float()


UPSAMPLE = ("deconv", "resize")


def upsample_stage(c_in: int, c_out: int, how: str) -> nn.Module:
    """One bias-free x2 upsampling stage of G1. "deconv": the paper's 4x4 stride-2 transposed conv. "resize":
    nearest-neighbour x2 then a 3x3 conv (Odena et al. 2016, "Deconvolution and checkerboard artifacts"):
    every output pixel gets the same number of kernel taps, so G cannot make the stride-2 checkerboard that
    a transposed conv with kernel 4 draws easily (our option, not the paper's)."""
    if how == "deconv":
        return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
    if how == "resize":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        )
    raise ValueError(f"upsample must be one of {UPSAMPLE}, got {how!r}")


class TemporalGenerator(nn.Module):
    """G0: z0 (N, z_slow_dim) -> trajectory z1 (N, z_fast_dim, n_frames) in (-1, 1)."""

    def __init__(
        self, *, n_frames: int = 16, z_slow_dim: int = 100, z_fast_dim: int = 100, n_classes: int = 0
    ) -> None:
        super().__init__()
        if n_frames < 2 or n_frames & (n_frames - 1):
            raise ValueError(f"n_frames must be a power of 2 >= 2 for G0's length doubling, got {n_frames}")
        self.n_frames, self.z_slow_dim, self.z_fast_dim, self.n_classes = (
            n_frames,
            z_slow_dim,
            z_fast_dim,
            n_classes,
        )
        n_up = int(math.log2(n_frames))
        chans = [max(512 // 2**i, 128) for i in range(n_up)]  # 16 frames: 512, 256, 128, 128
        layers: list[nn.Module] = [
            nn.ConvTranspose1d(z_slow_dim + n_classes, chans[0], 1, 1, 0),
            _no_beta(nn.BatchNorm1d(chans[0], eps=BN_EPS)),
            nn.ReLU(),
        ]
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.ConvTranspose1d(c_in, c_out, 4, 2, 1),
                _no_beta(nn.BatchNorm1d(c_out, eps=BN_EPS)),
                nn.ReLU(),
            ]
        layers += [nn.ConvTranspose1d(chans[-1], z_fast_dim, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_uniform_(self)

    def forward(self, z0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = z0 if y is None else torch.cat([z0, y], dim=1)
        return self.net(h.unsqueeze(-1))  # (N, D, 1) -> (N, z_fast_dim, n_frames)


class ImageGenerator(nn.Module):
    """G1: (z0, z1_t) pairs -> frames (M, C, size, size) in (-1, 1); M = N * T frames in one batch."""

    def __init__(
        self,
        *,
        out_channels: int = 1,
        size: int = 64,
        z_slow_dim: int = 100,
        z_fast_dim: int = 100,
        conv_ch: int = 512,
        bottom_width: int = 4,
        n_classes: int = 0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        n_up = _stages(size, "image size")
        self.half, self.bottom = conv_ch // 2, bottom_width
        mid = bottom_width * bottom_width * conv_ch // 2
        self.slow = nn.Sequential(
            nn.Linear(z_slow_dim + n_classes, mid, bias=False), nn.BatchNorm1d(mid, eps=BN_EPS), nn.ReLU()
        )
        self.fast = nn.Sequential(
            nn.Linear(z_fast_dim, mid, bias=False), nn.BatchNorm1d(mid, eps=BN_EPS), nn.ReLU()
        )
        layers: list[nn.Module] = []
        ch = conv_ch
        for _ in range(n_up):  # 64x64: 512 -> 256 -> 128 -> 64 -> 32
            layers += [upsample_stage(ch, ch // 2, upsample), nn.BatchNorm2d(ch // 2, eps=BN_EPS), nn.ReLU()]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, out_channels, 3, 1, 1, bias=True), nn.Tanh()]
        # kernels in the activations' channels-last layout (see forward), so their gradients have the
        # parameters' strides (DDP's gradient buckets expect that)
        self.up = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        init_uniform_(self)

    def forward(self, z_slow: torch.Tensor, z_fast: torch.Tensor) -> torch.Tensor:
        shape = (-1, self.half, self.bottom, self.bottom)
        h = torch.cat([self.slow(z_slow).view(shape), self.fast(z_fast).view(shape)], dim=1)
        # channels-last activations: PyTorch's CPU transposed convolutions with few channels run about twice
        # as fast in this layout (G1 forward + backward at 16 x 16 frames of 64x64, conv_ch 64: 0.49 -> 0.23
        # CPU s); same maths, cuDNN likes it too
        return self.up(h.contiguous(memory_format=torch.channels_last))


class VideoGenerator(nn.Module):
    """G0 + G1: z0 -> video (N, C, T, H, W); `render` draws the frames of any trajectory (interpolation)."""

    def __init__(
        self,
        *,
        out_channels: int = 1,
        size: int = 64,
        n_frames: int = 16,
        z_slow_dim: int = 100,
        z_fast_dim: int = 100,
        conv_ch: int = 512,
        n_classes: int = 0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        self.z_slow_dim, self.n_classes = z_slow_dim, n_classes
        self.g0 = TemporalGenerator(
            n_frames=n_frames, z_slow_dim=z_slow_dim, z_fast_dim=z_fast_dim, n_classes=n_classes
        )
        self.g1 = ImageGenerator(
            out_channels=out_channels,
            size=size,
            z_slow_dim=z_slow_dim,
            z_fast_dim=z_fast_dim,
            conv_ch=conv_ch,
            n_classes=n_classes,
            upsample=upsample,
        )

    def sample_z(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """z0 ~ U(-1, 1)^z_slow_dim, as in the paper and code (not a Gaussian)."""
        dev = device if device is not None else next(self.parameters()).device
        return torch.rand(n, self.z_slow_dim, generator=generator, device=dev) * 2 - 1

    def render(self, z0: torch.Tensor, z1: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Frames for trajectory z1 (N, z_fast_dim, T) of any length T: one G1 batch of N*T images."""
        n, d, t = z1.shape
        y = check_cond(cond, self.n_classes, n, z0)
        slow = z0 if y is None else torch.cat([z0, y], dim=1)
        slow = slow[:, None, :].expand(n, t, slow.shape[1]).reshape(n * t, -1)
        fast = z1.transpose(1, 2).reshape(n * t, d)
        frames = self.g1(slow, fast)  # (N*T, C, H, W)
        return frames.view(n, t, *frames.shape[1:]).transpose(1, 2)  # (N, C, T, H, W)

    def forward(self, z0: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        z1 = self.g0(z0, check_cond(cond, self.n_classes, z0.shape[0], z0))
        return self.render(z0, z1, cond)


def interpolate_trajectory(z1: torch.Tensor, n_out: int) -> torch.Tensor:
    """Linearly resample z1 (N, D, T) to n_out steps; the original latents stay at the ends and, for
    n_out = k*(T-1)+1 (16 -> 31, 61), exactly at every k-th step. The paper's frame interpolation."""
    if n_out < 2:
        raise ValueError(f"n_out must be >= 2, got {n_out}")
    return F.interpolate(z1, size=n_out, mode="linear", align_corners=True)


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """h (N, C, ...) with one more channel: the standard deviation of each feature across a group of
    consecutive clips, averaged over features, per group (ProGAN's minibatch stddev; our option, not TGAN's).
    It lets the critic see a batch whose clips are alike, i.e. collapse across z. Groups are consecutive
    clips, of gcd(N, group), so a joint batch (fakes, then reals, as many of each) never mixes the two."""
    n = h.shape[0]
    g = math.gcd(n, group)
    grouped = h.float().view(n // g, g, *h.shape[1:])
    std = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=tuple(range(1, h.dim())))  # (N/g,)
    plane = std.to(h.dtype).repeat_interleave(g).view(n, 1, *[1] * (h.dim() - 2)).expand(n, 1, *h.shape[2:])
    return torch.cat([h, plane], dim=1)


def critic_trunk(
    conv: type[nn.Module], batch_norm: type[nn.Module], in_ch: int, mid_ch: int, n_down: int
) -> tuple[list[nn.Module], int]:
    """The critics' downsampling layers in 2-D or 3-D (`conv`, `batch_norm`) and their output channels:
    conv (k4 s2 p1) + LeakyReLU without BN, then `n_down` - 1 stages of conv doubling the channels, BN
    without beta and LeakyReLU (the authors' `VideoDiscriminatorNoBetaInitUniform`)."""
    layers: list[nn.Module] = [conv(in_ch, mid_ch, 4, 2, 1), nn.LeakyReLU(LEAKY_SLOPE)]
    ch = mid_ch
    for _ in range(n_down - 1):
        layers += [
            conv(ch, ch * 2, 4, 2, 1),
            _no_beta(batch_norm(ch * 2, eps=BN_EPS)),
            nn.LeakyReLU(LEAKY_SLOPE),
        ]
        ch *= 2
    return layers, ch


class FrameCritic(nn.Module):
    """2-D WGAN critic on single frames (M, C, H, W) -> score (M,): the video critic's layers in 2-D (first
    conv without BN, then BN without beta, LeakyReLU, down to 4x4, a 4x4 head). Not TGAN's; the per-frame
    critic of MoCoGAN (Tulyakov et al. 2018, D_I) and DVD-GAN's spatial critic (our option,
    `VideoCritic(frame_ch=...)`)."""

    def __init__(self, *, in_channels: int = 1, size: int = 64, mid_ch: int = 64) -> None:
        super().__init__()
        layers, ch = critic_trunk(nn.Conv2d, nn.BatchNorm2d, in_channels, mid_ch, _stages(size, "frame size"))
        self.layers = nn.Sequential(*layers, nn.Conv2d(ch, 1, 4, 1, 0))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.layers(frames).flatten()


class VideoCritic(nn.Module):
    """WGAN critic: video (N, C, T, H, W) -> score (N,), the sum over the T' final time steps (T' = 1 at
    16x64x64).

    `frame_ch` > 0 (our option, not TGAN's) adds a `FrameCritic` branch of that width that scores every frame
    alone; the clip's score is the video score plus the mean of its frames' scores. WGAN's losses are linear
    in the score, so this is exactly a video critic and a frame critic trained side by side on the sum of
    their losses (MoCoGAN's two discriminators), and SVC and BN gamma clipping reach both through this one
    module: the sum of two 1-Lipschitz critics is 2-Lipschitz, a constant the losses absorb."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        size: int = 64,
        n_frames: int = 16,
        mid_ch: int = 64,
        n_classes: int = 0,
        mbstd_group: int = 0,
        frame_ch: int = 0,
    ) -> None:
        super().__init__()
        n_down = _stages(size, "video size")
        if n_frames % 2**n_down:
            raise ValueError(
                f"n_frames must be a multiple of {2**n_down} for a {size}x{size} critic, got {n_frames}"
            )
        self.n_classes = n_classes
        # 64x64: 64 -> 128 -> 256 -> 512
        layers, ch = critic_trunk(nn.Conv3d, nn.BatchNorm3d, in_channels + n_classes, mid_ch, n_down)
        self.features = nn.Sequential(*layers)
        self.mbstd_group = mbstd_group
        self.head = nn.Conv2d(ch + (mbstd_group > 0), 1, 4, 1, 0)  # Chainer c4: top_width 4, with bias
        if frame_ch < 0:
            raise ValueError(f"frame_ch must be >= 0 (0 = no frame critic), got {frame_ch}")
        self.frame_critic = (
            FrameCritic(in_channels=in_channels + n_classes, size=size, mid_ch=frame_ch) if frame_ch else None
        )
        init_uniform_(self)

    def forward(self, video: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        n = video.shape[0]
        y = check_cond(cond, self.n_classes, n, video)
        if y is not None:
            video = torch.cat([video, y[:, :, None, None, None].expand(-1, -1, *video.shape[2:])], dim=1)
        h = self.features(video)  # (N, 512, T', 4, 4)
        if self.mbstd_group:
            h = minibatch_stddev(h, self.mbstd_group)
        t = h.shape[2]
        h = h.transpose(1, 2).reshape(n * t, *h.shape[1:2], *h.shape[3:])
        score = self.head(h).view(n, t).sum(dim=1)
        if self.frame_critic is None:
            return score
        frames = video.transpose(1, 2).reshape(-1, video.shape[1], *video.shape[3:])  # (N*T, C, H, W)
        return score + self.frame_critic(frames).view(n, -1).mean(dim=1)
