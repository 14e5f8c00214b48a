"""Bouncing-balls variants (issue 17): masses, gravity, damping, wall restitution, per-ball radius, a per-clip
ball count, colours and an occluding curtain.

Every option is off by default, and an option at its off value is dropped from the validated params, so a
run without options has the plain generator's params, clips and digests (`datagen.sim.balls`, whose fast
kernels it keeps). With any option on, `generate_variant` runs the general kernels of
`datagen.sim._balls_variants` (draw order and physics in its docstring). Options (params keys):

- `min_balls` (CLI `--balls LO-HI`): the clip's ball count is uniform in [min_balls, n_balls]; arrays keep
  their fixed shapes, meta `n_balls` is the clip's count and its trajectories list that many balls; mask ids
  are 1..count. Velocities are normalised as the default's: the whole (count, 2) array has norm 0.5.
- `min_radius` (`--radius LO-HI`): each ball's radius is uniform in [min_radius, radius] (world units); it
  sets the ball's rendering (q = d^2 / r_i^2) and its collision distance r_i + r_j; positions are redrawn
  until every ball lies inside the box with its own radius and no pair is closer than r_i + r_j. Meta
  `radius_px` is then a per-ball list.
- `masses` [lo, hi] (`--masses LO-HI`): each ball's mass is uniform in [lo, hi]; collisions are elastic for
  unequal masses (momentum and kinetic energy conserved). Meta `masses` lists them.
- `gravity` g (`--gravity`, world units per frame^2, box side 10): a constant acceleration towards +y (down
  the rows), integrated per sub-step (`v += eps g`, then `x += eps v`), so the positions sampled at frames lie
  exactly on a parabola with second difference g between bounces.
- `damping` d in [0, 1) (`--damping`): every velocity is multiplied by 1 - d once per frame, after the
  frame's sub-steps (air drag; collisions stay elastic).
- `restitution` e in (0, 1] (`--restitution`): at a wall, the normal velocity component of a ball moving
  into it is reversed and multiplied by e (kinetic energy lost at walls only; 1 = the default's bounce).
- `colors` "palette" | "random" (`--colors`): RGB clips (T, H, W, 3); ball i's colour is one of the 8
  colours of `PALETTE` or a fully saturated random hue, every colour with a channel at 255, so each channel
  is rint(255 min(1, sum_i exp(-q_i^4) colour_i)) and a pixel is dark in all channels exactly where the grey
  clip would be. Meta `colors` lists them (RGB 0..255).
- `occluder` [lo, hi] (`--occluder LO-HI`, fractions of the frame width): a vertical curtain over the
  columns whose centres (col + 0.5) / size lie in [lo, hi), drawn in front of the balls at 255 in every
  channel (a curtain balls pass behind, as in R-NEM's occlusion experiments, van Steenkiste et al. 2018;
  its place and colour here are ours). In masks its pixels get the id `OCCLUDER_ID` (255) and flow 0; a
  ball behind it is not visible there (its visible fraction drops). No draws: trajectories are unchanged.

Collisions in the variant physics apply only to pairs that approach each other (the default generator also
collides overlapping pairs that already separate, which can make them stick; that rule is kept there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from datagen.errors import DatagenError
from datagen.sim import _balls_variants as kv
from datagen.sim._balls_kernels import EVENT_FIELDS, entropy_words
from datagen.sim.balls_reference import EPS, pixel_centres
from datagen.sim.mnist_variants import PALETTE, hue_colors
from datagen.store.sample import Sample, sample_key

VARIANT_DEFAULTS: dict[str, Any] = {
    "min_balls": None,
    "min_radius": None,
    "masses": None,
    "gravity": 0.0,
    "damping": 0.0,
    "restitution": 1.0,
    "colors": None,
    "occluder": None,
}
"""Variant params at their off values (then dropped by `validate_variant`)."""
COLOR_MODES = ("palette", "random")
OCCLUDER_ID = kv.OCCLUDER_ID
OCCLUDER_VALUE = 255
MAX_GRAVITY = 1.0
MAX_MASS_RATIO = 1e6
MAX_TRIES = 1_000_000


@dataclass(frozen=True)
class Variant:
    """The variant options of validated params (absent keys: off)."""

    n_min: int
    n_max: int
    r_lo: float
    r_hi: float
    masses: tuple[float, float] | None
    gravity: float
    damping: float
    restitution: float
    colors: str | None
    occluder: tuple[float, float] | None

    @classmethod
    def of(cls, p: Mapping[str, Any]) -> Variant:
        masses, occluder = p.get("masses"), p.get("occluder")
        return cls(
            n_min=p.get("min_balls", p["n_balls"]),
            n_max=p["n_balls"],
            r_lo=p.get("min_radius", p["radius"]),
            r_hi=p["radius"],
            masses=None if masses is None else (masses[0], masses[1]),
            gravity=p.get("gravity", 0.0),
            damping=p.get("damping", 0.0),
            restitution=p.get("restitution", 1.0),
            colors=p.get("colors"),
            occluder=None if occluder is None else (occluder[0], occluder[1]),
        )

    @property
    def channels(self) -> int:
        return 3 if self.colors else 1

    def occluder_columns(self, size: int) -> tuple[int, int]:
        """[first, end) columns of the curtain: those whose centre (col + 0.5) / size is in [lo, hi)."""
        if self.occluder is None:
            return 0, 0
        lo, hi = self.occluder
        return max(0, math.ceil(lo * size - 0.5)), min(size, max(0, math.ceil(hi * size - 0.5)))


def is_variant(params: Mapping[str, Any]) -> bool:
    return any(key in params for key in VARIANT_DEFAULTS)


# --- validation ---------------------------------------------------------------------------------------------


def _number(p: dict[str, Any], key: str) -> float:
    value = p[key]
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value):
        raise DatagenError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _range(p: dict[str, Any], key: str) -> tuple[float, float]:
    value = p[key]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise DatagenError(f"{key} must be a range [lo, hi] of finite numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi:
        raise DatagenError(f"{key} must have lo <= hi, got {lo:g}-{hi:g}")
    return lo, hi


def validate_variant(p: dict[str, Any]) -> dict[str, Any]:
    """Check the variant keys of `p` (base keys already checked) in place; drop those at their off value."""
    _validate_count_and_radius(p)
    if p.get("masses") is not None:
        lo, hi = _range(p, "masses")
        if not (lo > 0 and hi <= lo * MAX_MASS_RATIO):
            raise DatagenError(
                f"masses must satisfy 0 < lo <= hi <= {MAX_MASS_RATIO:g} lo, got {lo:g}-{hi:g}"
            )
        p["masses"] = [lo, hi]
    for key, ok, what in (
        (
            "gravity",
            lambda g: abs(g) <= MAX_GRAVITY,
            f"in [-{MAX_GRAVITY:g}, {MAX_GRAVITY:g}] box units/frame^2",
        ),
        ("damping", lambda d: 0 <= d < 1, "in [0, 1) (velocity lost per frame)"),
        ("restitution", lambda e: 0 < e <= 1, "in (0, 1] (normal speed kept at a wall)"),
    ):
        if key in p:
            value = _number(p, key)
            if not ok(value):
                raise DatagenError(f"{key} must be {what}, got {value:g}")
            p[key] = value
    if p.get("colors") is not None and p["colors"] not in COLOR_MODES:
        raise DatagenError(f"colors must be one of {', '.join(COLOR_MODES)}, got {p['colors']!r}")
    if p.get("occluder") is not None:
        lo, hi = _range(p, "occluder")
        p["occluder"] = [lo, hi]
        if not 0 <= lo < hi <= 1:
            raise DatagenError(
                f"occluder must satisfy 0 <= lo < hi <= 1 (fractions of the width), got {p['occluder']}"
            )
        first, end = Variant.of(p).occluder_columns(p["size"])
        if first >= end:
            raise DatagenError(f"occluder {lo:g}-{hi:g} covers no pixel column of a {p['size']} px frame")
    for key, off in VARIANT_DEFAULTS.items():
        if key in p and p[key] == off:
            del p[key]
    return p


def _validate_count_and_radius(p: dict[str, Any]) -> None:
    if p.get("min_balls") is not None:
        m = p["min_balls"]
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= m <= p["n_balls"]:
            raise DatagenError(f"min_balls must be an integer in [1, n_balls = {p['n_balls']}], got {m!r}")
        p["min_balls"] = None if m == p["n_balls"] else int(m)
    if p.get("min_radius") is not None:
        r = _number(p, "min_radius")
        if not 0 < r <= p["radius"]:
            raise DatagenError(f"min_radius must be in (0, radius = {p['radius']:g}], got {r:g}")
        p["min_radius"] = None if r == p["radius"] else r


def check_fields(params: Mapping[str, Any], fields: frozenset[str]) -> None:
    """Refuse fields these params cannot make (mask ids are uint8; the curtain takes id 255)."""
    most = OCCLUDER_ID - 1 if "occluder" in params else 255
    if "mask" in fields and params["n_balls"] > most:
        raise DatagenError(
            f"mask ids are uint8: at most {most} balls with these options, got {params['n_balls']}"
        )
    if "flow" in fields and params["frames"] < 2:
        raise DatagenError(f"flow needs at least 2 frames, got {params['frames']}")


# --- generation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """A batch of variant clips: trajectories (N, T, n, 2) world units, per-sample counts and per-ball
    radii, masses (N, n), colours (N, n, 3) uint8 or None, and the physics' event table."""

    positions: np.ndarray
    velocities: np.ndarray
    counts: np.ndarray
    radii: np.ndarray
    masses: np.ndarray
    colors: np.ndarray | None
    events: np.ndarray


def simulate_batch(
    params: Mapping[str, Any], seed: int, indices: range, *, events: bool, approach_only: bool = True
) -> Batch:
    """Draw and simulate the given samples (approach_only=False: the default's collision rule, for tests)."""
    v = Variant.of(params)
    index_array = np.asarray(indices, dtype=np.uint64).reshape(-1)
    N, n, box = index_array.size, v.n_max, params["box"]
    counts, tries = np.empty(N, np.int64), np.empty(N, np.int64)
    radii, masses, color_u = np.empty((N, n)), np.empty((N, n)), np.empty((N, n))
    raw_v, x0 = np.empty((N, n, 2)), np.empty((N, n, 2))
    m_lo, m_hi = v.masses if v.masses else (0.0, 0.0)
    failed = kv.variant_draws(
        entropy_words(seed), index_array, v.n_min, v.r_lo, v.r_hi, box, m_lo, m_hi, v.colors is not None,
        MAX_TRIES, counts, radii, raw_v, x0, masses, color_u, tries,
    )  # fmt: skip
    if failed >= 0:
        raise DatagenError(
            f"sample {int(index_array[failed])}: could not place {int(counts[failed])} balls of radii up to "
            f"{v.r_hi} in a box of {box} after {int(tries[failed])} tries; use fewer or smaller balls"
        )
    v0 = raw_v / np.sqrt((raw_v**2).sum(axis=(1, 2)))[:, None, None] * 0.5  # the default's normalisation
    frames = params["frames"]
    X, V = np.empty((N, frames, n, 2)), np.empty((N, frames, n, 2))
    table = np.empty((N * frames * n if events else 0, EVENT_FIELDS))
    while True:
        count = kv.simulate(
            x0, v0, counts, radii, masses, float(box), EPS, int(1 / EPS), v.gravity, v.damping,
            v.restitution, approach_only, X, V, table,
        )  # fmt: skip
        if count <= table.shape[0]:
            break
        table = np.empty((count, table.shape[1]))
    colors = None
    if v.colors is not None:
        colors = PALETTE[np.minimum((color_u * len(PALETTE)).astype(np.int64), len(PALETTE) - 1)]
        if v.colors == "random":
            colors = hue_colors(color_u)
    return Batch(X, V, counts, radii, masses, colors, table[:count])


def render_batch(b: Batch, params: Mapping[str, Any]) -> np.ndarray:
    """uint8 clips (N, T, H, W, C) of a simulated batch."""
    from datagen.sim.balls import Q_CAP, Q_SKIP, ZERO_MARGIN

    v = Variant.of(params)
    N, T, n, _ = b.positions.shape
    res, box = params["size"], params["box"]
    out = np.zeros((N, T, res, res, v.channels), np.uint8)
    tint = np.ones((N, n, 1)) if b.colors is None else b.colors / 255.0
    q_zero = math.log(255 * n / ZERO_MARGIN) ** 0.25
    ranges, offsets = np.zeros((N, T, n, 4), np.int64), np.zeros((N, T, n), np.int64)
    total = kv.boxes(b.positions, b.counts, b.radii, res / box, q_zero, Q_SKIP, res, ranges, offsets)
    terms = np.empty(total)
    kv.box_exponents(
        b.positions, b.counts, b.radii, pixel_centres(res, box), Q_CAP / 2, ranges, offsets, terms
    )
    np.exp(terms, out=terms)  # numpy's exp, as the default renderer's
    occluder = np.array(v.occluder_columns(res), np.int64)
    kv.render(terms, b.counts, ranges, offsets, tint, occluder, np.uint8(OCCLUDER_VALUE), out)
    return out


def label_batch(
    b: Batch, video: np.ndarray, params: Mapping[str, Any], *, flow: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Masks (N, T, H, W), flow float16 (N, T - 1, H, W, 2) or None, visible fractions (N, T, n)."""
    from datagen.sim.balls import Q_CAP, ZERO_MARGIN

    v = Variant.of(params)
    N, T, n, _ = b.positions.shape
    res, box = params["size"], params["box"]
    scale = res / box
    mask = np.empty((N, T, res, res), np.uint8)
    disp = ((b.positions[:, 1:] - b.positions[:, :-1]) * scale).astype(np.float16).view(np.uint16)
    flow16 = np.empty((N, T - 1, res, res, 2) if flow else (0, 0, 0, 0, 2), np.uint16)
    alone, visible = np.zeros((N, T, n), np.int64), np.zeros((N, T, n), np.int64)
    q_zero = math.log(255 * n / ZERO_MARGIN) ** 0.25
    kv.label(
        b.positions, b.counts, b.radii, video, pixel_centres(res, box), scale, Q_CAP / 2, q_zero,
        np.array(v.occluder_columns(res), np.int64), disp, mask, flow16, alone, visible,
    )  # fmt: skip
    fraction = np.divide(visible, alone, out=np.zeros((N, T, n)), where=alone > 0)
    return mask, flow16.view(np.float16) if flow else None, fraction


def generate_variant(
    params: Mapping[str, Any], seed: int, indices: range, wanted: frozenset[str]
) -> list[Sample]:
    """The samples of `indices` with the variant options of `params` and the requested fields."""
    from datagen.sim.balls import LABELLED_FIELDS, META_DECIMALS, attach_ground_truth, event_lists

    b = simulate_batch(params, seed, indices, events="events" in wanted)
    video = render_batch(b, params)
    labelled = bool(wanted & LABELLED_FIELDS)
    masks, flows, fractions = (
        label_batch(b, video, params, flow="flow" in wanted) if labelled else (None,) * 3
    )
    events = event_lists(b.events, params, indices) if "events" in wanted else None
    scale = params["size"] / params["box"]
    positions = np.round(b.positions * scale - 0.5, META_DECIMALS)
    velocities = np.round(b.velocities * scale, META_DECIMALS)
    radii_px = np.round(b.radii * scale, META_DECIMALS)
    per_ball = "min_radius" in params
    out = []
    for k, i in enumerate(indices):
        n = int(b.counts[k])
        meta: dict[str, Any] = {
            "index": i,
            "n_balls": n,
            "radius_px": radii_px[k, :n] if per_ball else round(params["radius"] * scale, META_DECIMALS),
            "positions": positions[k, :, :n],
            "velocities": velocities[k, :, :n],
        }
        if "masses" in params:
            meta["masses"] = np.round(b.masses[k, :n], META_DECIMALS)
        if b.colors is not None:
            meta["colors"] = b.colors[k, :n].astype(np.int64)
        visible = fractions[k, :, :n] if fractions is not None else None
        fields = attach_ground_truth(meta, wanted, k, masks, flows, events, visible)
        out.append(Sample(sample_key(i), video[k], meta, fields))
    return out
