"""Moving MNIST: digits bouncing in a square canvas, following Srivastava et al. (2015).

The rules are those of the authors' `BouncingMNISTDataHandler` (mansimov/unsupervised-videos,
data_handler.py): each digit starts at a position y, x ~ U[0, 1) with direction theta ~ U[0, 2 pi) and
unit velocity (sin theta, cos theta). For every frame, first `pos += v * speed`, then a coordinate <= 0 is
set to 0 and its velocity component flipped, and one >= 1 set to 1 and flipped. Positions are scaled by the
free range (size - digit size, 64 - 28 = 36) and truncated to int: the digit's top-left corner, 3.6 px/frame
by default. Digits are pasted with `np.maximum` (the authors' overlap); `overlap="sum"` adds and clips to 255,
as the widely copied tejaslodaya/Mahajan variant does.

Our choices where the authors' code depends on its batch loop (documented, not from the paper):
- Randomness is per sample: `default_rng(SeedSequence(seed, spawn_key=(i,)))` draws, in this order, the start
  positions `random((digits, 2))` as (y, x), the angles `random(digits) * 2 pi`, then the digit ids
  `integers(0, n, digits)`: uniform with replacement from the chosen split (the authors cycle through a
  shuffled training set, which would make sample i depend on the samples before it).
- Videos are uint8 in 0..255 (the authors' are float32 copies of the stored digits).

The fast path advances all digits of a chunk of videos together (a loop over frames only) and composites each
digit slot into every frame of every video at once, as contiguous runs of the flattened frames (`composite`).
`reference_clip` is the straightforward per-digit, per-frame version, kept for tests and `bench/`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from datagen.errors import DatagenError
from datagen.sources.mnist import DigitSet, load_digits
from datagen.store.sample import Sample, sample_key

OVERLAPS = ("max", "sum")
DEFAULTS: dict[str, Any] = {
    "frames": 20,
    "size": 64,
    "digits": 2,
    "speed": 0.1,
    "overlap": "max",
    "source": {"kind": "builtin", "split": "train"},
}
CHUNK_BYTES = 16 << 20  # videos rendered together: big enough to amortise numpy calls, small for the cache


def draw_sample(seed: int, index: int, digits: int, n_available: int) -> tuple[np.ndarray, ...]:
    """Sample `index`'s random choices: start (digits, 2) as (y, x), angle (digits,), digit ids (digits,)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    start = rng.random((digits, 2))
    theta = rng.random(digits) * (2 * np.pi)
    ids = rng.integers(0, n_available, size=digits)
    return start, theta, ids


def bounce(start: np.ndarray, theta: np.ndarray, frames: int, speed: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions in [0, 1] and unit velocities after each frame's step and wall flips, (frames, ..., 2).

    `start` is (..., 2) as (y, x) and `theta` (...); every digit moves independently (no collisions).
    """
    pos = np.array(start, dtype=np.float64)
    vel = np.stack([np.sin(theta), np.cos(theta)], axis=-1)
    positions = np.empty((frames, *pos.shape))
    velocities = np.empty((frames, *pos.shape))
    for t in range(frames):
        pos += vel * speed
        low = pos <= 0
        pos[low] = 0.0
        vel[low] = -vel[low]
        high = pos >= 1
        pos[high] = 1.0
        vel[high] = -vel[high]
        positions[t] = pos
        velocities[t] = vel
    return positions, velocities


def composite(canvas: np.ndarray, images: np.ndarray, top_left: np.ndarray, overlap: str) -> None:
    """Paste digit d of video b at `top_left[b, t, d]` (y, x) into frame t of `canvas` (n, T, H, W), in place.

    `images` is (n, D, h, w) uint8. A digit padded with zeros to the canvas width and flattened,
    `L = (h - 1) * W + w` values, lands on the contiguous run that starts at flat offset `y * W + x` of
    its frame: its zero columns fall exactly on the pixels beside the digit (or wrap onto the next row's
    left edge) and leave them unchanged under both max and sum, and the run ends at most at the frame's
    last pixel. So one fancy-indexed read and write of contiguous runs per digit slot covers all videos
    and frames; the runs of one slot never overlap (one per frame), so no `ufunc.at` is needed.
    """
    n, frames, height, width = canvas.shape
    h, w = images.shape[2:]
    run = (h - 1) * width + w
    padded = np.zeros((n, images.shape[1], h, width), np.uint8)
    padded[..., :w] = images
    runs = padded.reshape(n, -1, h * width)[..., :run]  # (n, D, L)
    flat = canvas.reshape(n, frames, height * width)
    s0, s1, s2 = flat.strides
    windows = as_strided(flat, (n, frames, height * width - run + 1, run), (s0, s1, s2, s2), writeable=True)
    b = np.arange(n)[:, None]
    t = np.arange(frames)[None, :]
    for d in range(images.shape[1]):
        offset = top_left[:, :, d, 0] * width + top_left[:, :, d, 1]  # (n, T)
        digit = runs[:, d, None]  # (n, 1, L), broadcast over frames
        if d == 0:  # the canvas is still empty: max and sum both give the digit
            windows[b, t, offset] = digit
        elif overlap == "max":
            windows[b, t, offset] = np.maximum(windows[b, t, offset], digit)
        else:
            total = windows[b, t, offset].astype(np.uint16) + digit
            windows[b, t, offset] = np.minimum(total, 255).astype(np.uint8)


def render(
    digits: DigitSet, params: dict[str, Any], seed: int, indices: range
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Videos (n, T, H, W) uint8 and their ground truth for the global sample `indices`."""
    frames, size, n_dig, speed = params["frames"], params["size"], params["digits"], params["speed"]
    h, w = digits.images.shape[1:]
    free = np.array([size - h, size - w])
    draws = [draw_sample(seed, i, n_dig, len(digits.labels)) for i in indices]
    start = np.stack([s for s, _, _ in draws])  # (n, D, 2)
    theta = np.stack([a for _, a, _ in draws])  # (n, D)
    ids = np.stack([k for _, _, k in draws])  # (n, D)
    positions, velocities = bounce(start, theta, frames, speed)  # (T, n, D, 2)
    top_left = (free * positions).astype(np.int32).transpose(1, 0, 2, 3)  # (n, T, D, 2)
    velocities = (velocities * (speed * free)).transpose(1, 0, 2, 3)  # pixels per frame

    canvas = np.zeros((len(indices), frames, size, size), np.uint8)
    composite(canvas, digits.images[ids], top_left, params["overlap"])

    labels, rows = digits.labels[ids].tolist(), digits.source_index[ids].tolist()
    tl, vel = top_left.tolist(), velocities.tolist()
    metas = [
        {"index": i, "labels": labels[j], "digit_ids": rows[j], "positions": tl[j], "velocities": vel[j]}
        for j, i in enumerate(indices)
    ]
    return canvas, metas


def reference_clip(
    images: np.ndarray,
    start: np.ndarray,
    theta: np.ndarray,
    *,
    frames: int,
    size: int,
    speed: float,
    overlap: str,
) -> tuple[np.ndarray, list, list]:
    """One video (T, H, W) the straightforward way, as the authors' handler: per digit, frame and wall.

    Also returns the top-left corners [t][d] = [y, x] and velocities [t][d] = [vy, vx] in pixels per frame.
    """
    video = np.zeros((frames, size, size), np.uint8)
    top_left = [[[0, 0] for _ in images] for _ in range(frames)]
    velocity = [[[0.0, 0.0] for _ in images] for _ in range(frames)]
    sin, cos = np.sin(theta), np.cos(theta)  # as the authors: one numpy call over all digits
    for d in range(len(images)):
        h, w = images[d].shape
        y, x = float(start[d, 0]), float(start[d, 1])
        vy, vx = float(sin[d]), float(cos[d])
        for t in range(frames):
            y += vy * speed
            x += vx * speed
            if x <= 0:
                x, vx = 0.0, -vx
            if x >= 1.0:
                x, vx = 1.0, -vx
            if y <= 0:
                y, vy = 0.0, -vy
            if y >= 1.0:
                y, vy = 1.0, -vy
            top, left = int((size - h) * y), int((size - w) * x)
            top_left[t][d] = [top, left]
            velocity[t][d] = [vy * (speed * (size - h)), vx * (speed * (size - w))]
            region = video[t, top : top + h, left : left + w]
            if overlap == "max":
                region[...] = np.maximum(region, images[d])
            else:
                region[...] = np.minimum(region.astype(np.uint16) + images[d], 255)
    return video, top_left, velocity


def reference_sample(digits: DigitSet, params: dict[str, Any], seed: int, index: int) -> Sample:
    """Sample `index` built by `reference_clip`: the same bytes as `MNIST.generate`, the slow way."""
    start, theta, ids = draw_sample(seed, index, params["digits"], len(digits.labels))
    video, top_left, velocity = reference_clip(
        digits.images[ids],
        start,
        theta,
        frames=params["frames"],
        size=params["size"],
        speed=params["speed"],
        overlap=params["overlap"],
    )
    meta = {
        "index": index,
        "labels": digits.labels[ids].tolist(),
        "digit_ids": digits.source_index[ids].tolist(),
        "positions": top_left,
        "velocities": velocity,
    }
    return Sample(sample_key(index), video[..., None], meta)


class MovingMnist:
    """The `mnist` generator: params {frames, size, digits, speed, overlap, source} (see DEFAULTS).

    `speed` is the step length as a fraction of the free range (the authors' `step_length`), `source` a digit
    source descriptor (`datagen.sources.mnist.source_spec`); `validate` loads it and records its sha256.
    """

    name = "mnist"
    version = "1"

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise DatagenError(f"unknown mnist parameter(s): {', '.join(sorted(unknown))}")
        p = {**DEFAULTS, **params}
        for key, low in (("frames", 1), ("size", 1), ("digits", 1)):
            if not isinstance(p[key], int | np.integer) or isinstance(p[key], bool) or p[key] < low:
                raise DatagenError(f"{key} must be an integer >= {low}, got {p[key]!r}")
            p[key] = int(p[key])
        if not isinstance(p["speed"], int | float) or not (math.isfinite(p["speed"]) and p["speed"] >= 0):
            raise DatagenError(f"speed must be a finite number >= 0, got {p['speed']!r}")
        p["speed"] = float(p["speed"])
        if p["overlap"] not in OVERLAPS:
            raise DatagenError(f"overlap must be one of {', '.join(OVERLAPS)}, got {p['overlap']!r}")
        if not isinstance(p["source"], dict):
            raise DatagenError(f"source must be a digit source descriptor, got {p['source']!r}")
        digits = load_digits(p["source"])
        h, w = digits.images.shape[1:]
        if h > p["size"] or w > p["size"]:
            raise DatagenError(
                f"digits of {h}x{w} do not fit a {p['size']}x{p['size']} canvas; use --size >= {h}"
            )
        p["source"] = dict(digits.descriptor)
        return p

    def sample_shape(self, params: dict[str, Any]) -> tuple[int, int, int, int]:
        return (params["frames"], params["size"], params["size"], 1)

    def generate(self, params: dict[str, Any], seed: int, start: int, stop: int) -> Iterator[Sample]:
        digits = load_digits(params["source"])
        chunk = max(1, CHUNK_BYTES // (params["frames"] * params["size"] ** 2))
        for lo in range(start, stop, chunk):
            indices = range(lo, min(lo + chunk, stop))
            videos, metas = render(digits, params, seed, indices)
            for i, video, meta in zip(indices, videos, metas, strict=True):
                yield Sample(sample_key(i), video[..., None], meta)


MNIST = MovingMnist()
