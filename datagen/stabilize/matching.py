"""SIFT features, Lowe's ratio test and a RANSAC homography between two frames (VideoGAN's recipe).

VideoGAN (`extra/stabilize_videos_many.py`) runs SIFT on full-resolution frames, matches with a FLANN
kd-tree (5 trees, 50 checks, k = 2), keeps matches passing Lowe's ratio 0.7, needs at least 10 of them and
fits `findHomography(current -> previous, RANSAC, 5.0)`. Here the default matcher is exact brute force
(same ratio test, no randomised trees, so results are reproducible); `matcher="flann"` is the code's choice.

Matching may run on a downscaled frame (`match_scale < 1`). Keypoints found at the small scale are mapped
back to full-resolution pixel coordinates (pixel centres aligned, `x_full = (x_small + 0.5) / s - 0.5`) before
RANSAC, so the homography and the 5 px threshold are both in full-resolution pixels. That is the same as
fitting H_small and rescaling it, H_full = S^-1 H_small S, with S the pixel-centre-aligned scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from datagen.errors import DatagenError

RATIO = 0.7
RANSAC_THRESHOLD_PX = 5.0
MIN_MATCH_COUNT = 10
MIN_INLIERS = 4  # a homography has 8 degrees of freedom: fewer inliers mean RANSAC fitted noise


@dataclass(frozen=True)
class Features:
    """Keypoints (full-resolution pixel coordinates, float32 (N, 2)) and their SIFT descriptors (N, 128)."""

    points: np.ndarray
    descriptors: np.ndarray


@dataclass(frozen=True)
class StepMatch:
    """The homography from the current frame to the previous one, or None when matching failed."""

    homography: np.ndarray | None
    n_matches: int
    n_inliers: int
    reason: str = ""


def scaling_matrix(scale_x: float, scale_y: float) -> np.ndarray:
    """S maps full-resolution pixel coordinates to coordinates in an image resized by (scale_x, scale_y)."""
    return np.array(
        [[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5], [0.0, 0.0, 1.0]]
    )


class FeatureExtractor:
    """SIFT on a grayscale copy of the frame, optionally downscaled to a `match_short_side` short side."""

    def __init__(self, match_short_side: int | None = None) -> None:
        if match_short_side is not None and match_short_side < 16:
            raise DatagenError(f"match resolution must be >= 16 px on the short side, got {match_short_side}")
        self.match_short_side = match_short_side
        self._sift = cv2.SIFT_create()

    def __call__(self, frame_bgr: np.ndarray) -> Features:
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
        h, w = gray.shape
        scale = 1.0
        if self.match_short_side is not None and min(h, w) > self.match_short_side:
            scale = self.match_short_side / min(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        keypoints, descriptors = self._sift.detectAndCompute(gray, None)
        if descriptors is None or len(keypoints) == 0:
            return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32))
        pts = np.array([k.pt for k in keypoints], dtype=np.float64)
        # A canonical order, so that nothing downstream depends on how SIFT's threads merged their results.
        order = np.lexsort((descriptors.sum(axis=1), pts[:, 0], pts[:, 1]))
        pts, descriptors = pts[order], descriptors[order]
        if scale < 1.0:
            sx, sy = gray.shape[1] / w, gray.shape[0] / h
            pts = (pts + 0.5) / np.array([sx, sy]) - 0.5
        return Features(pts.astype(np.float32), np.ascontiguousarray(descriptors, dtype=np.float32))


def ratio_matches(
    query: np.ndarray, train: np.ndarray, *, ratio: float = RATIO, matcher: Literal["bf", "flann"] = "bf"
) -> np.ndarray:
    """Index pairs (K, 2) [query, train] whose nearest neighbour beats the second one by Lowe's ratio."""
    if len(query) < 2 or len(train) < 2:
        return np.zeros((0, 2), np.int64)
    if matcher == "bf":
        m = cv2.BFMatcher(cv2.NORM_L2)
    elif matcher == "flann":
        m = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 5}, {"checks": 50})
    else:
        raise DatagenError(f"unknown matcher {matcher!r}; use 'bf' or 'flann'")
    pairs = [p for p in m.knnMatch(query, train, k=2) if len(p) == 2]
    good = [(a.queryIdx, a.trainIdx) for a, b in pairs if a.distance < ratio * b.distance]
    return np.array(good, dtype=np.int64).reshape(-1, 2)


def match_step(
    current: Features,
    previous: Features,
    *,
    ratio: float = RATIO,
    ransac_px: float = RANSAC_THRESHOLD_PX,
    min_matches: int = MIN_MATCH_COUNT,
    matcher: Literal["bf", "flann"] = "bf",
    rng_seed: int = 0,
) -> StepMatch:
    """Homography H with previous ~ H @ current (VideoGAN's direction), fitted by RANSAC.

    `rng_seed` seeds OpenCV's RNG right before RANSAC so the result depends only on this pair of frames.
    """
    if len(current.points) < 2 or len(previous.points) < 2:
        return StepMatch(None, 0, 0, "too few keypoints")
    good = ratio_matches(current.descriptors, previous.descriptors, ratio=ratio, matcher=matcher)
    if len(good) < min_matches:
        return StepMatch(None, len(good), 0, f"{len(good)} good matches < {min_matches}")
    src = current.points[good[:, 0]].reshape(-1, 1, 2)
    dst = previous.points[good[:, 1]].reshape(-1, 1, 2)
    cv2.setRNGSeed(int(rng_seed) & 0x7FFFFFFF)
    h, inliers = cv2.findHomography(src, dst, cv2.RANSAC, ransac_px)
    if h is None or not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-12:
        return StepMatch(None, len(good), 0, "no homography found")
    n_inliers = int(inliers.sum()) if inliers is not None else 0
    if n_inliers < MIN_INLIERS:
        return StepMatch(None, len(good), n_inliers, f"{n_inliers} RANSAC inliers < {MIN_INLIERS}")
    return StepMatch(h / h[2, 2], len(good), n_inliers)
