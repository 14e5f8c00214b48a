"""Known camera shake for checking the stabilizer: film frames through given homographies, score recovery.

Used by the tests and `bench/bench_stabilize.py`. A frame is filmed as `warpPerspective(scene, J)` and then
cropped by `margin` pixels on every side (so no black border enters the view); `view_transforms` returns
J' = T J T^-1 in view coordinates. If the scene does not move, the chain that maps view t to view 0 is
J'_0 J'_t^-1, which `corner_error` compares with a recovered chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def random_similarity(rng: np.random.Generator, centre: tuple[float, float], max_deg: float, max_px: float):
    """Rotation about `centre` by U(-max_deg, max_deg) degrees plus a U(-max_px, max_px) translation."""
    m = cv2.getRotationMatrix2D(centre, float(rng.uniform(-max_deg, max_deg)), 1.0)
    m[:, 2] += rng.uniform(-max_px, max_px, 2)
    return np.vstack([m, [0.0, 0.0, 1.0]])


def random_homography(
    rng: np.random.Generator,
    centre: tuple[float, float],
    *,
    max_deg: float = 2.0,
    max_px: float = 6.0,
    max_scale: float = 0.02,
    max_persp: float = 2e-5,
) -> np.ndarray:
    """A similarity shake with a little anisotropic scale and perspective: a general homography."""
    h = random_similarity(rng, centre, max_deg, max_px)
    a = np.diag([1 + rng.uniform(-max_scale, max_scale), 1 + rng.uniform(-max_scale, max_scale), 1.0])
    c = np.array([[1, 0, centre[0]], [0, 1, centre[1]], [0, 0, 1.0]])
    p = np.eye(3)
    p[2, :2] = rng.uniform(-max_persp, max_persp, 2)
    return h @ c @ a @ p @ np.linalg.inv(c)


def film(scenes: Sequence[np.ndarray], transforms: Sequence[np.ndarray], margin: int) -> list[np.ndarray]:
    """Warp scene t by transform t and crop `margin` pixels on every side."""
    out = []
    for scene, j in zip(scenes, transforms, strict=True):
        h, w = scene.shape[:2]
        out.append(
            cv2.warpPerspective(scene, j, (w, h), flags=cv2.INTER_LINEAR)[
                margin : h - margin, margin : w - margin
            ]
        )
    return out


def view_transforms(transforms: Sequence[np.ndarray], margin: int) -> list[np.ndarray]:
    t = np.array([[1.0, 0, -margin], [0, 1, -margin], [0, 0, 1]])
    return [t @ j @ np.linalg.inv(t) for j in transforms]


def apply_h(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    q = np.c_[points, np.ones(len(points))] @ h.T
    return q[:, :2] / q[:, 2:]


def corner_error(recovered: np.ndarray, truth: np.ndarray, shape: tuple[int, int]) -> float:
    """Mean distance (pixels) between the image corners mapped by `recovered` and by `truth`."""
    h, w = shape
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    return float(np.linalg.norm(apply_h(recovered, corners) - apply_h(truth, corners), axis=1).mean())


def chain_errors(
    chained: Sequence[np.ndarray], views: Sequence[np.ndarray], shape: tuple[int, int]
) -> np.ndarray:
    """Corner error of each recovered chain H_t against the truth J'_0 J'_t^-1 (static scene)."""
    return np.array(
        [corner_error(c, views[0] @ np.linalg.inv(v), shape) for c, v in zip(chained, views, strict=True)]
    )
