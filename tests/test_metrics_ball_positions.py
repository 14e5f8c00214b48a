"""Detected balls against the simulator's true centres (recipes.metrics.ball_positions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.dataset import VideoDataset
from pipelines.loader import make_loader
from recipes.common.data import smoke_store
from recipes.metrics.ball_positions import ball_position_metrics, true_positions
from recipes.metrics.physics_balls import BallsGeometry


def _clips(tmp_path_factory, n_balls: int) -> tuple[torch.Tensor, list[dict]]:
    store = smoke_store(
        tmp_path_factory.mktemp(f"b{n_balls}") / "balls",
        params={"n_balls": n_balls, "size": 32, "frames": 8},
        n=24,
    )
    batch = next(
        iter(make_loader(VideoDataset(store, frames=8, offset=0, shuffle=False, with_meta=True), 24, 0))
    )
    return batch["video"], batch["meta"]


@pytest.fixture(scope="module")
def one_ball(tmp_path_factory):
    return _clips(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def three_balls(tmp_path_factory):
    return _clips(tmp_path_factory, 3)


def test_real_clips_score_perfectly(one_ball, three_balls):
    scores = {}
    for (video, meta), n in ((one_ball, 1), (three_balls, 3)):
        truth = true_positions(meta, start=0, frames=8, store_size=32, size=32)
        assert truth.shape == (24, 8, n, 2)
        m = scores[n] = ball_position_metrics(video, truth, BallsGeometry.for_simulator(32, n_balls=n))
        assert m["count_accuracy"] == 1.0 and m["missed_fraction"] == 0.0
        assert m["centre_error_px"] < 0.05  # separated balls: sub-pixel centroids
    # touching balls merge into one component whose centroid lies between them: only the all-balls mean
    # sees it (one ball never touches another)
    assert scores[1]["centre_error_all_px"] == scores[1]["centre_error_px"]
    assert scores[3]["centre_error_all_px"] > 5 * scores[3]["centre_error_px"]


def test_shifted_videos_are_off_by_the_shift(one_ball):
    video, meta = one_ball
    truth = true_positions(meta, start=0, frames=8, store_size=32, size=32)
    geometry = BallsGeometry.for_simulator(32, n_balls=1)
    shifted = torch.full_like(video, -1)
    shifted[..., 2:] = video[..., :-2]  # two pixels to the right (balls near the right wall may leave)
    m = ball_position_metrics(shifted, truth, geometry)
    assert m["centre_error_median_px"] == pytest.approx(2.0, abs=0.05)
    blank = ball_position_metrics(torch.full_like(video, -1), truth, geometry)
    assert blank["count_accuracy"] == 0.0 and blank["missed_fraction"] == 1.0 and blank["hit_rate"] == 0.0


def test_positions_follow_a_resize_and_the_window(one_ball):
    video, meta = one_ball
    small = F.interpolate(video.transpose(1, 2).flatten(0, 1), size=(16, 16), mode="bilinear", antialias=True)
    small = small.reshape(24, 8, 1, 16, 16).transpose(1, 2)
    truth = true_positions(meta, start=0, frames=8, store_size=32, size=16)
    m = ball_position_metrics(small, truth, BallsGeometry.for_simulator(16, n_balls=1))
    assert m["count_accuracy"] == 1.0 and m["centre_error_px"] < 0.05
    # frames 2..5 of the clip against the true centres of frames 2..5
    late = true_positions(meta, start=2, frames=4, store_size=32, size=32)
    m = ball_position_metrics(video[:, :, 2:6], late, BallsGeometry.for_simulator(32, n_balls=1))
    assert m["centre_error_px"] < 0.05
    with pytest.raises(ValueError, match="positions per clip"):
        true_positions(meta, start=6, frames=4, store_size=32, size=32)
    np.testing.assert_allclose(  # x is the column, y the row
        true_positions(meta[:1], start=0, frames=1, store_size=32, size=32)[0, 0, 0],
        np.array(meta[0]["positions"][0][0])[::-1],
    )
