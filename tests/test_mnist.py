"""Moving MNIST generator: Srivastava et al.'s trajectory rules, compositing, ground truth, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.errors import DatagenError
from datagen.sim import mnist as sim
from datagen.sources import mnist as src
from datagen.store.wds import meta_bytes

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def params():
    return sim.MNIST.validate({})


@pytest.fixture(scope="module")
def digits(params):
    return src.load_digits(params["source"])


def test_defaults_are_the_papers(params):
    assert {k: params[k] for k in ("frames", "size", "digits", "speed", "overlap")} == {
        "frames": 20,
        "size": 64,
        "digits": 2,
        "speed": 0.1,
        "overlap": "max",
    }
    assert params["source"]["kind"] == "builtin" and len(params["source"]["sha256"]) == 64
    assert sim.MNIST.sample_shape(params) == (20, 64, 64, 1)
    assert sim.MNIST.validate(params) == params  # validating twice changes nothing


def test_bounce_rules():
    rng = np.random.default_rng(0)
    start, theta, speed = rng.random((500, 3, 2)), rng.random((500, 3)) * 2 * np.pi, 0.1
    pos, vel = sim.bounce(start, theta, 60, speed)
    assert pos.shape == vel.shape == (60, 500, 3, 2)
    assert pos.min() >= 0 and pos.max() <= 1  # the clamp keeps every digit inside the canvas
    np.testing.assert_allclose(np.linalg.norm(vel, axis=-1), 1.0)  # unit speed throughout
    v0 = np.stack([np.sin(theta), np.cos(theta)], -1)
    first = np.clip(start + v0 * speed, 0, 1)  # frame 0 is already one step in
    np.testing.assert_array_equal(pos[0], first)
    flipped = vel[1:] != vel[:-1]
    np.testing.assert_array_equal(flipped, vel[1:] == -vel[:-1])  # a component only ever changes sign
    at_wall = (pos[1:] == 0) | (pos[1:] == 1)
    assert not np.any(flipped & ~at_wall)  # ... and only at a wall
    np.testing.assert_array_equal(vel[1:][at_wall] > 0, pos[1:][at_wall] == 0)  # pointing back inside
    free = ~at_wall
    np.testing.assert_allclose((pos[1:] - pos[:-1])[free], (vel[:-1] * speed)[free], atol=1e-12)
    assert flipped.sum() > 100  # the walls were actually hit


def test_meta_ground_truth_matches_the_pixels(params, digits):
    samples = list(sim.MNIST.generate(params, 3, 10, 40))
    assert [s.key for s in samples] == [f"{i:09d}" for i in range(10, 40)]
    at_row = {int(row): k for k, row in enumerate(digits.source_index)}  # ids are rows of the source file
    for s in samples:
        m = s.meta
        assert s.video.shape == (20, 64, 64, 1) and s.video.dtype == np.uint8
        pos, vel = np.array(m["positions"]), np.array(m["velocities"])
        assert pos.shape == vel.shape == (20, 2, 2) and pos.min() >= 0 and pos.max() <= 36
        np.testing.assert_allclose(np.linalg.norm(vel, axis=-1), 3.6)  # 0.1 of the 36-pixel range
        picked = [at_row[int(i)] for i in m["digit_ids"]]
        images = digits.images[picked]
        assert m["labels"].tolist() == digits.labels[picked].tolist()
        expected = np.zeros((20, 64, 64), np.uint8)
        for t in range(20):
            for d in range(2):
                y, x = pos[t, d]
                np.maximum(
                    expected[t, y : y + 28, x : x + 28], images[d], out=expected[t, y : y + 28, x : x + 28]
                )
        np.testing.assert_array_equal(s.video[..., 0], expected)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"overlap": "sum"},
        {"digits": 3, "frames": 7, "size": 40, "speed": 0.3, "overlap": "sum"},
        {"digits": 5, "frames": 12, "size": 28},  # no room to move: every digit stays at (0, 0)
        {"digits": 1, "frames": 9, "size": 33, "speed": 1.7},  # faster than the canvas: clamped every frame
        {"digits": 4, "frames": 3, "size": 64, "speed": 0.0},
        {"source": {"kind": "builtin", "split": "test"}},
        {"digits": 3, "frames": 4, "speed": 1e307},  # speeds of inf px/frame: JSON null
    ],
)
def test_fast_path_equals_the_per_digit_per_frame_reference(changes):
    params = sim.MNIST.validate(changes)
    digits = src.load_digits(params["source"])
    for s in sim.MNIST.generate(params, 99, 0, 60):
        ref = sim.reference_sample(digits, params, 99, int(s.key))
        # the stored JSON is exactly that of the reference's dict of lists, key order included
        assert meta_bytes(s.meta) == meta_bytes(ref.meta) and list(s.meta) == list(ref.meta)
        assert s.key == ref.key
        np.testing.assert_array_equal(s.video, ref.video)


def test_overlap_modes():
    canvas = np.zeros((1, 2, 10, 10), np.uint8)
    images = np.stack(
        [np.full((4, 4), 7, np.uint8), np.full((4, 4), 100, np.uint8), np.full((4, 4), 200, np.uint8)]
    )
    ids = np.array([[2, 1]])  # digit 0 of the video is image 2, digit 1 image 1
    top_left = np.array([[[[0, 0], [2, 3]], [[6, 6], [6, 6]]]])  # frame 0 overlaps 2x1 pixels, frame 1 fully
    for mode, both in (("max", 200), ("sum", 255)):
        c = canvas.copy()
        sim.composite(c, images, ids, top_left, mode)
        f0 = c[0, 0]
        assert f0[0, 0] == 200 and f0[5, 6] == 100 and f0[2, 3] == both and f0[3, 3] == both
        assert f0[1, 3] == 200 and f0[2, 2] == 200 and f0[4, 4] == 100 and f0[2, 4] == 100
        assert (f0 > 0).sum() == 16 + 16 - 2 and not c[0, 1, :6].any()
        assert (c[0, 1, 6:, 6:] == both).all()
    small = np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 60, np.uint8)])
    c = canvas.copy()
    sim.composite(c, small, np.array([[0, 1]]), top_left, "sum")
    assert c[0, 1, 7, 7] == 160 and c[0, 0, 2, 3] == 160  # sums below 255 are not clipped


def test_composite_refuses_digits_outside_the_canvas():
    images, ids = np.ones((2, 4, 4), np.uint8), np.array([[0, 1]])
    canvas = np.zeros((1, 1, 10, 10), np.uint8)
    for corner in ([6, 7], [7, 6], [-1, 0]):  # 7 + 4 > 10 rows or columns; negative
        with pytest.raises(ValueError, match="does not fit"):
            sim.composite(canvas, images, ids, np.array([[[[0, 0], corner]]]), "max")
    with pytest.raises(ValueError, match="digit ids"):
        sim.composite(canvas, images, np.array([[0, 2]]), np.zeros((1, 1, 2, 2), int), "max")
    assert not canvas.any()


@pytest.mark.parametrize("n_available", [1, 2, 3, 10, 4500, 60000, 2**31 + 5, 2**32 - 1, 2**32, 2**32 + 3])
@pytest.mark.parametrize("seed", [0, 2**40 + 7, 2**130 + 1])
def test_batched_draws_are_numpys(seed, n_available):
    indices = range(2**32 - 40, 2**32 + 40) if seed == 0 else range(100)  # spawn keys of one and two words
    start, theta, ids = sim.draw_batch(seed, indices, 3, n_available)
    for k, i in enumerate(indices):
        s, a, d = sim.draw_sample(seed, i, 3, n_available)
        np.testing.assert_array_equal(start[k], s)
        np.testing.assert_array_equal(theta[k], a)
        np.testing.assert_array_equal(ids[k], d)
    assert ids.min() >= 0 and ids.max() < n_available
    if n_available >= 2**31:
        assert ids.max() > 2**30  # the high half of the range is reached


def test_content_depends_only_on_seed_and_index(params, monkeypatch):
    whole = [s.video for s in sim.MNIST.generate(params, 5, 0, 40)]
    parts = [s.video for a, b in ((0, 13), (13, 14), (14, 40)) for s in sim.MNIST.generate(params, 5, a, b)]
    monkeypatch.setattr(sim, "CHUNK_BYTES", 3 * 20 * 64 * 64)  # render 3 videos at a time
    chunked = [s.video for s in sim.MNIST.generate(params, 5, 0, 40)]
    for a, b, c in zip(whole, parts, chunked, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other = [s.video for s in sim.MNIST.generate(params, 6, 0, 40)]
    assert not any(np.array_equal(a, b) for a, b in zip(whole, other, strict=True))
    assert len({v.tobytes() for v in whole}) == 40


def test_digits_are_drawn_uniformly_from_the_split():
    params = sim.MNIST.validate({"source": {"kind": "builtin", "split": "test"}, "frames": 1, "digits": 4})
    ids = np.array([s.meta["digit_ids"] for s in sim.MNIST.generate(params, 1, 0, 500)]).ravel()
    test_rows = set(src.load_digits(params["source"]).source_index.tolist())
    assert set(ids.tolist()) <= test_rows
    assert len(set(ids.tolist())) > 450  # 2000 draws with replacement from 500 cover about 98%


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"digits": 0}, "digits must be an integer >= 1"),
        ({"digits": -2}, "digits must be an integer >= 1"),
        ({"digits": True}, "digits must be an integer >= 1"),
        ({"frames": 0}, "frames must be an integer >= 1"),
        ({"size": 2.5}, "size must be an integer"),
        ({"size": 27}, "digits of 28x28 do not fit a 27x27 canvas"),
        ({"speed": -0.1}, "speed must be a finite number >= 0"),
        ({"speed": float("nan")}, "speed must be a finite number"),
        ({"overlap": "mean"}, "overlap must be one of max, sum"),
        ({"colour": 1}, "unknown mnist parameter(s): colour"),
        ({"source": "mnist.npz"}, "source must be a digit source descriptor"),
        ({"source": {"kind": "builtin", "split": "val"}}, "split must be one of train, test"),
    ],
)
def test_bad_params(bad, message):
    with pytest.raises(DatagenError) as e:
        sim.MNIST.validate(bad)
    assert message in str(e.value)
