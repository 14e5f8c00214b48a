"""Table 1 never rewards failure: diversity figures and the `collapsed` flag of every balls evaluation.

A collapsed model (the same sample for every latent, or the wrong number of balls) must be flagged, real clips
must not be, and the flag must reach the reports of `recipes.evaluate` (the path FrameGAN and TGAN use).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datagen.sim.balls import BALLS, simulate_balls
from recipes import evaluate
from recipes.metrics.diversity import collapse_reasons, compare_to_real, occupancy_entropy
from recipes.metrics.physics_balls import BallsGeometry, balls_diversity_metrics, physics_balls_metrics
from recipes.metrics.registry import MetricOptions, calc_metric
from recipes.metrics.sources import ArrayVideos

SIZE, FRAMES, N = 30, 12, 48


def _clips(n_balls: int, n: int = N, start: int = 0) -> torch.Tensor:
    params = BALLS.validate({"size": SIZE, "frames": FRAMES, "n_balls": n_balls})
    video, _ = simulate_balls(params, 7, range(start, start + n))
    return torch.from_numpy(video).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


@pytest.fixture(scope="module", params=[1, 3])
def balls(request) -> tuple[int, torch.Tensor, BallsGeometry]:
    n_balls = request.param
    return n_balls, _clips(n_balls), BallsGeometry.for_simulator(SIZE, n_balls=n_balls)


def test_real_clips_are_diverse_and_not_collapsed(balls) -> None:
    n_balls, real, geometry = balls
    m = balls_diversity_metrics(real, geometry)
    assert m["count_accuracy"] == 1.0 and m["collapsed"] is False
    assert m["centre_spread"] > 1.5 * geometry.radius_px  # ~12 px (1 ball) / ~7 px (3 balls) at 30x30
    assert m["occupancy_entropy"] > 4.0 and m["pixel_std"] > 0.1
    other = balls_diversity_metrics(_clips(n_balls, start=N), geometry)  # other real clips: ratios near 1
    both = compare_to_real({"real": m, "fake": other}, radius_px=geometry.radius_px)
    assert both["fake"]["collapsed"] is False and both["real"]["centre_spread_ratio"] == 1.0
    for key in ("centre_spread_ratio", "occupancy_entropy_ratio", "pixel_std_ratio"):
        assert both["fake"][key] == pytest.approx(1.0, abs=0.2)


def test_identical_samples_are_collapsed_even_with_the_right_count(balls) -> None:
    """The issue's failure: one sample for every z (here one real clip repeated, so the count is right)."""
    _, real, geometry = balls
    same = real[:1].repeat(N, 1, 1, 1, 1)
    m = balls_diversity_metrics(same, geometry)
    assert m["count_accuracy"] == 1.0 and m["collapsed"] is True
    assert m["centre_spread"] == pytest.approx(0.0, abs=1e-6) and m["pixel_std"] < 1e-6
    reasons = collapse_reasons(m, radius_px=geometry.radius_px)
    assert len(reasons) == 1 and "near-identical" in reasons[0]
    # near-identical but not exactly: a little noise per sample is still flagged (spread << one radius)
    noisy = (same + 0.02 * torch.randn(same.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert balls_diversity_metrics(noisy, geometry)["collapsed"] is True


def test_wrong_count_in_most_frames_is_collapsed(balls) -> None:
    _, real, geometry = balls
    blank = real.clone()
    blank[:, :, : FRAMES // 2 + 1] = -1  # no ball in more than half of the frames
    m = balls_diversity_metrics(blank, geometry)
    assert m["count_accuracy"] < 0.5 and m["collapsed"] is True
    assert "count" in collapse_reasons(m, radius_px=geometry.radius_px)[0]
    assert balls_diversity_metrics(-torch.ones(4, 1, 3, SIZE, SIZE), geometry)["collapsed"] is True


def test_relative_to_real_flags_a_narrow_spread() -> None:
    """Balls that always appear near the same spot: not identical, but far less spread than real clips."""
    real = balls_diversity_metrics(_clips(1), BallsGeometry.for_simulator(SIZE, n_balls=1))
    narrow = {"count_accuracy": 1.0, "centre_spread": 4.0, "occupancy_entropy": 1.0, "pixel_std": 0.03}
    geometry = BallsGeometry.for_simulator(SIZE, n_balls=1)
    assert not collapse_reasons(narrow, radius_px=geometry.radius_px)  # alone: > one radius apart
    flagged = compare_to_real({"real": real, "fake": narrow}, radius_px=geometry.radius_px)["fake"]
    assert flagged["collapsed"] is True and flagged["pixel_std_ratio"] < 0.25


def test_occupancy_entropy_counts_cells() -> None:
    assert occupancy_entropy(np.array([[1.0, 1.0], [2.0, 2.0]]), (30, 30)) == 0.0  # one cell
    corners = np.array([[1.0, 1.0], [1.0, 29.0], [29.0, 1.0], [29.0, 29.0]])
    assert occupancy_entropy(corners, (30, 30)) == pytest.approx(2.0)  # four equally used cells
    assert np.isnan(occupancy_entropy(np.zeros((0, 2)), (30, 30)))


def test_physics_metrics_carry_the_diversity_figures() -> None:
    geometry = BallsGeometry.for_simulator(SIZE, n_balls=1)
    m = physics_balls_metrics(_clips(1, n=8), geometry)
    assert {"centre_spread", "occupancy_entropy", "pixel_std", "collapsed"} <= set(m)
    assert m["collapsed"] is False and m["link_rate"] == 1.0


def test_registry_and_evaluate_report_collapse_against_real(tmp_path) -> None:
    real = _clips(1)
    collapsed = real[:1, :, :1].repeat(N, 1, FRAMES, 1, 1)  # the failure: one static blob for every z
    sources = {
        "real": ArrayVideos(real),
        "fake": ArrayVideos(collapsed),
        "baseline": ArrayVideos(real.flip(0)),
    }
    opts = MetricOptions(sources=sources, extra={"balls": {"n_balls": 1}})
    r = calc_metric(f"physics_balls{N}_{FRAMES}f", opts)["results"]
    assert r["fake/collapsed"] is True and r["real/collapsed"] is False and r["baseline/collapsed"] is False
    assert r["fake/centre_spread_ratio"] < 0.01 and r["real/centre_spread_ratio"] == 1.0
    # the smoothness metric alone prefers the collapsed (static) model: the report says why not to trust it
    mse = calc_metric(f"adjacent_mse{N}_{FRAMES}f", opts)["results"]
    assert mse["fake/mean"] == 0.0 < mse["real/mean"]

    for name, videos in (("real", real), ("fake", collapsed)):
        np.save(tmp_path / f"{name}.npy", videos.numpy())
    report = evaluate.evaluate(
        {"real": tmp_path / "real.npy", "fake": tmp_path / "fake.npy"},
        [f"adjacent_mse{N}_{FRAMES}f", f"physics_balls{N}_{FRAMES}f"],
        tmp_path / "eval",
        extra={"balls": {"n_balls": 1}},
    )
    assert report["collapse"]["fake"]["collapsed"] is True and report["collapse"]["fake"]["reasons"]
    assert report["collapse"]["real"] == report["collapse"]["real"] | {"collapsed": False, "reasons": []}
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["collapse"]["fake"]["collapsed"] is True
    without = evaluate.evaluate({"real": tmp_path / "real.npy"}, [f"adjacent_mse{N}_2f"], tmp_path / "e2")
    assert "collapse" not in without  # only balls physics can say
