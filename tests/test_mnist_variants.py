"""Moving MNIST variants: SVG's stochastic bounce, rotation and scale, colour digits, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import datagen.cli.mnist  # noqa: F401  (registers the command)
from datagen.cli import main
from datagen.errors import DatagenError
from datagen.sim import mnist as sim
from datagen.sim import mnist_variants as var
from datagen.store.manifest import load_manifest
from datagen.store.readers import iter_samples
from datagen.store.wds import meta_bytes

pytestmark = pytest.mark.usefixtures("private_cache")


def test_options_at_their_off_values_leave_the_params_as_they_were():
    plain = sim.MNIST.validate({})
    off = {"bounce": "reflect", "rotation": 0, "scale": None, "scale_period": None, "colors": None}
    assert sim.MNIST.validate(off) == plain and set(plain) == set(sim.BASE_KEYS)
    assert sim.MNIST.validate({"scale": [1, 1]}) == plain  # a range of one value 1 is no scaling
    p = sim.MNIST.validate({"bounce": "random", "rotation": 5, "scale": [0.5, 1], "colors": "palette"})
    assert {k: p[k] for k in ("bounce", "rotation", "scale", "scale_period", "colors")} == {
        "bounce": "random",
        "rotation": 5.0,
        "scale": [0.5, 1.0],
        "scale_period": 20.0,
        "colors": "palette",
    }
    assert sim.MNIST.validate(p) == p and sim.MNIST.sample_shape(p) == (20, 64, 64, 3)


@pytest.mark.parametrize("n_available", [1, 4500, 2**32 + 3])
def test_variant_draws_continue_numpys_stream(n_available):
    indices = range(2**32 - 3, 2**32 + 3) if n_available == 1 else range(40)
    base = sim.draw_batch(7, indices, 3, n_available)
    start, theta, ids, u = sim.draw_batch(7, indices, 3, n_available, extra=11)
    for a, b in zip(base, (start, theta, ids), strict=True):
        np.testing.assert_array_equal(a, b)  # the base draws do not move
    for k, i in enumerate(indices):
        np.testing.assert_array_equal(u[k], sim.draw_sample(7, i, 3, n_available, 11)[3])
    assert 0 <= u.min() and u.max() < 1 and len(np.unique(u)) == u.size


def test_stochastic_bounce_follows_svgs_rule():
    rng = np.random.default_rng(1)
    n, frames, digits, speed = 400, 60, 2, 0.1
    start, theta = rng.random((n, digits, 2)), rng.random((n, digits)) * 2 * np.pi
    kicks = rng.random((n, frames, digits, 2, 2))
    pos, vel, hits = var.bounce_random(start, theta, frames, speed, kicks)
    assert pos.min() >= 0 and pos.max() <= 1
    np.testing.assert_array_equal(hits, (pos == 0) | (pos == 1))
    prev = np.concatenate([np.stack([np.sin(theta), np.cos(theta)], -1)[None], vel[:-1]])
    changed = (vel != prev).any(-1)
    hit_any = hits.any(-1)
    assert not (changed & ~hit_any).any()  # the velocity changes only at a wall ...
    assert (changed[hit_any]).mean() > 0.9  # ... and almost always does there
    np.testing.assert_array_equal(vel[hits] > 0, pos[hits] == 0)  # the normal points away from the wall
    quarters = vel * 4
    np.testing.assert_array_equal(np.abs(quarters[hits]) >= 1, True)
    np.testing.assert_array_equal(set(np.abs(quarters[hits]).tolist()), {1.0, 2.0, 3.0, 4.0})
    tangent = quarters[..., ::-1][hits & ~hits[..., ::-1]]  # the other axis of a one-wall hit
    assert set(tangent.tolist()) == set(range(-4, 5))
    free = ~hits[1:]
    np.testing.assert_allclose((pos[1:] - pos[:-1])[free], (vel[:-1] * speed)[free], atol=1e-12)
    # until its first hit a digit moves exactly as in Srivastava's rule (same start draws)
    ref_pos, _ = sim.bounce(start, theta, frames, speed)
    first = np.argmax(hit_any, axis=0)  # (n, digits)
    t = np.arange(frames)[:, None, None]
    before = (t < first) | ~hit_any.any(0)
    np.testing.assert_array_equal(pos[before], ref_pos[before])


def test_stochastic_bounce_clips_stay_inside_the_canvas(digits):
    p = sim.MNIST.validate({"bounce": "random", "digits": 3, "frames": 30, "speed": 0.2})
    changed_at_wall = 0
    for s in sim.MNIST.generate(p, 2, 0, 40):
        pos, vel = np.asarray(s.meta["positions"]), np.asarray(s.meta["velocities"])
        assert pos.min() >= 0 and pos.max() <= 36
        at_wall = (pos == 0) | (pos == 36)
        flips = vel[1:] != vel[:-1]
        assert not (flips.any(-1) & ~at_wall[1:].any(-1)).any()
        changed_at_wall += int(flips.any(-1).sum())
        canvas = np.zeros((30, 64, 64), np.uint8)  # the video is exactly the digits pasted at the positions
        rows = [int(np.flatnonzero(digits.source_index == i)[0]) for i in s.meta["digit_ids"]]
        for t in range(30):
            for d in range(3):
                y, x = pos[t, d]
                np.maximum(
                    canvas[t, y : y + 28, x : x + 28],
                    digits.images[rows[d]],
                    out=canvas[t, y : y + 28, x : x + 28],
                )
        np.testing.assert_array_equal(s.video[..., 0], canvas)
    assert changed_at_wall > 50


def test_identity_transform_is_the_plain_paste(digits):
    rng = np.random.default_rng(3)
    n, frames, d, size = 6, 5, 3, 40
    ids = rng.integers(0, len(digits.images), (n, d))
    top_left = rng.integers(0, size - 28 + 1, (n, frames, d, 2)).astype(np.int32)
    for mode, name in enumerate(sim.OVERLAPS):
        plain = np.empty((n, frames, size, size), np.uint8)
        sim.composite(plain, digits.images, ids, top_left, name)
        ones = np.ones((n, frames, d))
        video, mask, visible, _ = var.render_general(
            digits.images, ids, top_left, 0 * ones, ones, None, size, mode, False
        )
        np.testing.assert_array_equal(video[..., 0], plain)
        np.testing.assert_array_equal(mask > 0, plain > 0)


def _moments(img: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mass, centroid (y, x) of pixel centres, covariance (2, 2)."""
    m = img.astype(np.float64)
    mass = m.sum()
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]] + 0.5
    c = np.array([(m * yy).sum(), (m * xx).sum()]) / mass
    dy, dx = yy - c[0], xx - c[1]
    cov = np.array([[(m * dy * dy).sum(), (m * dy * dx).sum()], [(m * dy * dx).sum(), (m * dx * dx).sum()]])
    return mass, c, cov / mass


def test_rotation_and_scale_follow_the_recorded_trajectories(digits):
    """One digit per clip: the rendered digit's mass scales as s^2, its centroid and second moments are the
    source digit's turned by the recorded angle (counter-clockwise on screen) and scaled by the recorded s."""
    p = sim.MNIST.validate(
        {"digits": 1, "frames": 12, "rotation": 15, "scale": [0.5, 1.0], "scale_period": 9}
    )
    at_row = {int(r): k for k, r in enumerate(digits.source_index)}
    omegas = []
    for s in sim.MNIST.generate(p, 5, 0, 12):
        angles, scales = np.asarray(s.meta["angles"])[:, 0], np.asarray(s.meta["scales"])[:, 0]
        omega = angles[1] - angles[0]
        omegas.append(omega)
        np.testing.assert_allclose(angles, omega * np.arange(12), atol=1e-9)  # constant angular velocity
        assert abs(omega) <= 15 and 0.5 <= scales.min() and scales.max() <= 1.0
        mid = 0.75  # a sinusoid of period 9 about the range's middle
        np.testing.assert_allclose(
            scales[2:] + scales[:-2] - 2 * mid, 2 * np.cos(2 * np.pi / 9) * (scales[1:-1] - mid), atol=1e-9
        )
        assert np.ptp(scales) > 0.1
        src_mass, src_c, src_cov = _moments(digits.images[at_row[int(s.meta["digit_ids"][0])]])
        for t in range(12):
            a, sc = np.deg2rad(angles[t]), scales[t]
            mass, c, cov = _moments(s.video[t, ..., 0])
            np.testing.assert_allclose(mass / src_mass, sc**2, rtol=0.06)
            centre = np.asarray(s.meta["positions"])[t, 0] + 14.0
            expected_c = centre + sc * _turn(src_c - 14.0, a)
            np.testing.assert_allclose(c, expected_c, atol=0.3)
            r = _turn_matrix(a)
            np.testing.assert_allclose(
                cov, sc**2 * r @ src_cov @ r.T, atol=0.06 * np.trace(src_cov) * sc**2 + 0.2
            )
    assert np.ptp(omegas) > 5  # drawn per clip


def _turn_matrix(a: float) -> np.ndarray:
    """Counter-clockwise on screen (y down) for (y, x) vectors: x' = cos x + sin y, y' = -sin x + cos y."""
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _turn(v: np.ndarray, a: float) -> np.ndarray:
    return _turn_matrix(a) @ v


def test_colour_digits_are_the_grey_digit_times_its_colour():
    grey = sim.MNIST.validate({"digits": 1, "frames": 6})
    for mode in var.COLOR_MODES:
        p = sim.MNIST.validate({"digits": 1, "frames": 6, "colors": mode})
        colours = set()
        for g, c in zip(sim.MNIST.generate(grey, 9, 0, 30), sim.MNIST.generate(p, 9, 0, 30), strict=True):
            rgb = np.asarray(c.meta["colors"])[0]
            assert c.video.shape == (6, 64, 64, 3) and rgb.max() == 255
            assert c.meta["positions"].tolist() == g.meta["positions"].tolist()  # same draws before colour
            expected = np.floor(g.video.astype(np.float64) * rgb / 255 + 0.5).astype(np.uint8)
            np.testing.assert_array_equal(c.video, expected)
            colours.add(tuple(rgb.tolist()))
            if mode == "palette":
                assert tuple(rgb.tolist()) in {tuple(x) for x in var.PALETTE.tolist()}
        assert len(colours) >= 5  # drawn per digit


def test_variants_depend_only_on_seed_and_index(monkeypatch):
    p = sim.MNIST.validate({"digits": 3, "frames": 8, "bounce": "random", "rotation": 20, "colors": "random"})
    whole = list(sim.MNIST.generate(p, 4, 0, 12))
    monkeypatch.setattr(sim, "CHUNK_BYTES", 5 * 8 * 64 * 64)
    parts = [s for a, b in ((0, 5), (5, 6), (6, 12)) for s in sim.MNIST.generate(p, 4, a, b)]
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_array_equal(a.video, b.video)
        assert meta_bytes(a.meta) == meta_bytes(b.meta)
    assert len({s.video.tobytes() for s in whole}) == 12


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"bounce": "svg"}, "bounce must be one of reflect, random"),
        ({"rotation": -1}, "rotation must be in [0, 180] degrees per frame"),
        ({"rotation": float("inf")}, "rotation must be a finite number"),
        ({"rotation": "5"}, "rotation must be a finite number"),
        ({"scale": [0.1, 1]}, "scale must satisfy 0.25 <= lo <= hi <= 2"),
        ({"scale": [1.5, 1]}, "scale must satisfy 0.25 <= lo <= hi <= 2"),
        ({"scale": 1.2}, "scale must be a range [lo, hi]"),
        ({"scale": [0.5, 1], "scale_period": 0}, "scale_period must be > 0 frames"),
        ({"scale_period": 10}, "scale_period needs a scale range"),
        ({"colors": "rainbow"}, "colors must be one of palette, random"),
    ],
)
def test_bad_variant_params(bad, message):
    with pytest.raises(DatagenError) as e:
        sim.MNIST.validate(bad)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bounce", "svg"], "bounce must be one of reflect, random"),
        (["--scale", "a-b"], "--scale must be LO-HI or one number"),
        (["--scale", "0.5-3"], "scale must satisfy 0.25 <= lo <= hi <= 2"),
        (["--rotation", "200"], "rotation must be in [0, 180]"),
        (["--colors", "rgb"], "colors must be one of palette, random"),
        (["--scale-period", "5"], "scale_period needs a scale range"),
    ],
)
def test_cli_refuses_bad_variants_in_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "store"
    assert main(["mnist", "--out", str(out), "--quiet", "--workers", "0", "--n", "2", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_cli_variant_store_records_its_options(tmp_path: Path):
    out = tmp_path / "v"
    args = ["mnist", "--n", "7", "--frames", "4", "--digits", "3", "--seed", "3", "--quiet", "--workers", "0"]
    args += ["--bounce", "random", "--rotation", "10", "--scale", "0.6-1.4", "--colors", "palette"]
    assert main([*args, "--out", str(out)]) == 0
    m = load_manifest(out)
    assert m["sample"]["video"]["shape"] == [4, 64, 64, 3]
    assert {k: m["params"][k] for k in ("bounce", "rotation", "scale", "colors")} == {
        "bounce": "random",
        "rotation": 10.0,
        "scale": [0.6, 1.4],
        "colors": "palette",
    }
    got = [s for sh in m["shards"] for s in iter_samples(out / sh["path"], "wds")]
    expected = list(sim.MNIST.generate(m["params"], 3, 0, 7))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.video, b.video)
        assert a.meta == json.loads(meta_bytes(b.meta))
        assert np.asarray(a.meta["angles"]).shape == (4, 3) and np.asarray(a.meta["colors"]).shape == (3, 3)


def test_upright_colour_digits_row_by_row_equal_the_general_renderer(digits):
    rng = np.random.default_rng(5)
    n, frames, d, size = 4, 5, 4, 48
    ids = rng.integers(0, len(digits.images), (n, d))
    top_left = rng.integers(0, size - 28 + 1, (n, frames, d, 2)).astype(np.int32)
    colors = var.hue_colors(rng.random((n, d)))
    ones = np.ones((n, frames, d))
    for mode in (0, 1):
        fast = var.tinted_composite(digits.images, ids, top_left, colors, size, mode)
        slow = var.render_general(digits.images, ids, top_left, 0 * ones, ones, colors, size, mode, False)[0]
        np.testing.assert_array_equal(fast, slow)
        assert fast.any() and (fast.max(-1) > 0).sum() > 1000


def test_general_renderer_is_bilinear_inverse_mapping_over_the_whole_canvas():
    """Against a plain numpy inverse map of every canvas pixel (zero-padded bilinear): digits with ink up to
    their box's edges, turned and scaled, lose nothing at the borders of what the kernel scans."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)  # ink everywhere, edges included
    n, frames, size = 3, 4, 80
    ids = np.array([[0], [1], [2]])
    top_left = np.full((n, frames, 1, 2), 26, np.int32)
    angles, scales = rng.uniform(-180, 180, (n, frames, 1)), rng.uniform(0.3, 2.0, (n, frames, 1))
    video = var.render_general(images, ids, top_left, angles, scales, None, size, 0, False)[0][..., 0]
    yy, xx = np.mgrid[:size, :size] + 0.5
    for b in range(n):
        for t in range(frames):
            a, s = np.deg2rad(angles[b, t, 0]), scales[b, t, 0]
            qy, qx = yy - 40.0, xx - 40.0  # centre = 26 + 14
            fy = (np.sin(a) * qx + np.cos(a) * qy) / s + 13.5
            fx = (np.cos(a) * qx - np.sin(a) * qy) / s + 13.5
            expected = np.floor(_zero_padded_bilinear(images[b].astype(float), fy, fx) + 0.5)
            np.testing.assert_array_equal(video[b, t], expected)


def _zero_padded_bilinear(img: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    h, w = img.shape
    y0, x0 = np.floor(fy).astype(int), np.floor(fx).astype(int)
    out = np.zeros(fy.shape)
    for dy in (0, 1):
        for dx in (0, 1):
            y, x = y0 + dy, x0 + dx
            weight = (1 - np.abs(fy - y)) * (1 - np.abs(fx - x))
            ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            out[ok] += weight[ok] * img[y[ok], x[ok]]
    return out
