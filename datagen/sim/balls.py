"""Bouncing balls, batched: the RTRBM/TSBN generator's exact physics and rendering for many videos at once.

Physics (identical to `datagen.sim.balls_reference`, which keeps the original's per-ball loops): a square box
of side `box` (10), balls of radius `radius` (1.2) and mass 1; velocities `randn(n, 2)` scaled so the whole
(n, 2) array has norm 0.5; positions `box/5 + (4 box/5) U` (2 + 8U) per coordinate, redrawn for all balls
until every ball is inside the box and no pair overlaps; per frame the state is recorded, then two sub-steps
of `x += 0.5 v`, each followed by the wall bounce (velocity sign forced per axis) and the elastic collisions
of every pair j < i closer than 2r along their line of centres, in the original's order.

Randomness: sample i uses `default_rng(SeedSequence(seed, spawn_key=(i,)))` and draws exactly what the
reference draws, in the same order, so `reference_video(that rng)` and this module give the same clip.

Rendering: intensity `sum_i exp(-(d_i^2 / r^2)^4)` at pixel centres `(k + 0.5) / res * box`, clipped at 1,
stored as uint8 `rint(clip(A, 0, 1) * 255)` (round half to even; `balls_reference.to_uint8`). Only a square
window around each ball is computed: outside every window each ball contributes less than `0.25 / 255 / n`,
so the whole sum quantizes to 0 there. Inside a window the sum over *all* balls is evaluated, in ball order,
so a pixel's value is the full-frame sum, not an approximation. The float arithmetic differs from the
reference only by a few ulp: q = d^2 / r^2 is summed per axis (`dx^2/r^2 + dy^2/r^2`), `q**4` is
`(q*q)*(q*q)`, and q is capped at 5 (where exp(-q^4) < 1e-17 anyway). A stored byte can change only if
the float value lies within ~1e-14 of a rounding boundary (odds ~1e-11 per lit pixel, well under one byte
in a 100,000-video set); tests compare the bytes of thousands of clips with the reference port.

Ground truth in `meta` (pixel units: x = column, y = row, pixel centres at integer coordinates, so
`col = x * res / box - 0.5`; velocities in pixels per frame), rounded to 6 decimals to keep JSON small:
`{"index", "n_balls", "radius_px", "positions": [T][n][x, y], "velocities": [T][n][vx, vy]}`. The dicts
also carry their JSON text (`datagen.sim.fast_json.EncodedMeta`), produced for a whole batch with numpy:
`json.dumps` of 360 floats per clip would cost more than simulating and rendering it.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from datagen.errors import DatagenError
from datagen.sim.balls_reference import EPS, pixel_centres
from datagen.sim.fast_json import EncodedMeta, rounded_json
from datagen.store.sample import Sample, sample_key

DEFAULTS: dict[str, Any] = {"n_balls": 3, "frames": 30, "size": 30, "radius": 1.2, "box": 10.0}
META_DECIMALS = 6
MAX_TRIES = 1_000_000
"""Initial-position attempts per video before giving up (validation rejects set-ups needing > ~1e4)."""
MIN_ACCEPTANCE = 1e-4
"""Smallest acceptance rate of the initial-position rejection sampler that `validate` allows."""
BATCH = 512
"""Most videos simulated together (physics is vectorized over them)..."""
BATCH_BYTES = 64 << 20
"""...and at most about this many bytes of frames and trajectories per batch."""
Q_CAP = 5.0
"""Cap on (d / r)^2 (half of it per axis): exp(-5^4) ~ 4e-272 instead of an underflowing exp(-huge) = 0."""
RENDER_BYTES = 1 << 19
"""Size of one float64 window block while rendering: small enough to stay in cache."""


@dataclass(frozen=True)
class Trajectories:
    """World-unit positions and velocities (N, T, n, 2), each recorded before its frame's sub-steps."""

    positions: np.ndarray
    velocities: np.ndarray


# --- initial state ----------------------------------------------------------------------------------------


def _bad_positions(cand: np.ndarray, radius: float, box: float) -> np.ndarray:
    """Candidates (..., n, 2): True where a ball crosses a wall or a pair overlaps (the original's test)."""
    bad = ((cand - radius < 0) | (cand + radius > box)).any(axis=(-2, -1))
    n = cand.shape[-2]
    for i in range(n):
        for j in range(i):
            d = cand[..., i, :] - cand[..., j, :]
            bad |= np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) < radius + radius
    return bad


def initial_states(
    n_balls: int, radius: float, box: float, seed: int, indices: range | np.ndarray, first_block: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Initial positions and velocities (N, n, 2) of the given samples, drawn as the reference draws them.

    Each sample's candidates come from its own stream in the reference's order; drawing them `first_block`
    at a time yields the same values as drawing one (n, 2) array per attempt, and nothing is drawn after.
    """
    low, span = box / 5, box * 4 / 5
    rngs, raw_v, cands = [], [], []
    for i in indices:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(i),)))
        raw_v.append(rng.standard_normal((n_balls, 2)))
        cands.append(rng.random((first_block, n_balls, 2)))
        rngs.append(rng)
    v = np.asarray(raw_v).reshape(len(rngs), n_balls, 2)
    v = v / np.sqrt((v**2).sum(axis=(1, 2)))[:, None, None] * 0.5
    cand = low + np.asarray(cands).reshape(len(rngs), first_block, n_balls, 2) * span
    good = ~_bad_positions(cand, radius, box)
    first = good.argmax(axis=1)
    x = cand[np.arange(len(rngs)), first]
    for k in np.flatnonzero(~good.any(axis=1)):
        x[k] = _draw_until_good(rngs[k], n_balls, radius, box, first_block, int(indices[k]))
    return x, v


def _draw_until_good(
    rng: np.random.Generator, n: int, radius: float, box: float, tried: int, index: int
) -> np.ndarray:
    low, span = box / 5, box * 4 / 5
    block = tried
    while tried < MAX_TRIES:
        block = min(2 * block, 1 << 14)
        cand = low + rng.random((block, n, 2)) * span
        good = np.flatnonzero(~_bad_positions(cand, radius, box))
        if good.size:
            return cand[good[0]]
        tried += block
    raise DatagenError(
        f"sample {index}: could not place {n} balls of radius {radius} in a box of {box} "
        f"after {tried} tries; use fewer or smaller balls"
    )


# --- physics ------------------------------------------------------------------------------------------


def simulate(x0: np.ndarray, v0: np.ndarray, frames: int, radius: float, box: float) -> Trajectories:
    """Run the reference physics for every video at once; x0, v0 are (N, n, 2) and are not modified."""
    x, v = x0.copy(), v0.copy()
    N, n, _ = x.shape
    X = np.empty((N, frames, n, 2))
    V = np.empty((N, frames, n, 2))
    reach = radius + radius
    for t in range(frames):
        X[:, t] = x
        V[:, t] = v
        for _ in range(int(1 / EPS)):
            x += EPS * v
            v = np.where(x - radius < 0, np.abs(v), v)
            v = np.where(x + radius > box, -np.abs(v), v)
            for i in range(n):
                for j in range(i):
                    d = x[:, i] - x[:, j]
                    dist = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])
                    hit = np.flatnonzero(dist < reach)
                    if hit.size:
                        _collide(x, v, hit, i, j)
    return Trajectories(X, V)


def _collide(x: np.ndarray, v: np.ndarray, hit: np.ndarray, i: int, j: int) -> None:
    """Elastic collision of balls i and j (unit masses) in videos `hit`, as the original computes it."""
    w = x[hit, i] - x[hit, j]
    w = w / np.sqrt(w[:, 0] * w[:, 0] + w[:, 1] * w[:, 1])[:, None]
    vi, vj = v[hit, i], v[hit, j]
    v_i = w[:, 0] * vi[:, 0] + w[:, 1] * vi[:, 1]
    v_j = w[:, 0] * vj[:, 0] + w[:, 1] * vj[:, 1]
    m_i = m_j = 1.0
    new_v_j = (2 * m_i * v_i + v_j * (m_j - m_i)) / (m_i + m_j)
    new_v_i = new_v_j + (v_j - v_i)
    v[hit, i] = vi + w * (new_v_i - v_i)[:, None]
    v[hit, j] = vj + w * (new_v_j - v_j)[:, None]


# --- rendering ----------------------------------------------------------------------------------------


def window_size(res: int, radius: float, box: float, n_balls: int) -> tuple[int, float]:
    """Side W (pixels) of the square computed around each ball, and its half-width in world units.

    Beyond the half-width one ball contributes below tau = 0.25 / 255 / n, so n balls together stay below half
    a quantization step: such pixels are 0 in the full-frame rendering too.
    """
    tau = 0.25 / 255 / n_balls
    reach = radius * math.log(1 / tau) ** 0.125
    return min(res, math.floor(2 * reach * res / box) + 1), reach


def render(positions: np.ndarray, res: int, radius: float, box: float) -> np.ndarray:
    """uint8 frames (N, T, res, res) of world positions (N, T, n, 2); the full-frame reference's bytes."""
    N, T, n, _ = positions.shape
    pos = positions.reshape(N * T, n, 2)
    W, reach = window_size(res, radius, box, n)
    centres = pixel_centres(res, box)
    # first pixel row/col of each ball's window, kept inside the frame: (F, n, 2) as (col, row)
    start = np.ceil((pos - reach) * (res / box) - 0.5)
    start = np.clip(np.nan_to_num(start, nan=0.0), 0, res - W).astype(np.intp)
    out = np.zeros((N * T, res, res), np.uint8)
    s0, s1, s2 = out.strides
    windows = as_strided(out, (N * T, res - W + 1, res - W + 1, W, W), (s0, s1, s2, s1, s2), writeable=True)
    block = max(1, RENDER_BYTES // (8 * W * W))
    r2 = radius * radius
    for lo in range(0, N * T, block):
        hi = min(lo + block, N * T)
        _render_block(pos[lo:hi], start[lo:hi], windows, lo, centres, W, r2)
    return out.reshape(N, T, res, res)


def _render_block(
    pos: np.ndarray, start: np.ndarray, windows: np.ndarray, lo: int, centres: np.ndarray, W: int, r2: float
) -> None:
    """Windows of frames lo.. of `windows`; the frame axis is innermost so numpy's loops run long."""
    F, n, _ = pos.shape
    span = np.arange(W)[:, None]
    frames = np.arange(lo, lo + F)
    q = np.empty((W, W, F))
    total = np.empty((W, W, F))
    for b in range(n):
        cx = centres[start[:, b, 0] + span]  # (W, F): column centres of ball b's window
        cy = centres[start[:, b, 1] + span]  # (W, F): row centres
        for c in range(n):
            qx = _scaled_square_distance(cx, pos[:, c, 0], r2)
            qy = _scaled_square_distance(cy, pos[:, c, 1], r2)
            np.add(qx[None, :, :], qy[:, None, :], out=q)  # (row, col, frame)
            np.multiply(q, q, out=q)
            np.multiply(q, q, out=q)
            np.negative(q, out=q)
            if c == 0:
                np.exp(q, out=total)
            else:
                np.exp(q, out=q)
                np.add(total, q, out=total)
        # to_uint8 for values >= 0, in place
        np.minimum(total, 1.0, out=total)
        np.multiply(total, 255.0, out=total)
        np.rint(total, out=total)
        windows[frames, start[:, b, 1], start[:, b, 0]] = total.astype(np.uint8).transpose(2, 0, 1)


def _scaled_square_distance(centres: np.ndarray, x: np.ndarray, r2: float) -> np.ndarray:
    """min((centres - x)^2 / r^2, Q_CAP / 2) for window centres (W, F) and ball coordinates (F,).

    The cap keeps exp(-q^4) off numpy's slow underflow path. A capped term has q >= Q_CAP / 2, so both the
    true and the capped value are below exp(-(Q_CAP / 2)^4) ~ 1e-17: no stored byte can tell them apart.
    """
    d = centres - x
    np.multiply(d, d, out=d)
    np.divide(d, r2, out=d)
    return np.minimum(d, Q_CAP / 2, out=d)


# --- the generator ------------------------------------------------------------------------------------


def simulate_balls(params: Mapping[str, Any], seed: int, indices: range) -> tuple[np.ndarray, Trajectories]:
    """uint8 videos (N, T, H, W, 1) and world-unit trajectories for the given global sample indices."""
    n, r, box = params["n_balls"], params["radius"], params["box"]
    rate = acceptance_rate(n, r, box)  # draw enough candidates at once that most samples need one block
    first_block = 256 if rate <= 0 else int(min(256, max(16, math.ceil(4 / rate))))
    x0, v0 = initial_states(n, r, box, seed, indices, first_block)
    traj = simulate(x0, v0, params["frames"], r, box)
    video = render(traj.positions, params["size"], r, box)
    return video[..., None], traj


def ground_truth(params: Mapping[str, Any], traj: Trajectories, indices: range) -> list[EncodedMeta]:
    """Per-sample `meta`: positions and velocities in pixels (x = column, y = row), radius in pixels.

    Each dict also carries its JSON text (`EncodedMeta.encoded_json`), made for the whole batch at once.
    """
    scale = params["size"] / params["box"]
    n = params["n_balls"]
    radius_px = round(params["radius"] * scale, META_DECIMALS)
    pixels = traj.positions * scale - 0.5
    speeds = traj.velocities * scale
    texts = zip(rounded_json(pixels, META_DECIMALS), rounded_json(speeds, META_DECIMALS), strict=True)
    with _gc_paused():  # ~250 lists per sample: the cyclic GC would rescan them over and over (4x slower)
        positions = np.round(pixels, META_DECIMALS).tolist()
        velocities = np.round(speeds, META_DECIMALS).tolist()
        return [
            EncodedMeta(
                {"index": i, "n_balls": n, "radius_px": radius_px, "positions": p, "velocities": v},
                b'{"index":%d,"n_balls":%d,"positions":%s,"radius_px":%s,"velocities":%s}'
                % (i, n, p_json, repr(radius_px).encode(), v_json),
            )
            for i, p, v, (p_json, v_json) in zip(indices, positions, velocities, texts, strict=True)
        ]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (the lists built here hold only floats: no cycles to find)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@lru_cache(maxsize=64)
def acceptance_rate(n_balls: int, radius: float, box: float) -> float:
    """Fraction of initial-position draws the rejection sampler accepts (Monte Carlo, fixed seed).

    100,000 draws up to 30 balls, fewer beyond (the pair test is quadratic), never under 2,000.
    """
    tries = max(2000, min(100_000, 100_000 * 30**2 // n_balls**2))
    rng = np.random.default_rng(0)
    accepted, done = 0, 0
    chunk = max(1, min(tries, (1 << 21) // (2 * n_balls)))
    while done < tries:
        k = min(chunk, tries - done)
        cand = box / 5 + rng.random((k, n_balls, 2)) * (box * 4 / 5)
        accepted += int((~_bad_positions(cand, radius, box)).sum())
        done += k
    return accepted / tries


class BallsGenerator:
    """The `balls` generator: params {n_balls, frames, size (pixels), radius and box (world units)}."""

    name = "balls"
    version = "1"

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise DatagenError(f"unknown balls parameter(s): {', '.join(sorted(unknown))}")
        p = {**DEFAULTS, **params}
        for key, what in (("n_balls", "balls per video"), ("frames", "frames per video"), ("size", "pixels")):
            value = p[key]
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise DatagenError(f"{key} ({what}) must be an integer >= 1, got {value!r}")
            p[key] = int(value)
        for key in ("radius", "box"):
            value = p[key]
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise DatagenError(f"{key} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise DatagenError(f"{key} must be a finite number > 0, got {value!r}")
            p[key] = float(value)
        n, r, box = p["n_balls"], p["radius"], p["box"]
        if 2 * r >= box:
            raise DatagenError(f"radius {r} does not fit the box of side {box}: need 2 * radius < box")
        if n * math.pi * r * r > box * box or acceptance_rate(n, r, box) < MIN_ACCEPTANCE:
            raise DatagenError(
                f"{n} balls of radius {r} do not fit a box of side {box}: random placement almost never "
                "succeeds; use fewer balls or a smaller radius"
            )
        return p

    def sample_shape(self, params: Mapping[str, Any]) -> tuple[int, int, int, int]:
        return (params["frames"], params["size"], params["size"], 1)

    def generate(self, params: Mapping[str, Any], seed: int, start: int, stop: int) -> Iterator[Sample]:
        per_video = params["frames"] * (params["size"] ** 2 + 64 * params["n_balls"])
        batch = max(1, min(BATCH, BATCH_BYTES // per_video))
        for lo in range(start, stop, batch):
            indices = range(lo, min(lo + batch, stop))
            videos, traj = simulate_balls(params, seed, indices)
            for i, video, meta in zip(indices, videos, ground_truth(params, traj, indices), strict=True):
                yield Sample(sample_key(i), video, meta)


BALLS = BallsGenerator()
