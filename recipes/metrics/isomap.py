"""Isomap plots of latent sequences (FrameGAN, Fig. 5): each video's per-frame codes as a path in 2-D.

All codes of all sequences are embedded together with ``sklearn.manifold.Isomap`` (so paths share one map),
then drawn with OpenCV (matplotlib is not a dependency): one colour per sequence, a filled dot at the first
frame and a ring at the last. Smooth generators give short, smooth paths; the independent-latent baseline
gives a tangle.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from scipy.sparse import SparseEfficiencyWarning
from sklearn.manifold import Isomap

from datagen.store.atomic import atomic_path


def isomap_paths(latents: np.ndarray, *, n_neighbors: int = 10) -> np.ndarray:
    """``(N, T, D)`` latent sequences -> ``(N, T, 2)`` Isomap coordinates of every code."""
    latents = np.asarray(latents, dtype=np.float64)
    if latents.ndim != 3:
        raise ValueError(f"expected latent sequences (N, T, D), got shape {latents.shape}")
    n, t, d = latents.shape
    points = latents.reshape(n * t, d)
    k = min(n_neighbors, len(points) - 1)
    with (
        warnings.catch_warnings()
    ):  # separate clusters are normal here; sklearn joins them and says so loudly
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", SparseEfficiencyWarning)
        return Isomap(n_neighbors=k, n_components=2).fit_transform(points).reshape(n, t, 2)


def draw_paths(paths: np.ndarray, *, size: int = 512, margin: int = 24, title: str = "") -> np.ndarray:
    """Render ``(N, T, 2)`` paths into a white ``(size, size, 3)`` uint8 BGR image."""
    img = np.full((size, size, 3), 255, np.uint8)
    lo, hi = paths.reshape(-1, 2).min(0), paths.reshape(-1, 2).max(0)
    scale = (size - 2 * margin) / np.maximum(hi - lo, 1e-12).max()
    pix = np.rint((paths - lo) * scale + margin).astype(np.int32)
    pix[..., 1] = size - 1 - pix[..., 1]  # y up
    hues = np.linspace(0, 179, len(paths), endpoint=False).astype(np.uint8)
    colours = cv2.cvtColor(
        np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 200)], 1)[None], cv2.COLOR_HSV2BGR
    )[0]
    for path, colour in zip(pix, colours.tolist(), strict=True):
        cv2.polylines(img, [path.reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in path[0]), 4, colour, -1, cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in path[-1]), 5, colour, 1, cv2.LINE_AA)
    cv2.rectangle(
        img, (margin // 2, margin // 2), (size - margin // 2, size - margin // 2), (160, 160, 160), 1
    )
    if title:
        cv2.putText(
            img, title, (margin, margin - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    return img


def write_isomap_png(
    latents: np.ndarray, path: str | os.PathLike[str], *, n_neighbors: int = 10, title: str = ""
) -> Path:
    """Embed ``(N, T, D)`` latent sequences and write the plot as PNG (atomically)."""
    img = draw_paths(isomap_paths(latents, n_neighbors=n_neighbors), title=title)
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return path
