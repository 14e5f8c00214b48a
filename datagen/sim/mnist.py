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

The fast path works on a chunk of videos at once: a numba kernel makes every sample's draws (`draw_batch`)
from the stream `datagen.sim._balls_kernels` defines (numpy's SeedSequence/PCG64 stream today); `bounce`
advances all digits together in numpy (a loop over frames only); a second kernel pastes the digits
(`composite`); the metas are plain dicts of per-sample numpy arrays, which the shard writers encode with
orjson. `reference_clip` is the straightforward
per-digit, per-frame version, kept for tests and `bench/`.

Variants (stochastic bounce, rotation, scale, colour) and the ground-truth fields (masks, flow, visibility,
wall events) are in `datagen.sim.mnist_variants`; with none of them the output is byte for byte the above.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numba import njit, uint64

from datagen.errors import DatagenError
from datagen.generators import requested_fields, with_defaults
from datagen.sim import mnist_variants as var
from datagen.sim._balls_kernels import entropy_words, next_double, next_uint64, seed_pcg64
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
    # variants (datagen.sim.mnist_variants): off by default, and then dropped from the validated params
    "bounce": "reflect",
    "rotation": 0.0,
    "scale": None,
    "scale_period": None,
    "colors": None,
}
BASE_KEYS = ("frames", "size", "digits", "speed", "overlap", "source")
"""Params of the plain generator; any other validated key (a variant, `fields`) takes `render_variant`."""
CHUNK_BYTES = 16 << 20  # videos rendered together: big enough to amortise numpy calls, small for the cache
MAX_KERNEL_DIGITS = 1 << 32
"""Largest digit set `draw_batch`'s kernel draws from (numpy switches to 64-bit draws above it)."""
TWO_PI = 2 * np.pi
LOW32 = np.uint64(0xFFFFFFFF)


def draw_sample(
    seed: int, index: int, digits: int, n_available: int, extra: int = 0
) -> tuple[np.ndarray, ...]:
    """Sample `index`'s random choices: start (digits, 2) as (y, x), angle (digits,), digit ids (digits,),
    then `extra` uniforms for the variants (`mnist_variants.Variant.n_draws`; none without variants)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    start = rng.random((digits, 2))
    theta = rng.random(digits) * (2 * np.pi)
    ids = rng.integers(0, n_available, size=digits)
    if extra:
        return start, theta, ids, rng.random(extra)
    return start, theta, ids


def draw_batch(
    seed: int, indices: range, digits: int, n_available: int, extra: int = 0
) -> tuple[np.ndarray, ...]:
    """`draw_sample` for every index, stacked: (n, digits, 2), (n, digits), (n, digits) int64 (and (n, extra)
    when `extra`).

    A numba kernel reproduces numpy's streams (~0.5 us a sample instead of ~15 us for the generator objects).
    """
    n = len(indices)
    start, theta = np.empty((n, digits, 2)), np.empty((n, digits))
    ids = np.empty((n, digits), np.int64)
    u = np.empty((n, extra))
    if n_available > MAX_KERNEL_DIGITS:  # numpy's 64-bit bounded draw: not in the kernel
        for k, i in enumerate(indices):
            start[k], theta[k], ids[k], *rest = draw_sample(seed, i, digits, n_available, extra)
            if extra:
                u[k] = rest[0]
    else:
        _draw_kernel(entropy_words(seed), np.asarray(indices, np.int64), n_available, start, theta, ids, u)
    return (start, theta, ids, u) if extra else (start, theta, ids)


@njit(cache=True)
def _draw_kernel(run_words, indices, n_available, start, theta, ids, extra):
    """Per sample as `draw_sample`: random() = 53 bits / 2^53, then `integers(0, n)` = numpy's buffered
    32-bit Lemire draw (`buffered_bounded_lemire_uint32`: low half of a 64-bit output first, then its high
    half; none at all for n = 1), then `extra.shape[1]` more random() (the buffered half is not used by
    random(), as in numpy)."""
    state = np.empty(4, np.uint64)
    rng = np.uint64(n_available - 1)
    excl = rng + np.uint64(1)
    threshold = (np.uint64(0xFFFFFFFF) - rng) % excl
    for k in range(indices.size):
        seed_pcg64(run_words, indices[k], state)
        for d in range(start.shape[1]):
            start[k, d, 0] = next_double(state)
            start[k, d, 1] = next_double(state)
        for d in range(theta.shape[1]):
            theta[k, d] = next_double(state) * TWO_PI
        have_high, high = False, np.uint64(0)
        for d in range(ids.shape[1]):
            if rng == 0:
                ids[k, d] = 0
                continue
            while True:
                if have_high:
                    word, have_high = high, False
                else:
                    bits = next_uint64(state)
                    word, high, have_high = bits & LOW32, bits >> np.uint64(32), True
                m = word * excl
                if (m & LOW32) >= threshold:  # numpy tests < excl first: the same outcome
                    break
            ids[k, d] = np.int64(m >> np.uint64(32))
        for j in range(extra.shape[1]):
            extra[k, j] = next_double(state)


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


def composite(
    canvas: np.ndarray, images: np.ndarray, ids: np.ndarray, top_left: np.ndarray, overlap: str
) -> None:
    """Paste digit `images[ids[b, d]]` at `top_left[b, t, d]` (y, x) into frame t of `canvas` (n, T, H, W).

    Every pixel of `canvas` is written (zero where no digit is): it may come from `np.empty`. Every digit must
    fit inside.
    """
    n, frames, height, width = canvas.shape
    h, w = images.shape[1:]
    if ids.shape[0] != n or top_left.shape != (n, frames, ids.shape[1], 2):
        raise ValueError(f"ids {ids.shape}, top_left {top_left.shape} do not fit a canvas {canvas.shape}")
    if top_left.size and not (
        top_left.min() >= 0 and top_left[..., 0].max() <= height - h and top_left[..., 1].max() <= width - w
    ):
        raise ValueError("a digit does not fit inside the canvas")
    if ids.size and not (ids.min() >= 0 and ids.max() < len(images)):
        raise ValueError(f"digit ids must lie in [0, {len(images)})")
    if not canvas.flags.c_contiguous:
        raise ValueError("the canvas must be C-contiguous")
    _composite_kernel(canvas, np.ascontiguousarray(images), ids, top_left, OVERLAPS.index(overlap))


@njit(cache=True)
def _composite_kernel(canvas, images, ids, top_left, mode):
    """Per frame: zero it (while it is in cache), then digit by digit in order: max (mode 0) or sum clipped
    at 255 (the first digit is copied).

    Flat unsigned offsets: numba then drops its negative-index checks and vectorizes the rows (4x faster).
    """
    n, frames, height, width = canvas.shape
    h, w = uint64(images.shape[1]), uint64(images.shape[2])
    flat = canvas.reshape(canvas.size)
    pixels = images.reshape(images.size)
    frame_size, row_size = uint64(height * width), uint64(width)
    for b in range(n):
        for t in range(frames):
            frame = uint64(b * frames + t) * frame_size
            for i in range(frame_size):
                flat[frame + i] = 0
            for d in range(ids.shape[1]):
                src = uint64(ids[b, d]) * h * w
                dst = frame + uint64(top_left[b, t, d, 0]) * row_size + uint64(top_left[b, t, d, 1])
                for r in range(h):
                    out, row = dst + r * row_size, src + r * w
                    if d == 0:
                        for c in range(w):
                            flat[out + c] = pixels[row + c]
                    elif mode == 0:
                        for c in range(w):
                            a, v = flat[out + c], pixels[row + c]
                            flat[out + c] = a if a > v else v
                    else:
                        for c in range(w):
                            total = np.uint16(flat[out + c]) + np.uint16(pixels[row + c])
                            flat[out + c] = total if total < 255 else 255


def render(
    digits: DigitSet, params: dict[str, Any], seed: int, indices: range
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Videos (n, T, H, W) uint8 and their ground truth for the global sample `indices`."""
    frames, size, n_dig, speed = params["frames"], params["size"], params["digits"], params["speed"]
    h, w = digits.images.shape[1:]
    free = np.array([size - h, size - w])
    start, theta, ids = draw_batch(seed, indices, n_dig, len(digits.labels))
    positions, velocities = bounce(start, theta, frames, speed)  # (T, n, D, 2)
    top_left = (free * positions).astype(np.int32).transpose(1, 0, 2, 3)  # (n, T, D, 2)
    with np.errstate(over="ignore"):  # speeds near float max give inf px/frame, as the reference's floats
        velocities = (velocities * (speed * free)).transpose(1, 0, 2, 3)  # pixels per frame

    canvas = np.empty((len(indices), frames, size, size), np.uint8)  # no calloc/page-fault zeroing pass
    composite(canvas, digits.images, ids, top_left, params["overlap"])
    return canvas, ground_truth(indices, digits.labels[ids], digits.source_index[ids], top_left, velocities)


def render_variant(
    digits: DigitSet, params: dict[str, Any], seed: int, indices: range
) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, np.ndarray]]:
    """`render` with the variants and fields of `params`: videos (n, T, H, W, C), metas, and the requested
    array fields as (n, ...) arrays by name."""
    frames, size, n_dig, speed = params["frames"], params["size"], params["digits"], params["speed"]
    v = var.Variant.of(params)
    n = len(indices)
    free = np.array([size - digits.images.shape[1], size - digits.images.shape[2]])
    start, theta, ids, *rest = draw_batch(seed, indices, n_dig, len(digits.labels), v.n_draws(frames, n_dig))
    draws = v.split(rest[0] if rest else np.empty((n, 0)), frames, n_dig)
    if v.bounce == "random":
        positions, velocities, hits = var.bounce_random(start, theta, frames, speed, draws["bounce"])
    else:
        positions, velocities = bounce(start, theta, frames, speed)
        hits = var.wall_hits(positions)
    top_left = (free * positions).astype(np.int32).transpose(1, 0, 2, 3)  # (n, T, D, 2)
    with np.errstate(over="ignore"):
        velocities = (velocities * (speed * free)).transpose(1, 0, 2, 3)
    angles, scales, colors = var.trajectories(v, draws, n, frames, n_dig)
    video, arrays, visible = _render_fields(digits, params, ids, top_left, angles, scales, colors)
    metas = ground_truth(indices, digits.labels[ids], digits.source_index[ids], top_left, velocities)
    fields = requested_fields(params)
    extra = {"angles": angles if v.rotation > 0 else None, "scales": scales if v.scale is not None else None}
    extra |= {"colors": colors, "visibility": visible if "visibility" in fields else None}
    for k, meta in enumerate(metas):
        meta.update({key: a[k] for key, a in extra.items() if a is not None})
        if "events" in fields:
            meta["events"] = var.events_of(hits[:, k], top_left[k])
    return video, metas, arrays


def _render_fields(
    digits: DigitSet,
    params: dict[str, Any],
    ids: np.ndarray,
    top_left: np.ndarray,
    angles: np.ndarray,
    scales: np.ndarray,
    colors: np.ndarray | None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Videos (n, T, H, W, C), the requested array fields, visible fractions (n, T, D) when computed.

    Upright unscaled digits are pasted row by row (grey: `composite`, the same bytes as `render`; coloured:
    `tinted_composite`) and get the row-wise field kernels; turning or scaled ones take the general per-pixel
    renderer."""
    fields = requested_fields(params)
    n, frames, size = len(ids), params["frames"], params["size"]
    if var.Variant.of(params).upright:
        if colors is None:
            video = np.empty((n, frames, size, size), np.uint8)
            composite(video, digits.images, ids, top_left, params["overlap"])
            video = video[..., None]
        else:
            mode = OVERLAPS.index(params["overlap"])
            video = var.tinted_composite(digits.images, ids, top_left, colors, size, mode)
        if not fields & {"mask", "flow", "visibility"}:
            return video, {}, None
        mask, visible, flow = var.plain_fields(
            digits.images, ids, top_left, size, "flow" in fields, "visibility" in fields
        )
    else:
        video, mask, visible, flow = var.render_general(
            digits.images, ids, top_left, angles, scales, colors, size,
            OVERLAPS.index(params["overlap"]), "flow" in fields,
        )  # fmt: skip
    arrays = {"mask": mask} if "mask" in fields else {}
    if flow is not None:
        arrays["flow"] = flow
    return video, arrays, visible


def ground_truth(
    indices: range, labels: np.ndarray, digit_ids: np.ndarray, top_left: np.ndarray, velocities: np.ndarray
) -> list[dict[str, Any]]:
    """Per-sample `meta` {index, labels, digit_ids, positions, velocities}; the arrays are read-only views
    into C-contiguous batch arrays (orjson encodes those natively)."""
    fields = [np.ascontiguousarray(a).view() for a in (labels, digit_ids, top_left, velocities)]
    for a in fields:
        a.flags.writeable = False  # on the views: the caller's arrays stay as they were
    return [
        {"index": i, "labels": lab, "digit_ids": ids, "positions": pos, "velocities": vel}
        for i, lab, ids, pos, vel in zip(indices, *fields, strict=True)
    ]


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
    """The `mnist` generator: params {frames, size, digits, speed, overlap, source} (see DEFAULTS), and the
    variants {bounce, rotation, scale, scale_period, colors} (`datagen.sim.mnist_variants`, recorded only when
    on); `fields` beyond the video: mask, flow, events, visibility.

    `speed` is the step length as a fraction of the free range (the authors' `step_length`), `source` a digit
    source descriptor (`datagen.sources.mnist.source_spec`); `validate` loads it and records its sha256.
    Version 2 encodes `meta` with orjson (version 1: Python's `json`; the texts differ for numbers below
    1e-4 and for infinite speeds, now null instead of `Infinity`). Clips are the same in both.
    """

    name = "mnist"
    version = "2"
    fields = ("video", "mask", "flow", "events", "visibility")

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        p = with_defaults("mnist", DEFAULTS, dict(params))
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
        return var.validate_variant(p)

    def sample_shape(self, params: dict[str, Any]) -> tuple[int, int, int, int]:
        """(T, H, W, C); also refuses fields these params cannot make (the job validates params without
        `fields`, and asks for the shape before anything is written)."""
        fields = requested_fields(params)
        if "mask" in fields and params["digits"] > var.MAX_MASK_DIGITS:
            raise DatagenError(
                f"mask ids are uint8: at most {var.MAX_MASK_DIGITS} digits, got {params['digits']}"
            )
        if "flow" in fields and params["frames"] < 2:
            raise DatagenError(f"flow needs at least 2 frames, got {params['frames']}")
        channels = 3 if params.get("colors") else 1
        return (params["frames"], params["size"], params["size"], channels)

    def generate(self, params: dict[str, Any], seed: int, start: int, stop: int) -> Iterator[Sample]:
        digits = load_digits(params["source"])
        plain = set(params) <= set(BASE_KEYS)
        per_video = params["frames"] * params["size"] ** 2 * (1 if plain else 8)  # video, mask, flow
        chunk = max(1, CHUNK_BYTES // per_video)
        for lo in range(start, stop, chunk):
            indices = range(lo, min(lo + chunk, stop))
            if plain:
                videos, metas = render(digits, params, seed, indices)
                for i, video, meta in zip(indices, videos, metas, strict=True):
                    yield Sample(sample_key(i), video[..., None], meta)
                continue
            videos, metas, arrays = render_variant(digits, params, seed, indices)
            for k, (i, video, meta) in enumerate(zip(indices, videos, metas, strict=True)):
                yield Sample(sample_key(i), video, meta, {name: a[k] for name, a in arrays.items()})


MNIST = MovingMnist()
