"""Diversity and collapse of bouncing-balls samples: so that no smoothness metric can reward a failed model.

FrameGAN's adjacent-frame MSE (Table 1) is lowest for a model that draws the same static blob for every z: the
collapsed run of issue #15 scored 0.0002 against real data's 0.0222. Every balls evaluation therefore also
reports, per source, whether samples drawn from INDEPENDENT latents (different videos; for FrameGAN's
baseline, every frame) look like independent real clips:

* ``count_accuracy``: fraction of frames with exactly ``n_balls`` detected balls (as in ``physics_balls``);
* ``centre_spread``: at each time step, the mean distance (px) from each detected ball centre to the
  nearest centre of every OTHER video (one ball: the mean pairwise centre distance), averaged over time
  steps. Real one-ball clips place the ball uniformly: about half the reachable box side (12 px at 30x30);
  a collapsed model, whose videos all show the same thing, gives about 0. At most ``SPREAD_VIDEOS`` videos
  are compared (the first ones: sources are already random);
* ``occupancy_entropy``: Shannon entropy (bits) of the histogram of all detected centres over a
  ``grid`` x ``grid`` partition of the frame (log2(36) = 5.17 bits at most for the default 6 x 6);
* ``pixel_std``: the per-pixel standard deviation across videos of the [0, 1] intensities, averaged over
  pixels and time steps: model-free (needs no detection), ~0.006 for the collapsed run above.

``collapsed`` is true when the count is wrong in most frames (``count_accuracy`` < 0.5) or independent
samples are near-identical (``centre_spread`` below one ball radius). Given the real clips' figures,
:func:`compare_to_real` adds ``*_ratio`` = source / real and also flags spread or pixel std below a quarter of
real's (``CollapseThresholds``); it is what ``physics_balls`` in the metric registry reports, so every recipe
evaluating on a balls store through ``recipes.evaluate`` gets it. Real clips are never flagged (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from recipes.metrics.blobs import Blobs

SPREAD_VIDEOS = 256  # pairwise distances over at most this many videos (memory ~ (3 * 256)^2 per time step)
DIVERSITY_KEYS = ("centre_spread", "occupancy_entropy", "pixel_std")


@dataclass(frozen=True)
class CollapseThresholds:
    """When a source counts as collapsed (see the module docstring); the defaults are ours, documented."""

    min_count_accuracy: float = 0.5  # "the ball count is wrong in most frames"
    min_spread_radii: float = 1.0  # centres of independent samples on average closer than this many radii
    min_ratio: float = 0.25  # with real figures: spread or pixel std below this fraction of real's


def balls_diversity(
    frames: np.ndarray,
    blobs: Blobs,
    counts: np.ndarray,
    *,
    n_balls: int,
    radius_px: float,
    grid: int = 6,
    thresholds: CollapseThresholds | None = None,
) -> dict[str, Any]:
    """Diversity figures and the absolute ``collapsed`` flag of one source.

    ``frames``: ``(B, T, H, W)`` intensities in [0, 1]; ``blobs``: their detections; ``counts``: ``(B, T)``
    balls per frame (merged components counted by area, as ``physics_balls``).
    """
    th = thresholds or CollapseThresholds()
    b, t, h, w = frames.shape
    out = {
        "count_accuracy": float((counts == n_balls).mean()),
        "centre_spread": centre_spread(blobs, n_videos=min(b, SPREAD_VIDEOS), n_frames=t),
        "occupancy_entropy": occupancy_entropy(blobs.centroid, (h, w), grid=grid),
        "pixel_std": float(frames.std(axis=0).mean()) if b > 1 else float("nan"),
    }
    out["collapsed"] = bool(collapse_reasons(out, radius_px=radius_px, thresholds=th))
    return out


def centre_spread(blobs: Blobs, *, n_videos: int, n_frames: int) -> float:
    """Mean distance from a detected centre to the nearest centre of ANOTHER video at the same time step,
    over all centres, other videos and time steps (one ball: the plain pairwise distance); NaN if none."""
    total, pairs = 0.0, 0
    for t in range(n_frames):
        rows = np.flatnonzero((blobs.frame == t) & (blobs.video < n_videos))  # sorted by video
        if len(rows) < 2:
            continue
        video = blobs.video[rows]
        starts = np.flatnonzero(np.r_[True, video[1:] != video[:-1]])
        if len(starts) < 2:
            continue
        nearest = np.minimum.reduceat(cdist(blobs.centroid[rows], blobs.centroid[rows]), starts, axis=1)
        other = video[:, None] != video[starts][None, :]  # (centres, videos): skip the centre's own video
        total += float(nearest[other].sum())
        pairs += int(other.sum())
    return total / pairs if pairs else float("nan")


def occupancy_entropy(centroids: np.ndarray, hw: tuple[int, int], *, grid: int = 6) -> float:
    """Entropy (bits) of the ``grid`` x ``grid`` histogram of ``(K, 2)`` (row, col) centres; NaN if none."""
    if len(centroids) == 0:
        return float("nan")
    cells = np.clip((centroids / np.asarray(hw, dtype=np.float64) * grid).astype(int), 0, grid - 1)
    p = np.bincount(cells[:, 0] * grid + cells[:, 1], minlength=grid * grid) / len(cells)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no "-0.0" for a single occupied cell


def collapse_reasons(
    figures: Mapping[str, Any], *, radius_px: float, thresholds: CollapseThresholds | None = None
) -> list[str]:
    """Why ``figures`` (one source's, maybe with ``*_ratio`` keys) count as collapsed; [] if they don't."""
    th = thresholds or CollapseThresholds()
    reasons = []
    if _below(figures.get("count_accuracy"), th.min_count_accuracy):
        reasons.append(f"count_accuracy < {th.min_count_accuracy}: the ball count is wrong in most frames")
    if _below(figures.get("centre_spread"), th.min_spread_radii * radius_px):
        reasons.append(
            f"centre_spread < {th.min_spread_radii:g} ball radius: independent samples are near-identical"
        )
    for key in ("centre_spread_ratio", "pixel_std_ratio"):
        if _below(figures.get(key), th.min_ratio):
            reasons.append(f"{key} < {th.min_ratio}: independent samples vary far less than real clips")
    return reasons


def compare_to_real(
    per_source: Mapping[str, dict[str, Any]],
    *,
    radius_px: float,
    real: str = "real",
    thresholds: CollapseThresholds | None = None,
) -> dict[str, dict[str, Any]]:
    """Add ``<key>_ratio`` (source / real) for the diversity keys and recompute ``collapsed`` with them.

    ``per_source``: ``{source: figures}`` from :func:`balls_diversity` (extra keys are kept). Without a
    ``real`` source, returns the figures unchanged. The real source gets ratios of 1 (same keys everywhere).
    """
    if real not in per_source:
        return {name: dict(f) for name, f in per_source.items()}
    ref = per_source[real]
    out = {}
    for name, figures in per_source.items():
        f = dict(figures)
        for key in DIVERSITY_KEYS:
            f[f"{key}_ratio"] = _ratio(figures.get(key), ref.get(key))
        f["collapsed"] = bool(collapse_reasons(f, radius_px=radius_px, thresholds=thresholds))
        out[name] = f
    return out


def collapse_summary(
    results: Mapping[str, Any], *, radius_px: float, thresholds: CollapseThresholds | None = None
) -> dict[str, dict[str, Any]]:
    """``{source: {"collapsed": bool, "reasons": [...], figures...}}`` from flat ``<source>/<key>`` results
    of the ``physics_balls`` metric (what ``recipes.evaluate`` puts at the top of its report)."""
    keys = ("count_accuracy", *DIVERSITY_KEYS, *(f"{k}_ratio" for k in DIVERSITY_KEYS))
    summary: dict[str, dict[str, Any]] = {}
    for name, value in results.items():
        source, _, key = name.partition("/")
        if key in keys:
            summary.setdefault(source, {})[key] = value
    for figures in summary.values():
        reasons = collapse_reasons(figures, radius_px=radius_px, thresholds=thresholds)
        figures["collapsed"] = bool(reasons)
        figures["reasons"] = reasons
    return summary


def _below(value: Any, threshold: float) -> bool:
    """``value < threshold`` for a finite number; NaN/None (nothing detected, no real figure) is not below."""
    return isinstance(value, int | float) and np.isfinite(value) and value < threshold


def _ratio(a: Any, b: Any) -> float:
    if (
        not (isinstance(a, int | float) and isinstance(b, int | float))
        or not np.isfinite([a, b]).all()
        or b == 0
    ):
        return float("nan")
    return float(a) / float(b)
