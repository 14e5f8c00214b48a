"""Clip cutting rules, quality-figure conventions, the stacked-JPEG format, inputs and parameters."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datagen.errors import DatagenError
from datagen.sources.video import FrameReader, VideoSource, expand_inputs
from datagen.stabilize.chain import composite_fill, largest_centred_square, output_transform, resize_crop
from datagen.stabilize.clips import CutStats, cut_clips
from datagen.stabilize.matching import Features, StepMatch, scaling_matrix
from datagen.stabilize.params import StabilizeParams, validate_params
from datagen.stabilize.quality import camera_path, itf, psnr, stability_scores
from datagen.stabilize.shake import apply_h
from datagen.stabilize.videogan_format import (
    decode_strip,
    encode_strip,
    read_list,
    read_strip,
    strip_path,
    write_list,
    write_strip,
)

# --- clip cutting rules, with a scripted matcher: frame i's "features" carry i --------------------------


def scripted(fail_at=(), shift_at=None):
    """extract/match pair: matching frame i to i-1 fails for i in fail_at; at `shift_at` the step moves
    the frame 10000 px away (out of view); otherwise the identity."""

    def extract(frame):
        return Features(np.full((1, 2), frame[0, 0, 0], np.float32), np.zeros((1, 128), np.float32))

    def match(cur, prev, seed):
        i = int(cur.points[0, 0])
        if i in fail_at:
            return StepMatch(None, 3, 0, "scripted failure")
        h = np.eye(3)
        if i == shift_at:
            h[0, 2] = 10000.0
        return StepMatch(h, 50, 40)

    return extract, match


def numbered_frames(n):
    return [np.full((24, 32, 3), i, np.uint8) for i in range(n)]


def cut(n, p, **script):
    stats = CutStats()
    extract, match = scripted(**script)
    clips = list(cut_clips(numbered_frames(n), p, extract, match, stats=stats))
    return [(c.start, c.stop, c.end_reason) for c in clips], stats


def test_clips_skip_the_first_frames_and_are_cut_at_max_frames():
    p = StabilizeParams(size=8, max_frames=32, min_frames=16, skip_frames=2)
    clips, stats = cut(100, p)
    assert clips == [(2, 34, "max frames"), (34, 66, "max frames"), (66, 98, "max frames")]
    assert stats.dropped_short == 1  # frames 98, 99 at the end of the video
    assert stats.n_frames == 100


def test_match_failure_starts_a_new_clip_at_the_failing_frame():
    p = StabilizeParams(size=8, max_frames=32, min_frames=16, skip_frames=0)
    clips, stats = cut(60, p, fail_at={20})
    assert clips == [(0, 20, "match failed"), (20, 52, "max frames")]
    assert stats.dropped_short == 1  # 52..59
    # VideoGAN's code drops the failed clip instead
    clips, stats = cut(60, StabilizeParams(size=8, skip_frames=0, on_match_failure="drop"), fail_at={20})
    assert clips == [(20, 52, "max frames")] and stats.dropped_failed == 1


def test_short_clips_are_dropped_and_out_of_view_ends_a_clip():
    p = StabilizeParams(size=8, max_frames=32, min_frames=16, skip_frames=0)
    clips, stats = cut(50, p, fail_at={10})
    assert clips == [(10, 42, "max frames")] and stats.dropped_short == 2
    clips, _ = cut(50, p, shift_at=25)
    assert clips == [(0, 25, "out of view"), (25, 50, "end of video")]


def test_max_clips_per_video():
    clips, _ = cut(200, StabilizeParams(size=8, skip_frames=0, max_clips=2))
    assert [c[:2] for c in clips] == [(0, 32), (32, 64)]


# --- geometry -------------------------------------------------------------------------------------------


def test_output_transform_matches_resize_crop():
    """The 3x3 map in the meta sends a full-resolution pixel where resize_crop puts it."""
    img = np.zeros((272, 640), np.uint8)
    img[100:110, 400:410] = 255  # a 10 px square at centre (404.5, 104.5)
    out = resize_crop(img, 64, "area").astype(float)
    ys, xs = np.mgrid[0:64, 0:64]
    centroid = np.array([(xs * out).sum(), (ys * out).sum()]) / out.sum()
    mapped = apply_h(output_transform(272, 640, 64), np.array([[404.5, 104.5]]))[0]
    assert np.abs(centroid - mapped).max() < 0.05


def test_scaling_matrix_aligns_pixel_centres():
    s = scaling_matrix(0.5, 0.5)  # full-res pixels 0 and 1 average into small pixel 0 (centre 0.5 -> 0)
    assert np.allclose(apply_h(s, np.array([[0.5, 0.5], [3.5, 1.5]])), [[0, 0], [1.5, 0.5]])


def test_composite_fills_uncovered_pixels_from_the_previous_frame():
    warped = np.stack([np.full((4, 4, 3), 100.0), np.full((4, 4, 3), 200.0)]).astype(np.float32)
    masks = np.ones((2, 4, 4), np.float32)
    masks[1, :, :2] = 0  # left half uncovered in frame 1
    frames, filled = composite_fill(warped, masks)
    assert (frames[1, :, :2] == 100).all() and (frames[1, :, 2:] == 200).all()
    assert filled.tolist() == [0.0, 0.5]


def test_largest_centred_square():
    valid = np.zeros((40, 60), bool)
    valid[5:35, 10:50] = True  # centre (20, 30): the square is limited by the top edge (15 px away)
    assert largest_centred_square(valid) == 15
    assert largest_centred_square(np.zeros((10, 10), bool)) == 0


# --- quality conventions --------------------------------------------------------------------------------


def test_psnr_and_itf_conventions():
    a = np.zeros((8, 8, 3), np.uint8)
    assert psnr(a, a + 1) == pytest.approx(10 * np.log10(255**2))  # MSE 1
    assert psnr(a, a) == 100.0  # identical frames are capped
    frames = np.stack([a, a + 1, a + 3])  # MSE 1 then 4
    assert itf(frames) == pytest.approx(np.mean([10 * np.log10(255**2), 10 * np.log10(255**2 / 4)]))


def similarity(theta, tx, ty, scale=1.0):
    c, s = scale * np.cos(theta), scale * np.sin(theta)
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1.0]])


def test_stability_score_low_frequency_share():
    n = 32
    t = np.arange(n - 1)
    slow = np.stack([similarity(0.0, 0.5, 0.0) for _ in t])  # a steady pan: a ramp, energy ~ 1/k^2
    ss_t, ss_r = stability_scores(camera_path(slow))
    assert ss_t > 0.85 and ss_r == 1.0  # no rotation energy at all: perfectly still scores 1
    rng = np.random.default_rng(0)
    jitter = np.stack([similarity(rng.normal(0, 0.01), *rng.normal(0, 2, 2)) for _ in t])
    ss_t, ss_r = stability_scores(camera_path(jitter))
    assert ss_t < 0.9 and ss_r < 0.9  # random-walk path has energy spread to higher bins
    # shake back and forth every frame: translation 0, 3, 0, 3, ... is all DC + Nyquist, no low bins
    path = camera_path(np.stack([similarity(0.0, 3.0 * (-1) ** k, 0.0) for k in t]))
    assert np.allclose(np.hypot(path[:, 0, 2], path[:, 1, 2]), 1.5 - 1.5 * (-1) ** np.arange(n))
    assert stability_scores(path)[0] < 0.05


def test_stability_rotation_uses_the_true_angle():
    """Rotation signal atan2(P10, P00); DIFRINT's atan2(P00, P11) is constant for pure rotations."""
    rng = np.random.default_rng(1)
    steps = np.stack([similarity(rng.normal(0, 0.02), 0, 0) for _ in range(31)])
    path = camera_path(steps)
    angles = np.arctan2(path[:, 1, 0], path[:, 0, 0])
    assert np.allclose(angles[1:], np.cumsum([np.arctan2(s[1, 0], s[0, 0]) for s in steps]))
    assert stability_scores(path)[1] < 1.0  # the DIFRINT quirk would give a constant signal, scoring 1


# --- VideoGAN stacked-JPEG format -------------------------------------------------------------------------


def smooth_clip(t=5, size=32):
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 2.0)
    return np.stack([np.clip(base + 10 * k, 0, 255).astype(np.uint8) for k in range(t)])


def test_stacked_jpeg_round_trip(tmp_path):
    clip = smooth_clip()
    data = encode_strip(clip)
    assert data == encode_strip(clip)  # deterministic bytes
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (5 * 32, 32, 3)  # vertical stack, frame-wide
    back = decode_strip(data)
    assert back.shape == clip.shape and np.abs(back.astype(int) - clip).mean() < 2.0
    # frame 2 is rows [64, 96) of the stack, in BGR order (JPEG error aside)
    assert np.abs(image[64:96, :, ::-1].astype(int) - clip[2]).mean() < 2.0
    assert np.abs(image[64:96, :, ::-1].astype(int) - clip[1]).mean() > 5.0
    path = strip_path(tmp_path, 3, 7)
    write_strip(path, clip)
    assert path.relative_to(tmp_path).as_posix() == "000003/0007.jpg"
    assert np.array_equal(read_strip(path), back)
    listed = write_list(tmp_path)
    assert listed.read_text() == "000003/0007.jpg\n"
    assert read_list(listed) == [path]
    # and a stacked clip is an input source
    frames = list(FrameReader(VideoSource(str(path), "stacked")))
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3)
    assert np.array_equal(np.stack(frames)[..., ::-1], back)


def test_stacked_jpeg_with_bad_height_is_reported(tmp_path):
    p = tmp_path / "bad.jpg"
    cv2.imwrite(str(p), np.zeros((50, 32, 3), np.uint8))
    with pytest.raises(DatagenError, match="multiple of its width"):
        list(FrameReader(VideoSource(str(p), "stacked")))


# --- inputs ---------------------------------------------------------------------------------------------


def test_expand_inputs_paths_globs_lists_and_folders(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("b10.avi", "b2.avi", "a.mp4"):
        (tmp_path / "v" / name).write_bytes(b"x")
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in (10, 2, 1):
        cv2.imwrite(str(frames / f"f{k}.png"), np.full((8, 8, 3), k, np.uint8))
    (tmp_path / "list.txt").write_text("# clips\nv/a.mp4 label\n\nmissing.mp4\n")
    got = expand_inputs([str(tmp_path / "v" / "b*.avi"), str(tmp_path / "list.txt"), str(frames)])
    assert [(s.path[len(str(tmp_path)) + 1 :], s.kind) for s in got] == [
        ("v/b2.avi", "video"),
        ("v/b10.avi", "video"),
        ("v/a.mp4", "video"),
        ("missing.mp4", "video"),  # a missing list entry is reported by its task, not here
        ("frames", "frames"),
    ]
    assert [f[0, 0, 0] for f in FrameReader(got[-1])] == [1, 2, 10]  # natural order
    with pytest.raises(DatagenError, match="does not exist"):
        expand_inputs([str(tmp_path / "nope.mp4")])
    with pytest.raises(DatagenError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.mkv")])


def test_params_are_validated():
    assert validate_params({"size": 128}).size == 128
    with pytest.raises(DatagenError, match="unknown stabilize parameter"):
        validate_params({"sise": 64})
    with pytest.raises(DatagenError, match="fill must be one of"):
        validate_params({"fill": "inpaint"})
    with pytest.raises(DatagenError, match="min_frames"):
        validate_params({"min_frames": 40})
