"""Detected balls against the simulator's ground truth: count accuracy and centre error per frame.

For videos that should show known clips (GLO reconstructions of training clips, conditional rollouts), the
store's ``meta`` holds every ball's exact position per frame, so detection can be scored directly (research
note videogen_anchors.md section 3.2, "position error"). Detection is the one of
:mod:`recipes.metrics.physics_balls` (threshold 0.5, intensity-weighted centroids, a component covering k
single-ball areas stands for k merged balls); in each frame the detections (a merged component repeated k
times) are matched to the true centres by minimum total distance (Hungarian).

* ``count_accuracy``: fraction of frames whose count equals the true number of balls;
* ``centre_error_px``: mean distance of matched (true, detected) pairs, in pixels of the videos, over the
  balls whose true centre is more than 2.5 radii from every other ball's (closer balls can merge into one
  component at the 0.5 level, whose centroid lies between them: 0.3 px on average over all balls of real
  3-ball clips at 32 px, whatever the video); ``centre_error_median_px`` its median,
  ``centre_error_all_px`` the mean over all balls;
* ``hit_rate``: fraction of true balls whose matched detection lies within one ball radius (a missing
  ball is a miss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from recipes.metrics.physics_balls import BallsGeometry, BallsThresholds, detect_balls

# Two rendered balls sum above 0.5 between them up to a distance of 2.08 radii; a margin for pixel sampling.
ISOLATED_RADII = 2.5


def true_positions(
    metas: Sequence[Mapping[str, Any]], *, start: int, frames: int, store_size: int, size: int
) -> np.ndarray:
    """``(B, frames, n_balls, 2)`` (row, col) centres from balls ``meta`` (``x`` = column, ``y`` = row).

    Frames ``start .. start + frames`` of each clip, rescaled from the store's resolution to ``size`` the way
    a resize maps pixel centres (``(p + 0.5) * size / store_size - 0.5``).
    """
    xy = np.array([m["positions"][start : start + frames] for m in metas], dtype=np.float64)
    if xy.ndim != 4 or xy.shape[1] != frames:
        raise ValueError(f"meta holds {xy.shape[1] if xy.ndim > 1 else 0} positions per clip, need {frames}")
    return (xy[..., ::-1] + 0.5) * (size / store_size) - 0.5


def ball_position_metrics(
    videos: torch.Tensor | np.ndarray,
    positions: np.ndarray,
    geometry: BallsGeometry,
    thresholds: BallsThresholds | None = None,
) -> dict[str, float]:
    """The metrics of the module docstring for ``(B, C, T, H, W)`` videos in [-1, 1] and ``(B, T, n, 2)``
    true (row, col) centres in the videos' pixels."""
    det = detect_balls(videos, geometry, thresholds)
    blobs, multiplicity, counts = det.blobs, det.multiplicity, det.counts
    b, t = counts.shape
    if positions.shape[:2] != (b, t):
        raise ValueError(f"positions {positions.shape[:2]} do not match videos {(b, t)}")
    gap = np.linalg.norm(positions[:, :, :, None] - positions[:, :, None], axis=-1)  # (B, T, n, n)
    gap[..., np.arange(gap.shape[-1]), np.arange(gap.shape[-1])] = np.inf
    apart = gap.min(axis=-1) > ISOLATED_RADII * geometry.radius_px  # (B, T, n)
    errors: list[np.ndarray] = []
    isolated: list[np.ndarray] = []
    missed = 0
    for v in range(b):
        for f in range(t):
            rows = blobs.in_frame(v, f)
            found = np.repeat(blobs.centroid[rows], multiplicity[rows], axis=0)
            truth = positions[v, f]
            if len(found) == 0:
                missed += len(truth)
                continue
            cost = cdist(truth, found)
            r, c = linear_sum_assignment(cost)
            errors.append(cost[r, c])
            isolated.append(apart[v, f, r])
            missed += len(truth) - len(r)
    err = np.concatenate(errors) if errors else np.zeros(0)
    sep = err[np.concatenate(isolated)] if errors else err
    n_true = positions.shape[0] * positions.shape[1] * positions.shape[2]
    nan = float("nan")
    return {
        "count_accuracy": float((counts == positions.shape[2]).mean()),
        "centre_error_px": float(sep.mean()) if len(sep) else nan,
        "centre_error_median_px": float(np.median(sep)) if len(sep) else nan,
        "centre_error_all_px": float(err.mean()) if len(err) else nan,
        "hit_rate": float((err <= geometry.radius_px).sum() / n_true) if n_true else nan,
        "missed_fraction": float(missed / n_true) if n_true else nan,
    }
