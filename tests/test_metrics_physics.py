"""Adjacent-frame MSE and balls physics metrics: near-perfect on simulator output, clearly worse corrupted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datagen.sim.balls import BALLS, render, simulate_balls
from recipes.metrics.adjacent_mse import adjacent_frame_mse, adjacent_mse_summary, independent_latent_videos
from recipes.metrics.blobs import detect_blobs, link_tracks
from recipes.metrics.physics_balls import BallsGeometry, physics_balls_metrics

SIZE, FRAMES, N = 32, 30, 12


def _to_model(video_u8: np.ndarray) -> torch.Tensor:
    """(N, T, H, W, 1) uint8 -> (N, 1, T, H, W) in [-1, 1], as the loader delivers."""
    return torch.from_numpy(video_u8).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


@pytest.fixture(scope="module")
def sim():
    params = BALLS.validate({"size": SIZE, "frames": FRAMES})
    video, traj = simulate_balls(params, 3, range(N))
    return params, _to_model(video), traj


@pytest.fixture(scope="module")
def geometry():
    return BallsGeometry.for_simulator(SIZE)


# --- adjacent-frame MSE ---


def test_adjacent_mse_known_values():
    ones, minus = torch.ones(1, 1, 1, 4, 4), -torch.ones(1, 1, 1, 4, 4)
    flicker = torch.cat([ones, minus, ones], dim=2)  # every pixel flips twice
    static = torch.cat([ones, ones, ones], dim=2)
    zeros_vs_minus = torch.cat([torch.zeros_like(ones), minus], dim=2)  # exact 0 binarises to 0, like -1
    half = torch.cat([ones, torch.cat([ones[..., :2], minus[..., 2:]], dim=-1)], dim=2)
    videos = torch.cat(
        [flicker, static, torch.cat([zeros_vs_minus, minus], 2), torch.cat([half, half[:, :, :1]], 2)]
    )
    np.testing.assert_allclose(adjacent_frame_mse(videos), [1.0, 0.0, 0.0, 0.5])
    summary = adjacent_mse_summary(videos)
    assert summary["mean"] == pytest.approx(0.375)
    assert summary["std"] == pytest.approx(np.std([1.0, 0.0, 0.0, 0.5]))  # population std, as np.std


def test_adjacent_mse_real_vs_shuffled_vs_independent_baseline(sim):
    _, videos, _ = sim
    real = adjacent_mse_summary(videos)["mean"]
    shuffled = adjacent_mse_summary(
        videos[:, :, torch.randperm(FRAMES, generator=torch.Generator().manual_seed(0))]
    )
    assert real < 0.06 and shuffled["mean"] > 2 * real

    # the authors' baseline: every frame from its own code; the "frame generator" picks a real frame
    frames = videos[:, :, 0].reshape(-1, 1, SIZE, SIZE)  # a pool of real frames

    def frame_generator(z: torch.Tensor) -> torch.Tensor:
        return frames[(z[:, 0].abs() * 1e4).long() % len(frames)]

    base = independent_latent_videos(frame_generator, n_videos=4, n_frames=FRAMES, z_dim=8, seed=0)
    assert base.shape == (4, 1, FRAMES, SIZE, SIZE)
    assert adjacent_mse_summary(base)["mean"] > 2 * real
    again = independent_latent_videos(frame_generator, n_videos=4, n_frames=FRAMES, z_dim=8, seed=0)
    assert torch.equal(base, again)


# --- detection and tracking ---


def test_centroids_match_ground_truth_to_a_hundredth_of_a_pixel(sim, geometry):
    params, videos, traj = sim
    frames = ((videos[:, 0] + 1) / 2).numpy()
    blobs = detect_blobs(frames[:4], threshold=0.5)
    scale = SIZE / params["box"]
    errors = []
    for v in range(4):
        for t in range(FRAMES):
            rows = blobs.in_frame(v, t)
            if len(rows) != 3 or not (np.abs(blobs.area[rows] / geometry.single_area - 1) < 0.2).all():
                continue  # merged or touching balls
            truth = traj.positions[v, t][:, ::-1] * scale - 0.5  # (row, col)
            d = np.linalg.norm(blobs.centroid[rows][:, None] - truth[None], axis=-1)
            errors.append(d.min(axis=1))
    errors = np.concatenate(errors)
    assert len(errors) > 100 and np.median(errors) < 0.01 and errors.max() < 0.1


def test_link_tracks_bridges_gaps_and_refuses_jumps():
    pts = [np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]), np.zeros((0, 2)), np.array([[3.0, 0.0]])]
    pos, det = link_tracks(pts, max_jump=1.5, max_gap=1)
    assert pos.shape == (4, 1, 2) and np.isnan(pos[2, 0, 0]) and det[3, 0] == 0
    pos, _ = link_tracks(pts + [np.array([[20.0, 0.0]])], max_jump=1.5, max_gap=1)
    assert pos.shape[1] == 2  # the jump starts a new track


# --- physics metrics ---


def _metrics(videos, geometry):
    return physics_balls_metrics(videos, geometry)


def test_simulator_output_is_near_perfect(sim, geometry):
    m = _metrics(sim[1], geometry)
    assert m["count_accuracy"] == 1.0 and m["count_constancy"] == 1.0
    assert m["link_rate"] == 1.0
    assert m["ballistic_fraction"] > 0.99
    assert m["speed_cv"] < 0.03 and m["energy_cv"] < 0.03 and m["energy_rel_error"] < 0.02
    assert m["reflection_consistency"] > 0.97 and m["n_wall_bounces"] >= 10
    assert m["reflection_log_ratio"] < 0.05


def test_shuffled_frames_break_the_dynamics(sim, geometry):
    videos = sim[1][:, :, torch.randperm(FRAMES, generator=torch.Generator().manual_seed(1))]
    m = _metrics(videos, geometry)
    assert m["count_accuracy"] == 1.0  # still three balls per frame...
    assert m["link_rate"] < 0.5 and m["ballistic_fraction"] < 0.5 and m["reflection_consistency"] < 0.7


def _jumping(params, traj, step: float, every: int) -> torch.Tensor:
    """Re-render with ball 0 jumping ``step`` box units along x every ``every`` frames (wrapping)."""
    r, box = params["radius"], params["box"]
    pos = traj.positions.copy()
    for t in range(every, FRAMES, every):
        pos[:, t:, 0, 0] = r + (pos[:, t:, 0, 0] - r + step) % (box - 2 * r)
    return _to_model(render(pos, SIZE, r, box)[..., None])


def test_teleporting_ball_breaks_links(sim, geometry):
    params, videos, traj = sim
    clean, bad = _metrics(videos, geometry), _metrics(_jumping(params, traj, 2.5, 5), geometry)  # 8 px jumps
    assert clean["link_rate"] == 1.0 and bad["link_rate"] < 0.9
    assert bad["count_accuracy"] > 0.8  # still (mostly) three balls


def test_small_jumps_break_ballistic_motion(sim, geometry):
    params, videos, traj = sim
    clean, bad = _metrics(videos, geometry), _metrics(_jumping(params, traj, 0.4, 3), geometry)  # 1.3 px
    assert bad["ballistic_fraction"] < clean["ballistic_fraction"] - 0.1
    assert bad["speed_cv"] > 3 * clean["speed_cv"]


def test_blanked_frames_break_counts(sim, geometry):
    videos = sim[1].clone()
    rng = np.random.default_rng(2)
    for v in range(N):
        videos[v, :, rng.choice(FRAMES, 4, replace=False)] = -1
    m = _metrics(videos, geometry)
    assert m["count_accuracy"] == pytest.approx(1 - 4 / FRAMES, abs=1e-9)
    assert m["count_constancy"] == 0.0


def test_time_reversal_in_mid_air_violates_reflection(sim, geometry):
    t0 = FRAMES // 2 + 1
    order = list(range(t0)) + list(range(t0 - 2, t0 - 2 - (FRAMES - t0), -1))
    m = _metrics(sim[1][:, :, order], geometry)
    assert m["reflection_consistency"] < 0.8
