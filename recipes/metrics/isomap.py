"""Isomap plots of latent sequences (FrameGAN, Fig. 5): each video's per-frame codes as a path in 2-D.

All codes of all sequences are embedded together with ``sklearn.manifold.Isomap`` (so paths share one map),
then drawn with OpenCV (matplotlib is not a dependency): one colour per sequence, a filled dot at the first
frame and a ring at the last. Smooth generators give short, smooth paths; the independent-latent baseline
gives a tangle. :func:`write_isomap_png` draws the first ``PLOT_PATHS`` sequences; :func:`write_fig5_png` is
the paper's Fig. 5: six paths with the straight lines between their end points and samples from the prior,
embedded together.
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


def draw_paths(
    paths: np.ndarray,
    *,
    size: int = 512,
    margin: int = 24,
    title: str = "",
    interpolations: np.ndarray | None = None,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Render ``(N, T, 2)`` paths into a white ``(size, size, 3)`` uint8 BGR image.

    Optional (Fig. 5): ``interpolations`` ``(N, S, 2)`` drawn as dotted paths in their path's colour, and
    ``prior`` ``(M, 2)`` points drawn as small grey dots under everything else."""
    img = np.full((size, size, 3), 255, np.uint8)
    every = [paths.reshape(-1, 2)]
    every += [a.reshape(-1, 2) for a in (interpolations, prior) if a is not None]
    lo, hi = np.concatenate(every).min(0), np.concatenate(every).max(0)
    scale = (size - 2 * margin) / np.maximum(hi - lo, 1e-12).max()

    def to_pixels(points: np.ndarray) -> np.ndarray:
        pix = np.rint((points - lo) * scale + margin).astype(np.int32)
        pix[..., 1] = size - 1 - pix[..., 1]  # y up
        return pix

    hues = np.linspace(0, 179, len(paths), endpoint=False).astype(np.uint8)
    colours = cv2.cvtColor(
        np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 200)], 1)[None], cv2.COLOR_HSV2BGR
    )[0].tolist()
    if prior is not None:
        for point in to_pixels(prior):
            cv2.circle(img, (int(point[0]), int(point[1])), 2, (170, 170, 170), -1, cv2.LINE_AA)
    if interpolations is not None:
        for line, colour in zip(to_pixels(interpolations), colours, strict=True):
            for point in line:
                cv2.circle(img, (int(point[0]), int(point[1])), 1, colour, -1, cv2.LINE_AA)
    for path, colour in zip(to_pixels(paths), colours, strict=True):
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


# The overview plot embeds the first 16 sequences: more paths drawn over one another are a tangle nobody can
# read, and Isomap's cost grows with the square of the codes (256 sequences of 30 codes: 18.5 s on 2 cores,
# over half of a 1-ball --quick stage 2's evaluation; 32 sequences 0.28 s).
PLOT_PATHS = 16


def write_isomap_png(
    latents: np.ndarray,
    path: str | os.PathLike[str],
    *,
    n_neighbors: int = 10,
    title: str = "",
    max_paths: int = PLOT_PATHS,
) -> Path:
    """Embed the first ``max_paths`` of ``(N, T, D)`` latent sequences and write the plot as PNG
    (atomically)."""
    if max_paths < 1:
        raise ValueError(f"max_paths must be >= 1, got {max_paths}")
    img = draw_paths(isomap_paths(np.asarray(latents)[:max_paths], n_neighbors=n_neighbors), title=title)
    return _write_png(img, path)


FIG5_PATHS = 6  # the paper's Fig. 5 shows the latent paths of 6 videos


def fig5_embedding(
    latents: np.ndarray, prior: np.ndarray, *, n_paths: int = FIG5_PATHS, n_neighbors: int = 10
) -> dict[str, np.ndarray]:
    """FrameGAN's Fig. 5 in 2-D: one Isomap of (a) the first ``n_paths`` latent sequences ``(N, T, D)``,
    (b) the straight lines between each sequence's first and last code (T evenly spaced points each) and
    (c) ``prior`` samples ``(M, D)``, so the navigator's paths can be told from both a linear interpolation
    between the same end points and from where the prior puts its mass.

    Returns ``{"paths": (n, T, 2), "interpolations": (n, T, 2), "prior": (M, 2)}``."""
    paths = np.asarray(latents, dtype=np.float64)[:n_paths]
    prior = np.asarray(prior, dtype=np.float64)
    if paths.ndim != 3 or prior.ndim != 2 or prior.shape[1] != paths.shape[2]:
        raise ValueError(f"expected latents (N, T, D) and prior (M, D), got {paths.shape} and {prior.shape}")
    n, t, d = paths.shape
    w = np.linspace(0.0, 1.0, t)[None, :, None]
    lines = (1 - w) * paths[:, :1] + w * paths[:, -1:]  # (n, T, D)
    points = np.concatenate([paths.reshape(-1, d), lines.reshape(-1, d), prior])
    flat = isomap_paths(points[None], n_neighbors=n_neighbors)[0]
    return {
        "paths": flat[: n * t].reshape(n, t, 2),
        "interpolations": flat[n * t : 2 * n * t].reshape(n, t, 2),
        "prior": flat[2 * n * t :],
    }


def write_fig5_png(
    latents: np.ndarray,
    prior: np.ndarray,
    path: str | os.PathLike[str],
    *,
    n_paths: int = FIG5_PATHS,
    n_neighbors: int = 10,
    title: str = "",
) -> Path:
    """Fig. 5 as PNG: G_V's paths (solid, dot = first frame, ring = last), the linear interpolations between
    their end points (dotted, same colour) and prior samples (grey dots), from :func:`fig5_embedding`."""
    emb = fig5_embedding(latents, prior, n_paths=n_paths, n_neighbors=n_neighbors)
    img = draw_paths(emb["paths"], title=title, interpolations=emb["interpolations"], prior=emb["prior"])
    return _write_png(img, path)


def _write_png(img: np.ndarray, path: str | os.PathLike[str]) -> Path:
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return path
