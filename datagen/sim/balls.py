"""Bouncing balls, batched: the RTRBM/TSBN generator's exact physics and rendering for many videos at once.

Physics (identical to `datagen.sim.balls_reference`, which keeps the original's per-ball loops): a square box
of side `box` (10), balls of radius `radius` (1.2) and mass 1; velocities `randn(n, 2)` scaled so the whole
(n, 2) array has norm 0.5; positions `box/5 + (4 box/5) U` (2 + 8U) per coordinate, redrawn for all balls
until every ball is inside the box and no pair overlaps; per frame the state is recorded, then two sub-steps
of `x += 0.5 v`, each followed by the wall bounce (velocity sign forced per axis) and the elastic collisions
of every pair j < i closer than 2r along their line of centres, in the original's order.

Randomness: sample i uses `default_rng(SeedSequence(seed, spawn_key=(i,)))` and draws exactly what the
reference draws, in the same order, so `reference_video(that rng)` and this module give the same clip. The
draws, the physics and the rendering run in numba kernels (`datagen.sim._balls_kernels`), one sample at a
time inside a batch; they reproduce numpy's streams bit for bit.

Rendering: intensity `sum_i exp(-(d_i^2 / r^2)^4)` at pixel centres `(k + 0.5) / res * box`, clipped at 1,
stored as uint8 `rint(clip(A, 0, 1) * 255)` (round half to even; `balls_reference.to_uint8`). Only boxes
around the balls are computed: outside them every ball contributes at most 0.49 / 255 / n, so the sum
quantizes to 0 there. Inside, the sum over the balls is evaluated in ball order, so a pixel's value is the
full-frame sum, less terms below ~1e-17. The float arithmetic differs from the reference only by a few
ulp: q = d^2 / r^2 is summed per axis (`dx^2/r^2 + dy^2/r^2`), `q**4` is `(q*q)*(q*q)`, and each axis term
is capped at Q_CAP / 2 (where exp(-q^4) < 1e-17 anyway). A stored byte can change only if the float value
lies within ~1e-14 of a rounding boundary (well under one byte in a 100,000-video set); tests compare the
bytes of thousands of clips with the reference port, and the canonical sets' digests (`data_manifests/`)
are those of the earlier numpy renderer.

Ground truth in `meta` (pixel units: x = column, y = row, pixel centres at integer coordinates, so
`col = x * res / box - 0.5`; velocities in pixels per frame), rounded to 6 decimals to keep JSON small:
`{"index", "n_balls", "radius_px", "positions": [T][n][x, y], "velocities": [T][n][vx, vy]}`, a plain dict
whose trajectories are read-only float64 arrays (views into the batch's arrays); the shard writers encode it
with orjson (`datagen.store.wds.meta_bytes`).

Variants (masses, gravity, damping, restitution, radius and count ranges, colours, an occluder; issue 17)
are off by default and then absent from the params: this module's kernels and bytes are untouched by them.
With any of them on, `generate` hands over to `datagen.sim.balls_variants` (general kernels in
`datagen.sim._balls_variants`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from datagen.errors import DatagenError
from datagen.generators import requested_fields, with_defaults
from datagen.sim import _balls_kernels as kernels
from datagen.sim import balls_variants as bv
from datagen.sim.balls_reference import EPS, pixel_centres
from datagen.store.sample import Sample, sample_key

DEFAULTS: dict[str, Any] = {
    "n_balls": 3,
    "frames": 30,
    "size": 30,
    "radius": 1.2,
    "box": 10.0,
    **bv.VARIANT_DEFAULTS,  # off by default, and then dropped from the validated params
}
META_DECIMALS = 6
MAX_TRIES = 1_000_000
"""Initial-position attempts per video before giving up (validation rejects set-ups needing > ~1e4)."""
MIN_ACCEPTANCE = 1e-4
"""Smallest acceptance rate of the initial-position rejection sampler that `validate` allows."""
BATCH = 512
"""Most videos simulated together..."""
BATCH_BYTES = 64 << 20
"""...and at most about this many bytes of frames and trajectories per batch."""
Q_CAP = 5.0
"""Cap on (d / r)^2 (half of it per axis): exp(-5^4) ~ 4e-272 instead of an underflowing exp(-huge) = 0."""
ZERO_MARGIN = 0.49
"""Pixels where every ball's term is <= ZERO_MARGIN / 255 / n (255 * sum <= 0.49) store 0 uncomputed."""
Q_SKIP = 2.7
"""A ball with q >= Q_SKIP all over another ball's box adds <= exp(-2.5^4) ~ 1e-17 there: left out."""
RENDER_TERMS = 1 << 16
"""Exponents computed per call of numpy's exp while rendering (512 KiB: stays in cache)."""
FIELDS = ("video", "mask", "flow", "events", "visibility")
FIELDS_BATCH_BYTES = 8 << 20
"""Bytes of frames, masks and flow per batch with fields: small enough that malloc reuses freed batches
(the 36 MB batches of 64 MiB spent a third of the time in page faults of fresh memory)."""
NO_EVENTS = np.empty((0, kernels.EVENT_FIELDS))
EVENT_KINDS = ("wall", "collision")


@dataclass(frozen=True)
class Trajectories:
    """World-unit positions and velocities (N, T, n, 2), each recorded before its frame's sub-steps."""

    positions: np.ndarray
    velocities: np.ndarray


# --- initial state ----------------------------------------------------------------------------------------


def initial_states(
    n_balls: int, radius: float, box: float, seed: int, indices: range | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Initial positions and velocities (N, n, 2) of the given samples, drawn as the reference draws them."""
    index_array = np.asarray(indices, dtype=np.uint64).reshape(-1)
    N = index_array.size
    raw_v, x = np.empty((N, n_balls, 2)), np.empty((N, n_balls, 2))
    tries = np.empty(N, np.int64)
    failed = kernels.initial_draws(
        kernels.entropy_words(seed), index_array, radius, box, MAX_TRIES, raw_v, x, tries
    )
    if failed >= 0:
        raise DatagenError(
            f"sample {int(index_array[failed])}: could not place {n_balls} balls of radius {radius} in a box "
            f"of {box} after {int(tries[failed])} tries; use fewer or smaller balls"
        )
    v = raw_v / np.sqrt((raw_v**2).sum(axis=(1, 2)))[:, None, None] * 0.5  # the reference's v / norm(v) * 0.5
    return x, v


# --- physics and rendering --------------------------------------------------------------------------------


def simulate(x0: np.ndarray, v0: np.ndarray, frames: int, radius: float, box: float) -> Trajectories:
    """Run the reference physics for every video; x0, v0 are (N, n, 2) and are not modified."""
    return simulate_with_events(x0, v0, frames, radius, box, events=False)[0]


def simulate_with_events(
    x0: np.ndarray, v0: np.ndarray, frames: int, radius: float, box: float, *, events: bool = True
) -> tuple[Trajectories, np.ndarray]:
    """`simulate`, and the events it went through: (E, kernels.EVENT_FIELDS) rows in simulation order
    (sample, frame, kind, ball, other ball or -1, x, y in world units); none unless `events`."""
    x0 = np.ascontiguousarray(x0, dtype=np.float64)
    v0 = np.ascontiguousarray(v0, dtype=np.float64)
    N, n, _ = x0.shape
    X, V = np.empty((N, frames, n, 2)), np.empty((N, frames, n, 2))
    steps = int(1 / EPS)
    table = np.empty((N * frames * n, kernels.EVENT_FIELDS)) if events else NO_EVENTS
    while True:  # the first try fits unless balls collide often (a big table is cheap: a few MB at most)
        count = kernels.simulate(x0, v0, float(radius), float(box), EPS, steps, X, V, table)
        if count <= table.shape[0]:
            return Trajectories(X, V), table[:count]
        table = np.empty((count, kernels.EVENT_FIELDS))


def render(positions: np.ndarray, res: int, radius: float, box: float) -> np.ndarray:
    """uint8 frames (N, T, res, res) of world positions (N, T, n, 2); the full-frame reference's bytes."""
    N, T, n, _ = positions.shape
    out = np.zeros((N, T, res, res), np.uint8)
    pixels = out.reshape(-1)
    flat = np.ascontiguousarray(positions, dtype=np.float64).reshape(N * T, n, 2)
    q_zero = math.log(255 * n / ZERO_MARGIN) ** 0.25  # every term <= ZERO_MARGIN / 255 / n: the byte is 0
    capacity = max(RENDER_TERMS, n * n * res * res)  # at least one frame's worth
    args, terms = np.empty(capacity), np.empty(capacity)
    boxes = np.empty((max(n, capacity // 16), kernels.BOX_FIELDS), np.int64)
    members = np.empty((boxes.shape[0] * n, kernels.MEMBER_FIELDS), np.int64)
    centres = pixel_centres(res, box)
    first = 0
    while first < N * T:
        first, n_boxes, n_args = kernels.box_terms(
            flat, first, centres, res / box, radius * radius, Q_CAP / 2, q_zero, Q_SKIP, args, boxes, members
        )
        np.exp(args[:n_args], out=terms[:n_args])  # numpy's exp, as the numpy renderer used
        kernels.sum_terms(terms, boxes[:n_boxes], members, pixels, res)
    return out


# --- the generator ------------------------------------------------------------------------------------


def simulate_balls(params: Mapping[str, Any], seed: int, indices: range) -> tuple[np.ndarray, Trajectories]:
    """uint8 videos (N, T, H, W, 1) and world-unit trajectories for the given global sample indices."""
    n, r, box = params["n_balls"], params["radius"], params["box"]
    x0, v0 = initial_states(n, r, box, seed, indices)
    traj = simulate(x0, v0, params["frames"], r, box)
    video = render(traj.positions, params["size"], r, box)
    return video[..., None], traj


def label(
    positions: np.ndarray, video: np.ndarray, params: Mapping[str, Any], *, flow: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Masks uint8 (N, T, H, W), flow float16 (N, T - 1, H, W, 2) or None, and visible fractions (N, T, n)
    for the rendered videos (N, T, H, W) of world positions (N, T, n, 2); see `kernels.label_frames`."""
    res, r, box = params["size"], params["radius"], params["box"]
    N, T, n, _ = positions.shape
    scale = res / box
    mask = np.empty((N, T, res, res), np.uint8)
    disp = ((positions[:, 1:] - positions[:, :-1]) * scale).astype(np.float16).view(np.uint16)  # px per frame
    flow16 = np.empty((N, T - 1, res, res, 2) if flow else (0, 0, 0, 0, 2), np.uint16)  # float16 bits
    alone, visible = np.empty((N, T, n), np.int64), np.empty((N, T, n), np.int64)
    q_zero = math.log(255 * n / ZERO_MARGIN) ** 0.25
    kernels.label_frames(
        np.ascontiguousarray(positions, dtype=np.float64),
        video,
        pixel_centres(res, box),
        scale,
        r * r,
        Q_CAP / 2,
        q_zero,
        disp,
        mask,
        flow16,
        alone,
        visible,
    )
    fraction = np.divide(visible, alone, out=np.zeros((N, T, n)), where=alone > 0)
    return mask, flow16.view(np.float16) if flow else None, fraction


def event_lists(table: np.ndarray, params: Mapping[str, Any], indices: range) -> list[list[dict[str, Any]]]:
    """Per sample, its events as JSON data: {frame, kind, objects, position [x, y] in pixels}."""
    scale = params["size"] / params["box"]
    lists: list[list[dict[str, Any]]] = [[] for _ in indices]
    for k, t, kind, i, j, x, y in table.tolist():
        objects = [int(i)] if j < 0 else [int(i), int(j)]
        position = [round(x * scale - 0.5, META_DECIMALS), round(y * scale - 0.5, META_DECIMALS)]
        lists[int(k)].append(
            {"frame": int(t), "kind": EVENT_KINDS[int(kind)], "objects": objects, "position": position}
        )
    return lists


def ground_truth(params: Mapping[str, Any], traj: Trajectories, indices: range) -> list[dict[str, Any]]:
    """Per-sample `meta`: positions and velocities in pixels (x = column, y = row), radius in pixels."""
    scale = params["size"] / params["box"]
    positions = np.round(traj.positions * scale - 0.5, META_DECIMALS)
    velocities = np.round(traj.velocities * scale, META_DECIMALS)
    positions.flags.writeable = velocities.flags.writeable = False  # shared by the batch's metas
    n_balls, radius_px = params["n_balls"], round(params["radius"] * scale, META_DECIMALS)
    return [
        {"index": i, "n_balls": n_balls, "radius_px": radius_px, "positions": p, "velocities": v}
        for i, p, v in zip(indices, positions, velocities, strict=True)
    ]


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
        accepted += kernels.count_placed(cand, float(radius), float(box))
        done += k
    return accepted / tries


LABELLED_FIELDS = frozenset({"mask", "flow", "visibility"})
"""Fields that need the per-pixel labelling pass (`label`)."""


def attach_ground_truth(
    meta: dict[str, Any],
    wanted: Any,
    k: int,
    masks: np.ndarray | None,
    flows: np.ndarray | None,
    events: list[Any] | None,
    fractions: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Sample k's array fields (mask, flow); its events and visible fractions (this sample's, (T, n)) go into
    `meta`, each only when asked."""
    fields: dict[str, np.ndarray] = {}
    if "mask" in wanted:
        fields["mask"] = masks[k]
    if flows is not None:
        fields["flow"] = flows[k]
    if events is not None:
        meta["events"] = events[k]
    if "visibility" in wanted:
        meta["visibility"] = np.round(fractions, META_DECIMALS)
    return fields


class BallsGenerator:
    """The `balls` generator: params {n_balls, frames, size (pixels), radius and box (world units)}, and the
    variants {min_balls, min_radius, masses, gravity, damping, restitution, colors, occluder}
    (`datagen.sim.balls_variants`, recorded only when on: then `n_balls` and `radius` are the largest).

    Version 2 encodes `meta` with orjson; version 1 wrote Python's `json` text, which differs for numbers
    below 1e-4 (`5e-05` against `0.00005`). Clips and values are the same in both.
    """

    name = "balls"
    version = "2"
    fields = FIELDS

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        p = with_defaults("balls", DEFAULTS, dict(params))
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
        return bv.validate_variant(p)

    def sample_shape(self, params: Mapping[str, Any]) -> tuple[int, int, int, int]:
        """(T, H, W, C); also refuses fields these params cannot make (asked before anything is written)."""
        bv.check_fields(params, requested_fields(params))
        return (params["frames"], params["size"], params["size"], 3 if params.get("colors") else 1)

    def generate(self, params: Mapping[str, Any], seed: int, start: int, stop: int) -> Iterator[Sample]:
        per_video = params["frames"] * (params["size"] ** 2 + 64 * params["n_balls"])
        batch = max(1, min(BATCH, BATCH_BYTES // per_video))
        wanted = requested_fields(params)
        if bv.is_variant(params):
            per_video = params["frames"] * (params["size"] ** 2 * 8 + 64 * params["n_balls"])
            batch = max(1, min(BATCH, FIELDS_BATCH_BYTES // per_video))
            for lo in range(start, stop, batch):
                yield from bv.generate_variant(params, seed, range(lo, min(lo + batch, stop)), wanted)
            return
        if len(wanted) > 1:
            yield from self._generate_fields(params, seed, start, stop, wanted)
            return
        for lo in range(start, stop, batch):
            indices = range(lo, min(lo + batch, stop))
            videos, traj = simulate_balls(params, seed, indices)
            for i, video, meta in zip(indices, videos, ground_truth(params, traj, indices), strict=True):
                yield Sample(sample_key(i), video, meta)

    def _generate_fields(
        self, params: Mapping[str, Any], seed: int, start: int, stop: int, wanted: frozenset[str]
    ) -> Iterator[Sample]:
        """The same clips and meta, plus the requested fields (masks and flow as arrays, events and
        visible fractions as meta keys `events`, `visibility` [T][n])."""
        n, r, box, frames = params["n_balls"], params["radius"], params["box"], params["frames"]
        per_video = frames * (params["size"] ** 2 * 6 + 64 * n)  # video, mask, flow (4 bytes a pixel)
        batch = max(1, min(BATCH, FIELDS_BATCH_BYTES // per_video))
        for lo in range(start, stop, batch):
            indices = range(lo, min(lo + batch, stop))
            x0, v0 = initial_states(n, r, box, seed, indices)
            traj, table = simulate_with_events(x0, v0, frames, r, box, events="events" in wanted)
            videos = render(traj.positions, params["size"], r, box)
            masks = flows = fractions = None
            if wanted & LABELLED_FIELDS:  # events alone need no labelling
                masks, flows, fractions = label(traj.positions, videos, params, flow="flow" in wanted)
            metas = ground_truth(params, traj, indices)
            events = event_lists(table, params, indices) if "events" in wanted else None
            for k, (i, meta) in enumerate(zip(indices, metas, strict=True)):
                visible = fractions[k] if fractions is not None else None
                fields = attach_ground_truth(meta, wanted, k, masks, flows, events, visible)
                yield Sample(sample_key(i), videos[k][..., None], meta, fields)


BALLS = BallsGenerator()
