"""Physics metrics for bouncing-balls videos, possible because the simulator's rules are known exactly.

The simulator is Sutskever's RTRBM generator (box side 10, radius 1.2, joint speed 0.5 per frame, two
sub-steps, sign-forcing wall bounces, elastic ball collisions, intensity ``exp(-(d^2/r^2)^4)`` clipped to 1).
In pixels, at resolution ``res``: radius ``1.2 * res / 10``, the 0.5 level at ``(ln 2)^(1/8) r`` (area of
one ball ``pi (0.955 r)^2``), and ``sum_i |v_i|^2 = 0.25 (res / 10)^2`` px^2 per frame without collisions.

Per video: detect balls (threshold 0.5, connected components, intensity-weighted centroids), count them
(a component covering k single-ball areas counts round(k): merged balls), link them into tracks
(Hungarian matching on constant-velocity predictions) and measure, away from walls and other balls where the
motion must be uniform:

* ``count_accuracy``: fraction of frames whose count equals ``n_balls``;
* ``count_constancy``: fraction of videos whose count never changes;
* ``link_rate``: over consecutive frames that both show ``n_balls`` separate balls, the fraction where every
  ball has a partner in the next frame no farther than the maximum speed (optimal matching): teleports fail;
* ``ballistic_fraction``: fraction of free steps with ``|p[t+1] - 2 p[t] + p[t-1]| <= accel_eps`` px;
* ``speed_cv``: std/mean of a ball's speed over each run of free steps (speed changes only at collisions);
* ``energy_cv``: per video, std/mean over frames of ``E_t = sum_i |p[t+1,i] - p[t,i]|^2`` where all balls are
  free; ``energy_rel_error``: ``|mean E - E_true| / E_true`` (meaningful for the default simulator only);
* ``reflection_consistency``: of the sign flips of a velocity component, the fraction that happen at the wall
  the ball was moving towards; ``reflection_log_ratio``: mean ``|log(|v_out| / |v_in|)|`` of the normal
  component at those wall bounces (0 for a perfect reflection); ``reflection_parallel_error``: mean change of
  the parallel component there (px/frame).

Every result also carries the diversity figures and the ``collapsed`` flag of ``recipes.metrics.diversity``
(``centre_spread``, ``occupancy_entropy``, ``pixel_std``), so a collapsed model is flagged wherever physics
is reported.

Follows research note videogen_anchors.md section 3.2; the thresholds below are ours and documented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from recipes.metrics.blobs import Blobs, detect_blobs, link_tracks, unit_gray
from recipes.metrics.diversity import CollapseThresholds, balls_diversity

BOX_SIZE = 10.0
BALL_RADIUS = 1.2
JOINT_SPEED = 0.5
HALF_LEVEL = math.log(2) ** 0.125  # radius fraction where exp(-(d^2/r^2)^4) = 0.5


@dataclass(frozen=True)
class BallsGeometry:
    """What a clean video must look like, in pixels."""

    n_balls: int
    radius_px: float
    max_speed_px: float  # bound on one ball's displacement per frame
    energy_px2: float | None  # sum over balls of the squared displacement per frame, if known

    @classmethod
    def for_simulator(
        cls,
        resolution: int,
        *,
        n_balls: int = 3,
        radius: float = BALL_RADIUS,
        box_size: float = BOX_SIZE,
        joint_speed: float = JOINT_SPEED,
    ) -> BallsGeometry:
        scale = resolution / box_size
        return cls(n_balls, radius * scale, joint_speed * scale, (joint_speed * scale) ** 2)

    @property
    def single_area(self) -> float:
        return math.pi * (HALF_LEVEL * self.radius_px) ** 2


@dataclass(frozen=True)
class BallsThresholds:
    """Tolerances of the metrics (px, px/frame); defaults suit clean renders at 30-64 px."""

    accel_eps: float = 0.25
    min_speed: float = 0.15  # slower velocity components are too noisy to show a sign flip
    max_gap: int = 2  # frames a track may go undetected (merged balls) before it ends
    min_area_frac: float = 0.2  # components smaller than this fraction of one ball are ignored as specks


@dataclass(frozen=True)
class BallDetections:
    """Detected balls of a batch of videos: intensities, components, balls per component and per frame."""

    frames: np.ndarray  # (B, T, H, W) float32 in [0, 1]
    blobs: Blobs
    multiplicity: np.ndarray  # (K,) int: balls in each component (merged balls cover k single areas)
    counts: np.ndarray  # (B, T) int: balls per frame


def detect_balls(
    videos: torch.Tensor | np.ndarray, geometry: BallsGeometry, thresholds: BallsThresholds | None = None
) -> BallDetections:
    """Threshold 0.5, connected components above ``min_area_frac`` of one ball, counts by area."""
    th = thresholds or BallsThresholds()
    frames = unit_gray(videos)
    b, t = frames.shape[:2]
    min_area = max(1, round(th.min_area_frac * geometry.single_area))
    blobs = detect_blobs(frames, threshold=0.5, min_area=min_area)
    multiplicity = np.maximum(1, np.rint(blobs.area / geometry.single_area)).astype(int)
    counts = np.zeros(b * t, int)
    np.add.at(counts, blobs.video * t + blobs.frame, multiplicity)
    return BallDetections(frames, blobs, multiplicity, counts.reshape(b, t))


def balls_diversity_metrics(
    videos: torch.Tensor | np.ndarray,
    geometry: BallsGeometry,
    thresholds: BallsThresholds | None = None,
    *,
    collapse: CollapseThresholds | None = None,
) -> dict[str, Any]:
    """Count accuracy, diversity and the ``collapsed`` flag (``recipes.metrics.diversity``) of ``(B, C, T, H,
    W)`` videos in [-1, 1]; works for T = 1 (single frames, e.g. FrameGAN's stage 1)."""
    det = detect_balls(videos, geometry, thresholds)
    return _diversity(det, geometry, collapse)


def _diversity(det: BallDetections, g: BallsGeometry, collapse: CollapseThresholds | None) -> dict[str, Any]:
    return balls_diversity(
        det.frames, det.blobs, det.counts, n_balls=g.n_balls, radius_px=g.radius_px, thresholds=collapse
    )


def physics_balls_metrics(
    videos: torch.Tensor | np.ndarray,
    geometry: BallsGeometry,
    thresholds: BallsThresholds | None = None,
    *,
    collapse: CollapseThresholds | None = None,
) -> dict[str, Any]:
    """The metrics of the module docstring for ``(B, C, T, H, W)`` videos in [-1, 1], averaged over videos,
    plus the diversity figures and ``collapsed`` flag of :func:`balls_diversity_metrics`."""
    th = thresholds or BallsThresholds()
    det = detect_balls(videos, geometry, th)
    blobs, multiplicity, counts = det.blobs, det.multiplicity, det.counts
    b, t, h, w = det.frames.shape

    per_video = [_video_dynamics(blobs, multiplicity, v, (t, h, w), geometry, th) for v in range(b)]
    out: dict[str, Any] = {
        "count_accuracy": float((counts == geometry.n_balls).mean()),
        "count_constancy": float((counts == counts[:, :1]).all(axis=1).mean()),
        "mean_count": float(counts.mean()),
    }
    for key in per_video[0]:
        values = np.array([d[key] for d in per_video], dtype=np.float64)
        if key.startswith("n_"):
            out[key] = float(values.sum())
        else:
            out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out | _diversity(det, geometry, collapse)


def _video_dynamics(
    blobs: Blobs,
    multiplicity: np.ndarray,
    v: int,
    thw: tuple[int, int, int],
    g: BallsGeometry,
    th: BallsThresholds,
) -> dict[str, float]:
    t_len, h, w = thw
    # a component of k merged balls is offered k times, so k tracks can pass through it
    rows = [np.repeat(blobs.in_frame(v, t), multiplicity[blobs.in_frame(v, t)]) for t in range(t_len)]
    pos, det = link_tracks(
        [blobs.centroid[r] for r in rows],
        max_jump=g.radius_px + g.max_speed_px,
        max_gap=th.max_gap,
        reliable=[multiplicity[r] == 1 for r in rows],
    )
    n_tracks = pos.shape[1]
    present = ~np.isnan(pos[..., 0])  # (T, K)
    single = np.zeros_like(present)
    for t in range(t_len):
        k = det[t] >= 0
        single[t, k] = multiplicity[rows[t][det[t, k]]] == 1
    # a ball can reach a wall within one frame only from closer than its speed, two balls only from closer
    # than their relative speed (<= sqrt(2) * joint speed); 0.25 px covers centroid noise
    wall_margin = g.max_speed_px + 0.25
    ball_margin = math.sqrt(2) * g.max_speed_px + 0.25
    # distance of the centre to each wall minus the radius: (T, K, 4) for top, left, bottom, right
    row, col = pos[..., 0], pos[..., 1]
    wall_gap = np.stack([row + 0.5, col + 0.5, h - 0.5 - row, w - 0.5 - col], axis=-1) - g.radius_px
    free_wall = np.nan_to_num(wall_gap.min(axis=-1), nan=-1.0) > wall_margin
    pair = np.linalg.norm(pos[:, :, None] - pos[:, None, :], axis=-1)  # (T, K, K)
    pair = np.where(np.eye(n_tracks, dtype=bool) | np.isnan(pair), np.inf, pair)
    free_ball = pair.min(axis=-1, initial=np.inf) > 2 * g.radius_px + ball_margin
    clean = present & single & free_ball
    free = clean & free_wall

    d = pos[1:] - pos[:-1]  # (T-1, K, 2) displacements
    d_free = free[1:] & free[:-1]
    acc = pos[2:] - 2 * pos[1:-1] + pos[:-2]
    a_free = free[2:] & free[1:-1] & free[:-2]
    ballistic = np.linalg.norm(acc, axis=-1)[a_free] <= th.accel_eps

    speed = np.linalg.norm(d, axis=-1)
    speed_cv = []  # per run of consecutive free steps: a collision between two runs may change the speed
    for k in range(n_tracks):
        for run in _runs(d_free[:, k]):
            s = speed[run, k]
            if len(s) >= 3 and s.mean() > th.min_speed:
                speed_cv.append(s.std() / s.mean())

    all_free = d_free.sum(axis=1) == g.n_balls
    energy = np.where(d_free, speed**2, 0.0).sum(axis=1)[all_free]
    energy_cv = energy.std() / energy.mean() if len(energy) >= 2 and energy.mean() > 0 else np.nan
    e_err = abs(energy.mean() - g.energy_px2) / g.energy_px2 if len(energy) and g.energy_px2 else np.nan

    flips, at_wall, log_ratio, parallel = _reflections(d, clean[1:] & clean[:-1], wall_gap, wall_margin, th)
    return {
        "link_rate": _link_rate([blobs.centroid[r] for r in rows], [multiplicity[r] for r in rows], g),
        "ballistic_fraction": ballistic.mean() if len(ballistic) else np.nan,
        "speed_cv": float(np.mean(speed_cv)) if speed_cv else np.nan,
        "energy_cv": energy_cv,
        "energy_rel_error": e_err,
        "reflection_consistency": at_wall / flips if flips else np.nan,
        "reflection_log_ratio": float(np.mean(log_ratio)) if log_ratio else np.nan,
        "reflection_parallel_error": float(np.mean(parallel)) if parallel else np.nan,
        "n_velocity_flips": flips,
        "n_wall_bounces": at_wall,
    }


def _link_rate(points: list[np.ndarray], mult: list[np.ndarray], g: BallsGeometry) -> float:
    """Fraction of clean consecutive frame pairs whose optimal matching moves no ball faster than possible."""
    clean = [len(p) == g.n_balls and (m == 1).all() for p, m in zip(points, mult, strict=True)]
    ok = []
    for t in range(len(points) - 1):
        if clean[t] and clean[t + 1]:
            cost = cdist(points[t], points[t + 1])
            rows, cols = linear_sum_assignment(cost)
            ok.append(cost[rows, cols].max() <= g.max_speed_px + 0.5)
    return float(np.mean(ok)) if ok else np.nan


def _runs(mask: np.ndarray) -> list[slice]:
    """Maximal runs of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [slice(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _reflections(
    d: np.ndarray, d_ok: np.ndarray, wall_gap: np.ndarray, margin: float, th: BallsThresholds
) -> tuple[int, int, list[float], list[float]]:
    """Sign flips of each velocity component and whether each happens at the wall it was heading for.

    A bounce inside a frame's first sub-step leaves that frame's displacement near 0 along the normal, so a
    flip is a sign change between consecutive usable displacements, possibly across one slow one.
    """
    flips = at_wall = 0
    log_ratio: list[float] = []
    parallel: list[float] = []
    n_steps, n_tracks = d.shape[:2]
    for k in range(n_tracks):
        for axis in (0, 1):
            comp = d[:, k, axis]
            sign = np.where(np.abs(comp) > th.min_speed, np.sign(comp), 0.0)
            for s in range(n_steps - 1):
                if not d_ok[s, k] or sign[s] == 0:
                    continue
                u = s + 1 if sign[s + 1] != 0 else s + 2
                if u >= n_steps or not d_ok[s + 1, k] or not d_ok[u, k] or sign[u] != -sign[s]:
                    continue
                flips += 1
                wall = axis + (2 if sign[s] > 0 else 0)  # the wall the ball was moving towards
                if np.nanmin(wall_gap[s + 1 : u + 1, k, wall]) <= margin:
                    at_wall += 1
                    log_ratio.append(abs(math.log(abs(d[u, k, axis]) / abs(d[s, k, axis]))))
                    parallel.append(abs(d[u, k, 1 - axis] - d[s, k, 1 - axis]))
    return flips, at_wall, log_ratio, parallel
