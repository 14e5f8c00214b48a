"""Paired metrics of the registry (a generated clip against the real clip it stands for): ``reconstruction``
(pixel errors) and ``ball_positions`` (detections against true centres), as GLO's evaluation uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datagen.errors import DatagenError
from recipes.metrics.physics_balls import HALF_LEVEL
from recipes.metrics.registry import MetricOptions, calc_metric
from recipes.metrics.sources import ArrayVideos

SIZE, FRAMES, DISC = 32, 6, 3.0  # a ball is a disc of radius DISC px


def _opts(real, fake, **extra) -> MetricOptions:
    return MetricOptions(sources={"real": ArrayVideos(real), "fake": ArrayVideos(fake)}, seed=3, extra=extra)


def _discs(centres: np.ndarray) -> torch.Tensor:
    """(N, 1, T, SIZE, SIZE) videos in [-1, 1]: a white disc at each (row, col) of ``centres`` (N, T, 2)."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    n, t = centres.shape[:2]
    out = -np.ones((n, 1, t, SIZE, SIZE), np.float32)
    for i in range(n):
        for f in range(t):
            r, c = centres[i, f]
            out[i, 0, f][(rows - r) ** 2 + (cols - c) ** 2 <= DISC**2] = 1.0
    return torch.from_numpy(out)


def test_reconstruction_errors_pair_clip_i_with_clip_i():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(10, 1, 8, 16, 16, generator=gen) - 0.5
    # a subset of 6 clips and 5-frame windows: both sources pick the same clips and windows
    same = calc_metric("reconstruction6_5f", _opts(real, real.clone()))["results"]
    assert same == {"fake/l1": 0.0, "fake/mse": 0.0, "fake/lap1": 0.0}
    shifted = calc_metric("reconstruction6_5f", _opts(real, real + 0.25))["results"]
    assert shifted["fake/l1"] == pytest.approx(0.25) and shifted["fake/mse"] == pytest.approx(0.0625)
    other = calc_metric("reconstruction6_5f", _opts(real, real.flip(0)))["results"]  # clip i vs clip 9 - i
    assert other["fake/l1"] == pytest.approx((real - real.flip(0)).abs().mean().item(), rel=0.2)
    assert other["fake/lap1"] > 0.05
    with pytest.raises(DatagenError, match="as many fake clips"):
        calc_metric("reconstruction6_5f", _opts(real, real[:8]))


def test_ball_positions_scores_detections_against_the_true_centres():
    rng = np.random.default_rng(1)
    truth = np.round(rng.uniform(8, SIZE - 8, size=(5, FRAMES, 2)))  # integer centres: exact centroids
    real, moved = _discs(truth), _discs(truth + [0.0, 2.0])  # the fake's ball sits 2 px to the right
    radius = DISC / HALF_LEVEL * 10.0 / SIZE  # simulator units whose 0.5-level disc is DISC px at SIZE px
    balls = {"n_balls": 1, "radius": radius, "box": 10.0}
    out = calc_metric(
        f"ball_positions5_{FRAMES}f", _opts(real, moved, balls=balls, ball_truth=truth[..., None, :])
    )
    res = out["results"]
    assert res["real/count_accuracy"] == 1.0 and res["real/centre_error_px"] == pytest.approx(0.0, abs=1e-9)
    assert res["fake/count_accuracy"] == 1.0 and res["fake/centre_error_px"] == pytest.approx(2.0)
    assert res["real/hit_rate"] == 1.0
    empty = calc_metric(f"ball_positions5_{FRAMES}f", _opts(real, -torch.ones_like(real), balls=balls,
                                                              ball_truth=truth[..., None, :]))  # fmt: skip
    assert empty["results"]["fake/count_accuracy"] == 0.0 and empty["results"]["fake/missed_fraction"] == 1.0
    with pytest.raises(DatagenError, match="ball_truth"):
        calc_metric(f"ball_positions5_{FRAMES}f", _opts(real, moved, balls=balls))
