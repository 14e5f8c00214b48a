"""Bouncing balls: physics invariants, rendered profile, and the batched simulator vs the reference port."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from numba import njit

from datagen.errors import DatagenError
from datagen.sim import _balls_kernels as kernels
from datagen.sim import _ziggurat as ziggurat
from datagen.sim import balls
from datagen.sim.balls import BALLS, initial_states, render, simulate
from datagen.sim.balls_reference import reference_video, to_uint8
from datagen.store.sample import sample_key
from datagen.store.wds import meta_bytes

R, BOX = 1.2, 10.0


def random_runs(n_balls: int, count: int, frames: int, seed: int = 11) -> balls.Trajectories:
    x0, v0 = initial_states(n_balls, R, BOX, seed, range(count))
    return simulate(x0, v0, frames, R, BOX)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


# --- initial state and invariants -------------------------------------------------------------------------


@pytest.mark.parametrize("n_balls", [1, 3, 5])
def test_initial_state_inside_box_apart_with_joint_speed_half(n_balls):
    x0, v0 = initial_states(n_balls, R, BOX, 5, range(300))
    assert (x0 - R >= 0).all() and (x0 + R <= BOX).all()
    for i in range(n_balls):
        for j in range(i):
            assert (np.linalg.norm(x0[:, i] - x0[:, j], axis=-1) >= 2 * R).all()
    np.testing.assert_allclose(np.sqrt((v0**2).sum(axis=(1, 2))), 0.5, rtol=1e-14)
    assert len({tuple(x.ravel()) for x in x0}) == 300  # every sample draws its own state


@pytest.mark.parametrize("n_balls", [1, 3, 5])
def test_kinetic_energy_is_constant_and_frame0_is_the_initial_state(n_balls):
    x0, v0 = initial_states(n_balls, R, BOX, 7, range(200))
    traj = simulate(x0, v0, 100, R, BOX)
    np.testing.assert_array_equal(traj.positions[:, 0], x0)
    np.testing.assert_array_equal(traj.velocities[:, 0], v0)
    energy = (traj.velocities**2).sum(axis=(2, 3))  # (N, T): sum of |v_i|^2
    np.testing.assert_allclose(energy, 0.25, rtol=1e-12)
    # no bounce in a frame: displacement per frame equals the recorded velocity (two sub-steps of 0.5 v)
    step = traj.positions[:, 1:] - traj.positions[:, :-1]
    unchanged = (traj.velocities[:, 1:] == traj.velocities[:, :-1]).all(axis=(2, 3))
    assert unchanged.mean() > 0.5
    np.testing.assert_allclose(step[unchanged], traj.velocities[:, :-1][unchanged], atol=1e-12)


def test_balls_stay_in_the_box_up_to_the_overshoot_the_reference_allows():
    one = random_runs(1, 500, 100)
    # one ball: at most one sub-step (0.5 * speed 0.5) past the wall before its velocity turns
    assert (one.positions - R >= -0.25 - 1e-12).all() and (one.positions + R <= BOX + 0.25 + 1e-12).all()
    many = random_runs(3, 500, 100)
    # with collisions a ball can be sent back out for another sub-step; no repositioning in the original
    assert (many.positions - R > -0.5).all() and (many.positions + R < BOX + 0.5).all()
    assert (many.positions - R < 0).any()  # overshoot does happen: the wall test comes after the move


def test_wall_reflection_flips_the_sign_and_keeps_the_magnitude():
    x0 = np.array([[[R + 0.3, 5.0]], [[5.0, BOX - R - 0.3]]])  # one ball heading left, one heading down
    v0 = np.array([[[-0.4, 0.3]], [[0.3, 0.4]]])
    traj = simulate(x0, v0, 4, R, BOX)
    v = traj.velocities
    np.testing.assert_array_equal(v[0, :, 0, 1], 0.3)  # parallel components untouched
    np.testing.assert_array_equal(v[1, :, 0, 0], 0.3)
    assert v[0, 0, 0, 0] == -0.4 and (v[0, 1:, 0, 0] == 0.4).all()  # normal component: sign flipped
    assert v[1, 0, 0, 1] == 0.4 and (v[1, 1:, 0, 1] == -0.4).all()


@pytest.mark.parametrize("axis", [0, 1])
def test_head_on_collision_exchanges_normal_components_and_keeps_momentum(axis):
    x0 = np.full((1, 2, 2), 5.0)
    x0[0, 0, axis], x0[0, 1, axis] = 3.5, 6.5
    v0 = np.zeros((1, 2, 2))
    v0[0, 0] = [0.3, 0.1] if axis == 0 else [0.1, 0.3]  # same tangential speed: the centres stay on one line
    v0[0, 1] = [-0.2, 0.1] if axis == 0 else [0.1, -0.2]
    traj = simulate(x0, v0, 4, R, BOX)
    after = traj.velocities[0, -1]
    np.testing.assert_allclose(after[0, axis], -0.2, atol=1e-15)  # normal components swapped
    np.testing.assert_allclose(after[1, axis], 0.3, atol=1e-15)
    np.testing.assert_array_equal(after[:, 1 - axis], v0[0, :, 1 - axis])  # tangential kept
    np.testing.assert_allclose(after.sum(axis=0), v0[0].sum(axis=0), atol=1e-15)  # momentum


def test_oblique_collisions_conserve_momentum_and_energy():
    x0 = np.array([[[4.0, 4.0], [6.0, 5.8]]])  # overlapping after the first sub-step, line of centres oblique
    v0 = np.array([[[0.2, 0.1], [-0.1, -0.2]]])
    traj = simulate(x0, v0, 3, R, BOX)
    before, after = traj.velocities[0, 0], traj.velocities[0, -1]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after.sum(axis=0), before.sum(axis=0), atol=1e-15)
    np.testing.assert_allclose((after**2).sum(), (before**2).sum(), rtol=1e-14)


# --- rendering ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("res", [30, 64])
def test_rendered_profile_at_known_points(res):
    px = BOX / res  # one pixel in world units
    centre = (10 + 0.5) * px  # the centre of pixel (row 10, col 10)
    positions = np.array([[[[centre, centre]]]])
    frame = render(positions, res, R, BOX)[0, 0].astype(int)
    assert frame[10, 10] == 255
    for dr, dc in [(0, 1), (1, 0), (2, 2), (0, 3), (3, 1), (0, 4), (5, 5)]:
        d2 = ((dr * px) ** 2 + (dc * px) ** 2) / R**2
        expected = round(255 * math.exp(-(d2**4)))
        assert frame[10 + dr, 10 + dc] == expected == frame[10 - dr, 10 - dc], (dr, dc)
    assert frame.sum() > 0 and frame[0, 0] == 0 == frame[-1, -1]


def test_overlapping_balls_add_up_and_clip_at_one():
    res = 30
    px = BOX / res
    a, b = (10.5 * px, 10.5 * px), (13.5 * px, 10.5 * px)  # three pixels apart on one row
    both = render(np.array([[[a, b]]]), res, R, BOX)[0, 0].astype(int)
    ea = render(np.array([[[a]]]), res, R, BOX)[0, 0].astype(int)
    assert both[10, 10] == 255 and both[10, 13] == 255
    mid = 2 * math.exp(-((((1.5 * px) ** 2) / R**2) ** 4))  # pixels 11, 12 sit 1 and 2 px from the centres
    assert mid > 1 and both[10, 11] == both[10, 12] == 255
    far = 5.0 * px
    sum_far = math.exp(-(((far**2) / R**2) ** 4)) + math.exp(-((((2 * px) ** 2) / R**2) ** 4))
    assert both[10, 15] == round(255 * min(1.0, sum_far)) and ea[10, 15] < both[10, 15]


def test_quantization_rounds_half_to_even_and_clips():
    a = np.array([0.0, 0.5 / 255, 1.5 / 255, 1.0, 1.7, 254.6 / 255])
    np.testing.assert_array_equal(to_uint8(a), [0, 0, 2, 255, 255, 255])


# --- batched simulator == reference port -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_balls", "res", "count"),
    [(1, 30, 150), (3, 30, 150), (5, 30, 60), (1, 64, 30), (3, 64, 30), (5, 64, 15)],
)
def test_fast_equals_reference_port(n_balls, res, count):
    seed = 2024
    params = BALLS.validate({"n_balls": n_balls, "size": res, "frames": 30})
    indices = range(100, 100 + count)
    videos, traj = balls.simulate_balls(params, seed, indices)
    assert videos.shape == (count, 30, res, res, 1) and videos.dtype == np.uint8
    for k, i in enumerate(indices):
        frames, X, V = reference_video(sample_rng(seed, i), n_balls=n_balls, frames=30, res=res)
        np.testing.assert_allclose(traj.positions[k], X, rtol=0, atol=1e-12)
        np.testing.assert_allclose(traj.velocities[k], V, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(videos[k, ..., 0], frames, err_msg=f"sample {i}")


def test_fast_equals_reference_on_a_small_odd_box():
    params = BALLS.validate({"n_balls": 2, "size": 17, "frames": 12, "radius": 0.9, "box": 6.5})
    videos, traj = balls.simulate_balls(params, 3, range(20))
    for i in range(20):
        frames, X, _ = reference_video(sample_rng(3, i), n_balls=2, frames=12, res=17, radius=0.9, size=6.5)
        np.testing.assert_allclose(traj.positions[i], X, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(videos[i, ..., 0], frames)


# --- the generator -----------------------------------------------------------------------------------------


def test_samples_depend_only_on_seed_params_and_index(monkeypatch):
    params = BALLS.validate({"frames": 8})
    whole = list(BALLS.generate(params, 9, 0, 12))
    monkeypatch.setattr(balls, "BATCH", 5)
    split = list(BALLS.generate(params, 9, 7, 12)) + list(BALLS.generate(params, 9, 0, 7))
    by_key = {s.key: s for s in split}
    assert [s.key for s in whole] == [sample_key(i) for i in range(12)]
    for s in whole:
        np.testing.assert_array_equal(s.video, by_key[s.key].video)
        assert meta_bytes(s.meta) == meta_bytes(by_key[s.key].meta)
    other = next(BALLS.generate(params, 10, 0, 1))
    assert not np.array_equal(other.video, whole[0].video)


def test_sample_shape_and_ground_truth_in_pixels():
    params = BALLS.validate({"n_balls": 2, "frames": 6, "size": 40})
    assert BALLS.sample_shape(params) == (6, 40, 40, 1)
    s = next(BALLS.generate(params, 1, 4, 5))
    assert s.key == sample_key(4) and s.video.shape == (6, 40, 40, 1) and s.video.dtype == np.uint8
    meta = json.loads(meta_bytes(s.meta))
    assert meta["index"] == 4 and meta["n_balls"] == 2 and meta["radius_px"] == pytest.approx(1.2 * 4)
    pos, vel = np.array(meta["positions"]), np.array(meta["velocities"])
    assert pos.shape == vel.shape == (6, 2, 2)
    _, X, V = reference_video(sample_rng(1, 4), n_balls=2, frames=6, res=40)
    np.testing.assert_allclose(pos, X * 4 - 0.5, atol=5e-7)  # x -> column, y -> row, centres at integers
    np.testing.assert_allclose(vel, V * 4, atol=5e-7)
    col, row = np.rint(pos[0, 0]).astype(int)
    assert s.video[0, row, col, 0] >= 250  # the brightest pixels sit at the recorded centre


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_balls": 0}, "n_balls"),
        ({"frames": 0}, "frames"),
        ({"size": -3}, "size"),
        ({"n_balls": 2.5}, "n_balls"),
        ({"n_balls": True}, "n_balls"),
        ({"radius": 0}, "radius"),
        ({"radius": float("nan")}, "radius"),
        ({"box": -1}, "box"),
        ({"radius": 6}, "radius 6.0 does not fit"),
        ({"radius": 5.0}, "radius 5.0 does not fit"),
        ({"n_balls": 12}, "12 balls of radius 1.2 do not fit"),
        ({"n_balls": 3, "radius": 2.5}, "3 balls of radius 2.5 do not fit"),
        ({"colour": 1}, "unknown balls parameter"),
    ],
)
def test_bad_params_raise_one_clear_error(params, message):
    with pytest.raises(DatagenError, match=message) as info:
        BALLS.validate(params)
    assert "\n" not in str(info.value)


def test_validate_accepts_tight_but_placeable_set_ups():
    assert BALLS.validate({"n_balls": 1, "radius": 4.9})["radius"] == 4.9  # ~1 in 2000 draws fits
    assert BALLS.validate({"n_balls": 6})["n_balls"] == 6  # ~1 in 3000 draws fits


def test_validate_fills_defaults_and_normalises_types():
    p = BALLS.validate({"box": 10, "size": np.int64(32)})
    assert p == {"n_balls": 3, "frames": 30, "size": 32, "radius": 1.2, "box": 10.0}
    assert type(p["size"]) is int and type(p["box"]) is float


def test_placement_that_keeps_failing_raises(monkeypatch):
    monkeypatch.setattr(balls, "MAX_TRIES", 2000)
    with pytest.raises(DatagenError, match="could not place 9 balls"):
        initial_states(9, R, BOX, 0, range(2))


@pytest.mark.slow
@pytest.mark.parametrize("n_balls", [1, 3])
def test_fast_equals_reference_port_on_thousands_of_videos(n_balls):
    params = BALLS.validate({"n_balls": n_balls})
    videos, traj = balls.simulate_balls(params, 77, range(3000))
    for i in range(3000):
        frames, X, _ = reference_video(sample_rng(77, i), n_balls=n_balls)
        np.testing.assert_allclose(traj.positions[i], X, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(videos[i, ..., 0], frames, err_msg=f"sample {i}")


# --- the random stream: defined by the kernels, numpy's stream today ----------------------------------------

SEEDS = [0, 1, 20080103, 2**32 - 1, 2**32, 2**64 + 5, 2**130 + 7]
INDICES = [0, 1, 999, 2**32 - 1, 2**32, 2**40 + 3]


@pytest.mark.parametrize("seed", SEEDS)
def test_seeding_matches_numpy_pcg64(seed):
    words = kernels.entropy_words(seed)
    state = np.empty(4, np.uint64)
    for index in INDICES:
        kernels.seed_pcg64(words, index, state)
        expected = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))).state["state"]
        hi, lo, inc_hi, inc_lo = (int(w) for w in state)
        assert (hi << 64 | lo, inc_hi << 64 | inc_lo) == (expected["state"], expected["inc"]), index


@njit
def _draws(words, index, n_normal, n_uniform):
    state = np.empty(4, np.uint64)
    kernels.seed_pcg64(words, index, state)
    normal = np.array([kernels.standard_normal(state) for _ in range(n_normal)])
    uniform = np.array([kernels.next_double(state) for _ in range(n_uniform)])
    return normal, uniform


@pytest.mark.parametrize(("seed", "index"), [(0, 0), (7, 2**32 + 1), (2**64 + 5, 12)])
def test_normal_and_uniform_draws_match_numpy(seed, index):
    """200,000 normals per stream: the ziggurat's rare wedge (~1%) and tail (~0.03%) paths included."""
    normal, uniform = _draws(kernels.entropy_words(seed), index, 200_000, 1000)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    np.testing.assert_array_equal(normal, rng.standard_normal(200_000))
    np.testing.assert_array_equal(uniform, rng.random(1000))
    assert np.abs(normal).max() > 3.66  # beyond the ziggurat's last layer: the tail path ran


def test_the_stream_is_pinned_independently_of_numpy():
    """The kernels define the datasets' random stream: if numpy ever draws differently, the comparisons with
    numpy above fail and this one still holds (then the reference port must draw through the kernels)."""
    tables = ziggurat.KI.tobytes() + ziggurat.WI.tobytes() + ziggurat.FI.tobytes()
    assert hashlib.sha256(tables).hexdigest() == (
        "d46841a090f638a74c6bd112345fe681089be798d725b251129f062cad5521a3"
    )
    normal, uniform = _draws(kernels.entropy_words(20080103), 7, 200_000, 1000)
    assert hashlib.sha256(normal.tobytes() + uniform.tobytes()).hexdigest() == (
        "41ef353b9c677a262ccf429ff07e25e4764ffcd31020f9752d87c4a01d2bc77f"
    )
    assert np.abs(normal).max() > ziggurat.ZIGGURAT_NOR_R  # the tail path is part of what is pinned


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        kernels.entropy_words(-1)
