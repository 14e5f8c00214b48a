"""Moving MNIST ground-truth fields: instance masks, exact flow, visible fractions and wall events."""

from __future__ import annotations

import json

import numpy as np
import pytest

import datagen.cli.mnist  # noqa: F401  (registers the command)
from datagen.cli import main
from datagen.sim import mnist as sim
from datagen.sim import mnist_variants as var
from datagen.store.manifest import load_manifest
from datagen.store.readers import iter_samples
from datagen.store.wds import meta_bytes

ALL = ["video", "mask", "flow", "events", "visibility"]


pytestmark = pytest.mark.usefixtures("private_cache")


def with_fields(changes: dict, fields=ALL) -> dict:
    return {**sim.MNIST.validate(changes), "fields": list(fields)}


def alone_layers(s, digits, size: int) -> np.ndarray:
    """Each digit of a plain (upright, unscaled) clip pasted alone: (D, T, H, W) uint8."""
    rows = [int(np.flatnonzero(digits.source_index == i)[0]) for i in s.meta["digit_ids"]]
    pos = np.asarray(s.meta["positions"])
    frames, n_dig = pos.shape[:2]
    layers = np.zeros((n_dig, frames, size, size), np.uint8)
    for d in range(n_dig):
        for t in range(frames):
            y, x = pos[t, d]
            layers[d, t, y : y + 28, x : x + 28] = digits.images[rows[d]]
    return layers


@pytest.mark.parametrize("overlap", ["max", "sum"])
def test_masks_agree_with_the_rendering(digits, overlap):
    p = with_fields({"digits": 3, "frames": 10, "overlap": overlap})
    plain = list(
        sim.MNIST.generate(sim.MNIST.validate({"digits": 3, "frames": 10, "overlap": overlap}), 6, 0, 25)
    )
    overlapped = 0
    for s, ref in zip(sim.MNIST.generate(p, 6, 0, 25), plain, strict=True):
        np.testing.assert_array_equal(s.video, ref.video)  # fields never change the clip ...
        assert meta_bytes({k: s.meta[k] for k in ref.meta}) == meta_bytes(ref.meta)  # ... or the old meta
        mask, video = s.fields["mask"], s.video[..., 0]
        assert mask.dtype == np.uint8 and mask.shape == (10, 64, 64) and mask.max() <= 3
        np.testing.assert_array_equal(mask > 0, video > 0)  # background exactly where the byte is 0
        layers = alone_layers(s, digits, 64)
        owner_ink = np.take_along_axis(layers, np.maximum(mask.astype(int) - 1, 0)[None], 0)[0]
        fg = mask > 0
        np.testing.assert_array_equal(owner_ink[fg], layers.max(0)[fg])  # the largest ink owns the pixel
        if overlap == "max":
            np.testing.assert_array_equal(video[fg], owner_ink[fg])  # ... the one whose value is kept
        # ties go to the later digit (drawn on top)
        top = (layers.shape[0] - 1 - np.argmax(layers[::-1] == layers.max(0), axis=0)) + 1
        np.testing.assert_array_equal(mask[fg], top[fg])
        overlapped += int(((layers > 0).sum(0) > 1).sum())
    assert overlapped > 100  # overlaps happened


def test_ids_are_stable_and_flow_is_each_digits_displacement(digits):
    p = with_fields({"digits": 2, "frames": 12, "speed": 0.15})
    for s in sim.MNIST.generate(p, 2, 0, 20):
        mask, flow = s.fields["mask"], s.fields["flow"].astype(np.float64)
        pos = np.asarray(s.meta["positions"])
        assert flow.shape == (11, 64, 64, 2) and s.fields["flow"].dtype == np.float16
        layers = alone_layers(s, digits, 64)
        for t in range(11):
            assert not flow[t][mask[t] == 0].any()  # 0 on the background
            for d in range(2):
                on = mask[t] == d + 1
                assert (layers[d, t][on] > 0).all()  # id d + 1 only where digit d has ink
                dy, dx = pos[t + 1, d] - pos[t, d]
                np.testing.assert_allclose(flow[t][on], np.broadcast_to([dx, dy], (on.sum(), 2)), atol=0.01)
                # the same digit pixels, moved by the flow, carry id d + 1 in frame t + 1 unless covered
                rows, cols = np.nonzero(on)
                moved = mask[t + 1, rows + dy, cols + dx]
                ink = layers[:, t + 1, rows + dy, cols + dx]  # (D, pixels)
                covered = (ink[d + 1 :] >= ink[d]).any(0) | (ink[:d] > ink[d]).any(0)  # ties: later digit
                assert (moved[~covered] == d + 1).all()


def test_affine_flow_warps_the_next_frame_onto_this_one():
    """Rotating, scaling digits: the flow is the affine map of the recorded trajectories (to 0.01 px where
    float16 holds that), and a bilinear backward warp of frame t + 1 by it matches frame t on unoccluded digit
    pixels far better than no warp."""
    p = with_fields({"digits": 1, "frames": 10, "rotation": 12, "scale": [0.6, 1.2], "scale_period": 7})
    warped_err, still_err = [], []
    for s in sim.MNIST.generate(p, 8, 0, 10):
        mask, flow = s.fields["mask"], s.fields["flow"].astype(np.float64)
        pos = np.asarray(s.meta["positions"])[:, 0] + 14.0
        ang = np.deg2rad(np.asarray(s.meta["angles"])[:, 0])
        sc = np.asarray(s.meta["scales"])[:, 0]
        frames = s.video[..., 0].astype(np.float64)
        for t in range(9):
            rows, cols = np.nonzero(mask[t])
            q = np.stack([rows + 0.5, cols + 0.5], -1) - pos[t]
            da = ang[t + 1] - ang[t]
            turn = np.array(
                [[np.cos(da), -np.sin(da)], [np.sin(da), np.cos(da)]]
            )  # (y, x), counter-clockwise
            moved = pos[t + 1] + (sc[t + 1] / sc[t]) * q @ turn.T
            expected = moved - np.stack([rows + 0.5, cols + 0.5], -1)
            got = flow[t, rows, cols][:, ::-1]  # stored (x, y)
            tol = np.maximum(0.01, np.abs(expected) * 2**-10)  # float16 spacing past 10 px
            assert (np.abs(got - expected) <= tol).all()
            ty, tx = rows + 0.5 + got[:, 0] - 0.5, cols + 0.5 + got[:, 1] - 0.5
            warped = _bilinear(frames[t + 1], ty, tx)
            warped_err.append(np.abs(warped - frames[t, rows, cols]).mean())
            still_err.append(np.abs(frames[t + 1, rows, cols] - frames[t, rows, cols]).mean())
    assert np.mean(warped_err) < 0.4 * np.mean(still_err), (np.mean(warped_err), np.mean(still_err))


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    h, w = img.shape
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    out = np.zeros(len(y))
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            k = (1 - np.abs(y - yy)) * (1 - np.abs(x - xx))
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            out[ok] += k[ok] * img[yy[ok], xx[ok]]
    return out


def test_visible_fraction_is_one_alone_and_drops_under_overlap(digits):
    p = with_fields({"digits": 3, "frames": 10}, ["video", "visibility"])
    seen_partial = 0
    for s in sim.MNIST.generate(p, 11, 0, 30):
        assert not s.fields  # visibility is meta only
        vis = np.asarray(s.meta["visibility"])
        layers = alone_layers(s, digits, 64)
        owner = np.where(layers.max(0) > 0, 3 - np.argmax(layers[::-1] == layers.max(0), axis=0), 0)
        for t in range(10):
            for d in range(3):
                own = (layers[d, t] > 0).sum()
                assert vis[t, d] == pytest.approx((owner[t] == d + 1).sum() / own)
                others = np.delete(layers[:, t], d, axis=0).max(0)
                isolated = not (others[layers[d, t] > 0] > 0).any()
                if isolated:
                    assert vis[t, d] == 1.0
                if (others[layers[d, t] > 0] > layers[d, t][layers[d, t] > 0]).any():
                    assert vis[t, d] < 1.0
                    seen_partial += 1
    assert seen_partial > 10


@pytest.mark.parametrize("bounce", ["reflect", "random"])
def test_events_agree_with_velocity_sign_changes(bounce):
    p = with_fields({"digits": 3, "frames": 40, "speed": 0.2, "bounce": bounce}, ["video", "events"])
    n_events = 0
    for s in sim.MNIST.generate(p, 5, 0, 30):
        pos, vel = np.asarray(s.meta["positions"]), np.asarray(s.meta["velocities"])
        events = s.meta["events"]
        got = {(e["frame"], e["objects"][0], "yx".index(e["axis"])) for e in events}
        assert len(got) == len(events) and all(e["kind"] == "wall" and len(e["objects"]) == 1 for e in events)
        for e in events:
            t, d, a = e["frame"], e["objects"][0], "yx".index(e["axis"])
            assert e["position"] == pos[t, d].tolist() and pos[t, d, a] in (0, 36)
            assert (vel[t, d, a] > 0) == (pos[t, d, a] == 0)  # heading back inside
        flips = {(t, d, a) for t, d, a in zip(*np.nonzero(vel[1:] * vel[:-1] < 0), strict=True)}
        flips = {(t + 1, d, a) for t, d, a in flips}
        later = {e for e in got if e[0] >= 1}
        if bounce == "reflect":
            assert later == flips  # a component changes sign exactly at a wall hit on its axis
        else:
            assert (
                later <= flips
            )  # the normal always turns back; the tangent may turn at a hit on the other axis
            hit_frames = {(t, d) for t, d, _ in got}
            assert all((t, d) in hit_frames for t, d, _ in flips)
        n_events += len(events)
    assert n_events > 100


def test_fields_with_colour_rotation_and_scale(digits):
    p = with_fields({"digits": 2, "frames": 6, "colors": "random", "rotation": 30, "scale": [0.5, 1.5]})
    for s in sim.MNIST.generate(p, 1, 0, 10):
        assert s.video.shape == (6, 64, 64, 3) and s.fields["mask"].shape == (6, 64, 64)
        np.testing.assert_array_equal(s.fields["mask"] > 0, s.video.max(-1) > 0)
        vis = np.asarray(s.meta["visibility"])
        assert ((0 <= vis) & (vis <= 1)).all()


def test_fields_reach_the_store_and_the_default_store_is_unchanged(tmp_path):
    base = [
        "mnist",
        "--n",
        "6",
        "--frames",
        "4",
        "--seed",
        "2",
        "--quiet",
        "--workers",
        "0",
        "--shard-size",
        "3",
    ]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "video"), "--fields", "video"]) == 0
    plain, video = load_manifest(tmp_path / "plain"), load_manifest(tmp_path / "video")
    assert plain["digest"] == video["digest"] and "fields" not in plain["params"]
    assert "fields" not in plain["sample"]
    out = tmp_path / "all"
    assert main([*base, "--out", str(out), "--fields", ",".join(ALL), "--format", "both"]) == 0
    m = load_manifest(out)
    assert m["params"]["fields"] == ALL and m["sample"]["flow"]["shape"] == [3, 64, 64, 2]
    expected = list(sim.MNIST.generate(m["params"], 2, 0, 6))
    for fmt in ("wds", "hdf5"):
        got = [x for sh in m["shards"] if sh["format"] == fmt for x in iter_samples(out / sh["path"], fmt)]
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a.video, b.video)
            for name in ("mask", "flow"):
                np.testing.assert_array_equal(a.fields[name], b.fields[name])
            assert a.meta == json.loads(meta_bytes(b.meta))
    assert main(["verify", str(out)]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--digits", "256", "--fields", "mask"], "mask ids are uint8: at most 255 digits, got 256"),
        (["--frames", "1", "--fields", "video,flow"], "flow needs at least 2 frames, got 1"),
        (["--fields", "video,depth"], "unknown field(s) depth"),
    ],
)
def test_fields_these_params_cannot_make_are_refused_before_writing(tmp_path, capsys, args, message):
    out = tmp_path / "m"
    assert main(["mnist", "--n", "1", "--quiet", "--out", str(out), "--workers", "0", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_fast_plain_fields_equal_the_general_renderer(digits):
    """Upright unscaled digits take row-wise kernels (`plain_fields`); the general per-pixel renderer must
    give the same masks, visible fractions and flow."""
    rng = np.random.default_rng(4)
    n, frames, d, size = 5, 6, 4, 48
    ids = rng.integers(0, len(digits.images), (n, d))
    top_left = rng.integers(0, size - 28 + 1, (n, frames, d, 2)).astype(np.int32)
    ones = np.ones((n, frames, d))
    _, mask, visible, flow = var.render_general(
        digits.images, ids, top_left, 0 * ones, ones, None, size, 0, True
    )
    fast_mask, fast_visible, fast_flow = var.plain_fields(digits.images, ids, top_left, size, True, True)
    np.testing.assert_array_equal(fast_mask, mask)
    np.testing.assert_array_equal(fast_visible, visible)
    np.testing.assert_array_equal(fast_flow, flow)
    assert (visible < 1).any() and flow.any()


def test_general_renderer_masks_and_visibility_for_turning_scaled_colour_digits(digits):
    """Rotating, scaled, coloured digits: the mask holds the digit of largest ink (each digit rendered alone
    by the same renderer), ties to the later one, and visibility is its share of the pixels it has alone."""
    rng = np.random.default_rng(9)
    n, frames, d, size = 3, 4, 3, 80
    ids = rng.integers(0, len(digits.images), (n, d))
    top_left = rng.integers(0, size - 28 + 1, (n, frames, d, 2)).astype(np.int32)
    angles, scales = rng.uniform(-90, 90, (n, frames, d)), rng.uniform(0.6, 1.6, (n, frames, d))
    colors = var.PALETTE[rng.integers(0, len(var.PALETTE), (n, d))]
    video, mask, visible, _ = var.render_general(
        digits.images, ids, top_left, angles, scales, colors, size, 0, False
    )
    alone = np.stack(
        [
            var.render_general(
                digits.images,
                ids[:, k : k + 1],
                top_left[:, :, k : k + 1],
                angles[:, :, k : k + 1],
                scales[:, :, k : k + 1],
                None,
                size,
                0,
                False,
            )[0][..., 0]
            for k in range(d)
        ]
    )  # fmt: skip  (d, n, T, H, W): each digit's ink alone
    top = alone.max(0)
    owner = np.where(top > 0, d - np.argmax(alone[::-1] == top, axis=0), 0)
    np.testing.assert_array_equal(mask, owner)
    for k in range(d):
        share = (mask == k + 1).sum(axis=(2, 3)) / np.maximum((alone[k] > 0).sum(axis=(2, 3)), 1)
        np.testing.assert_allclose(visible[..., k], share)
    tinted = np.floor(
        alone[..., None] * colors.astype(float).transpose(1, 0, 2)[:, :, None, None, None] / 255 + 0.5
    )
    np.testing.assert_array_equal(video, tinted.max(0))  # overlap max, channel by channel
    assert (visible < 1).any() and (visible == 1).any()
