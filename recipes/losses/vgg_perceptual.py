"""GLANN's per-frame VGG16 perceptual distance, with weights the user provides (torchvision is not needed).

``vgg16_features()`` is torchvision's ``vgg16().features`` layer for layer (same indices, so a torchvision
``vgg16`` state_dict loads as is; ``classifier.*`` keys are ignored). Weights come only from a file the user
names, read with ``torch.load(weights_only=True)``; nothing is downloaded.

``VGGDistance(levels)`` is GLANN's ``_VGGDistance``: mean |x - y| plus the mean L1 of the features at
``features`` indices ``[2, 7, 12, 21, 30][:levels]`` (levels 3 for 28/32 px, 4 for 64 px), on inputs in
[-1, 1] without ImageNet normalisation, grey frames repeated to 3 channels. GLANN collects those tensors and
then runs torchvision's *in-place* ReLU on them, so every tapped feature except the last is effectively the
post-ReLU activation; we reproduce that exactly (taps after indices 3, 8, 13, 22, and the raw output of the
last tapped layer).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from datagen.errors import DatagenError

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
GLANN_LAYER_IDS = (2, 7, 12, 21, 30)


def vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 ``features`` stack (13 conv + ReLU, 5 max-pools), indices 0..30, random init."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU()]
            c_in = int(v)
    return nn.Sequential(*layers)


def load_vgg16_features(path: str | os.PathLike) -> nn.Sequential:
    """VGG16 features with the weights in ``path`` (a torchvision ``vgg16`` state_dict, or its features)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise DatagenError(f"cannot read VGG16 weights from {path}: {e}") from e
    if not isinstance(state, dict):
        raise DatagenError(f"{path}: expected a state_dict, got {type(state).__name__}")
    feats = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    model = vgg16_features()
    missing, unexpected = model.load_state_dict(feats, strict=False)
    if missing or unexpected:
        raise DatagenError(
            f"{path} is not a VGG16 state_dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


class VGGDistance(nn.Module):
    """Per-sample GLANN VGG distance of images (B, C, H, W) or, frame by frame, videos (B, C, T, H, W).

    Returns ``(B,)``; for videos the per-frame distances are averaged over frames. The network is frozen.
    """

    def __init__(self, features: nn.Sequential, levels: int = 4) -> None:
        super().__init__()
        if not 1 <= levels <= len(GLANN_LAYER_IDS):
            raise ValueError(f"levels must be in 1..{len(GLANN_LAYER_IDS)}, got {levels}")
        self.levels = levels
        ids = GLANN_LAYER_IDS[:levels]
        self.features = features[: ids[-1] + 1]
        # in-place ReLU after every tap but the last (see the module docstring)
        self.taps = tuple(
            i + 1 if i + 1 <= ids[-1] and isinstance(features[i + 1], nn.ReLU) else i for i in ids
        )
        self.features.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> VGGDistance:
        super().train(mode)
        self.features.eval()  # frozen feature extractor
        return self

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if x.ndim == 5:
            x, y = (v.transpose(1, 2).flatten(0, 1) for v in (x, y))
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        n = x.shape[0]
        loss = (x - y).abs().reshape(n, -1).mean(1)
        for f in self._feats(torch.cat([x, y])):  # one pass over both: (2n, ...) per tap
            loss = loss + (f[:n] - f[n:]).abs().reshape(n, -1).mean(1)
        return loss.view(b, -1).mean(1)
