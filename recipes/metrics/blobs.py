"""Objects in rendered frames: connected components, intensity-weighted centroids, and tracks across frames.

Shared by the bouncing-balls physics metrics and Moving MNIST identity persistence. Detection labels all
frames of all videos in one ``scipy.ndimage.label`` call (a structuring element that connects pixels only
within a frame) and reduces per component with ``np.bincount``; linking uses
``scipy.optimize.linear_sum_assignment`` between a track's constant-velocity prediction and the next
frame's detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def unit_gray(videos: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(B, C, T, H, W)`` in [-1, 1] -> ``(B, T, H, W)`` float32 intensities in [0, 1], channels averaged."""
    x = torch.as_tensor(videos).detach().float().cpu()
    if x.ndim != 5:
        raise ValueError(f"expected videos (B, C, T, H, W), got {tuple(x.shape)}")
    return ((x.mean(dim=1).clamp(-1, 1) + 1) / 2).numpy()


@dataclass(frozen=True)
class Blobs:
    """All components of a batch of videos, one row per component (rows sorted by video, frame)."""

    video: np.ndarray  # (K,) int
    frame: np.ndarray  # (K,) int
    centroid: np.ndarray  # (K, 2) float (row, col) in pixel-centre coordinates
    area: np.ndarray  # (K,) int pixels above the threshold
    bbox: np.ndarray  # (K, 4) int (row0, col0, row1, col1), half-open
    label: np.ndarray  # (K,) int: the component's value in ``label_image``
    label_image: np.ndarray  # (B, T, H, W) int: component labels of the (dilated) mask
    shape: tuple[int, int, int, int]  # (B, T, H, W)

    def in_frame(self, v: int, t: int) -> np.ndarray:
        """Row indices of the components of frame ``t`` of video ``v``."""
        key = self.video * self.shape[1] + self.frame
        target = v * self.shape[1] + t
        return np.arange(np.searchsorted(key, target), np.searchsorted(key, target, side="right"))


def detect_blobs(
    frames: np.ndarray, *, threshold: float = 0.5, dilate: int = 0, min_area: int = 1, connectivity: int = 1
) -> Blobs:
    """Components of ``frames > threshold`` in ``(B, T, H, W)`` intensities in [0, 1].

    ``dilate`` grows the mask by that many pixels before labelling (joins the strokes of a digit); area counts
    only pixels above the threshold. Centroids are intensity-weighted over the component and its 1-pixel rim.
    Components smaller than ``min_area`` are dropped.
    """
    mask = frames > threshold
    within_frame = np.zeros((3, 3, 3, 3), bool)
    within_frame[1, 1] = ndimage.generate_binary_structure(2, connectivity)
    grown = mask
    if dilate:
        disk = np.zeros((1, 1, 2 * dilate + 1, 2 * dilate + 1), bool)
        disk[0, 0] = _disk(dilate)
        grown = ndimage.binary_dilation(mask, structure=disk)
    grown_labels, k = ndimage.label(grown, structure=within_frame)
    labels = np.where(mask, grown_labels, 0)
    idx = np.flatnonzero(labels)
    lab = labels.ravel()[idx]
    v, t, r, c = np.unravel_index(idx, labels.shape)
    n = k + 1
    area = np.bincount(lab, minlength=n)
    # centroids also weigh the one-pixel rim below the threshold: its partial intensities carry the sub-pixel
    # position of a sharp-edged object (pixels inside a flat top all weigh 1)
    rim = ndimage.grey_dilation(labels, footprint=within_frame)
    ridx = np.flatnonzero(rim)
    rlab = rim.ravel()[ridx]
    _, _, rr, rc = np.unravel_index(ridx, labels.shape)
    w = frames.ravel()[ridx].astype(np.float64)
    mass = np.bincount(rlab, weights=w, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = (
            np.stack([np.bincount(rlab, w * rr, n), np.bincount(rlab, w * rc, n)], axis=1) / mass[:, None]
        )
    video, frame = np.zeros(n, int), np.zeros(n, int)
    video[lab], frame[lab] = v, t
    bbox = np.zeros((n, 4), int)
    bbox[:, 0], bbox[:, 1] = labels.shape[2], labels.shape[3]
    np.minimum.at(bbox[:, 0], lab, r)
    np.minimum.at(bbox[:, 1], lab, c)
    np.maximum.at(bbox[:, 2], lab, r + 1)
    np.maximum.at(bbox[:, 3], lab, c + 1)
    keep = np.flatnonzero(area >= max(min_area, 1))
    keep = keep[keep > 0]
    order = keep[np.lexsort((centroid[keep, 1], centroid[keep, 0], frame[keep], video[keep]))]
    return Blobs(
        video[order],
        frame[order],
        centroid[order],
        area[order],
        bbox[order],
        order,
        grown_labels,
        frames.shape,
    )


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def link_tracks(
    points: list[np.ndarray],
    *,
    max_jump: float,
    max_gap: int = 0,
    reliable: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Link per-frame detections into tracks.

    Returns ``(T, n_tracks, D)`` positions (NaN where a track has no detection) and ``(T, n_tracks)`` the
    index of the detection in ``points[t]`` (-1 where none).

    Each frame, live tracks are matched to detections by minimum total distance between the track's
    constant-velocity prediction and the detection; matches farther than ``max_jump`` are refused. A track
    unmatched for more than ``max_gap`` consecutive frames ends; unmatched detections start new tracks.
    ``points[t]`` is ``(k_t, D)``. Detections flagged False in ``reliable[t]`` (e.g. the centroid of two
    merged objects) can be matched but do not feed the velocity of the prediction.
    """
    n_frames = len(points)
    dim = points[0].shape[1] if n_frames and points[0].ndim == 2 else 2
    tracks: list[np.ndarray] = []  # each (T, D)
    which: list[np.ndarray] = []  # each (T,) detection index
    trusted: list[np.ndarray] = []  # each (T,) bool: position usable for prediction
    last: list[int] = []  # frame of last detection per track
    for t, pts in enumerate(points):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, dim)
        ok = np.ones(len(pts), bool) if reliable is None else np.asarray(reliable[t], bool)
        live = [i for i in range(len(tracks)) if t - last[i] <= max_gap + 1]
        taken = np.zeros(len(pts), bool)
        if live and len(pts):
            pred = np.stack([_predict(tracks[i], trusted[i], t) for i in live])
            cost = cdist(pred, pts)
            rows, cols = linear_sum_assignment(np.where(cost <= max_jump, cost, 1e9))
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] <= max_jump:
                    i = live[r]
                    tracks[i][t], which[i][t], trusted[i][t], last[i] = pts[c], c, ok[c], t
                    taken[c] = True
        for c in np.flatnonzero(~taken):
            tracks.append(np.full((n_frames, dim), np.nan))
            which.append(np.full(n_frames, -1))
            trusted.append(np.zeros(n_frames, bool))
            tracks[-1][t], which[-1][t], trusted[-1][t] = pts[c], c, ok[c]
            last.append(t)
    if not tracks:
        return np.full((n_frames, 0, dim), np.nan), np.full((n_frames, 0), -1)
    return np.stack(tracks, axis=1), np.stack(which, axis=1)


def _predict(track: np.ndarray, trusted: np.ndarray, t: int) -> np.ndarray:
    """Position at ``t`` from the last trusted detection and, if the frame before it is trusted too, its
    velocity; the last detection of any kind when none is trusted."""
    good = np.flatnonzero(trusted[:t])
    if len(good) == 0:
        seen = np.flatnonzero(~np.isnan(track[:t, 0]))
        return track[seen[-1]]
    a = good[-1]
    if a >= 1 and trusted[a - 1]:
        return track[a] + (track[a] - track[a - 1]) * (t - a)
    return track[a]
