"""Moving MNIST variants and ground-truth fields: stochastic bounce, rotation, scale, colour, masks, flow.

Every option is off by default and then leaves the Srivastava et al. generator (`datagen.sim.mnist`) byte for
byte as it was. An option's randomness comes from the same per-sample stream as the base draws: after the
start positions, angles and digit ids, sample i draws `rng.random(k)` once, where k and the layout of those
k uniforms depend only on the options switched on (`Variant.n_draws`), in this order:

1. rotation: per digit the angular velocity omega ~ U[-rotation, rotation] degrees per frame; angle(t) =
   omega * t (upright in frame 0).
2. scale: per digit a phase phi ~ U[0, 2 pi); scale(t) = mid + amp * sin(phi + 2 pi t / scale_period), with
   mid and amp the centre and half-width of the [lo, hi] range: a smooth oscillation inside the range.
3. colors: per digit one uniform: a colour of `PALETTE` (`palette`) or a fully saturated hue (`random`).
4. bounce "random": per frame, digit, axis (y, x) two uniforms (normal, tangent), used only at a wall hit.

Stochastic bounce follows SVG's loader (Denton & Fergus 2018, edenton/svg data/moving_mnist.py,
`deterministic=False`): at a wall hit the component normal to that wall is redrawn from {1, 2, 3, 4} steps
away from the wall and the other component from {-4, ..., 4}, both in quarters of the maximum step (SVG's
integer pixels, max 4 px with 64 px frames and 32 px digits, i.e. 0.125 of its free range; here `speed` is the
maximum per-axis step, as a fraction of the free range). Where we differ from that code, on purpose: the start
direction is Srivastava's unit vector (SVG draws integer components in {-4..4}, so a digit may stand still);
positions keep Srivastava's [0, 1] scaling and clamp; in a corner (both walls in one frame) both components
point away from their walls (SVG's x-wall redraw overwrites the y-wall's, and the digit may head back out).

Rotation and scale are rendered by inverse mapping with bilinear interpolation about the digit box's
centre (`centre = top_left + (h, w) / 2`, pixel (r, c) at (r + 0.5, c + 0.5)); angle 0 and scale 1 reproduce
the plain paste exactly. Positive angles turn the digit counter-clockwise on screen. A digit scaled past its
box may leave the canvas; what falls outside is cut.

Ground truth (`--fields`): `mask` gives each pixel to the digit with the largest ink there (ties to the
later digit, the one drawn on top; under `overlap max` the digit whose value is kept), 0 where the stored
bytes are 0; `flow` is each digit's exact motion between frames t and t + 1 at the pixel centres of its mask
in frame t (x = column, y = row): the difference of the integer top-left corners for plain digits, the affine
map `centre' + s' R' (R^-1 (p - centre) / s) - p` for rotating or scaling ones; `visibility` per frame and
digit is the digit's mask pixels over the pixels it would cover alone; `events` lists each wall hit as
{frame, kind: "wall", objects: [digit], axis: "y" | "x", position: top-left [y, x]}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, uint64

from datagen.errors import DatagenError

BOUNCES = ("reflect", "random")
COLOR_MODES = ("palette", "random")
PALETTE = np.array(
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [255, 128, 0],
        [128, 0, 255],
    ],
    np.uint8,
)
"""Every colour has a channel at 255, so a pixel with ink is never stored as 0 (masks stay exact)."""
MAX_ROTATION = 180.0
SCALE_RANGE = (0.25, 2.0)
MAX_MASK_DIGITS = 255  # mask ids are uint8: 0 and 1..255


@dataclass(frozen=True)
class Variant:
    """The variant options of a validated params dict (absent keys: off)."""

    bounce: str = "reflect"
    rotation: float = 0.0
    scale: tuple[float, float] | None = None
    scale_period: float = 20.0
    colors: str | None = None

    @classmethod
    def of(cls, params: dict[str, Any]) -> Variant:
        scale = params.get("scale")
        return cls(
            bounce=params.get("bounce", "reflect"),
            rotation=params.get("rotation", 0.0),
            scale=None if scale is None else (scale[0], scale[1]),
            scale_period=params.get("scale_period", 20.0),
            colors=params.get("colors"),
        )

    @property
    def affine(self) -> bool:
        return self.rotation > 0 or self.scale is not None

    @property
    def upright(self) -> bool:
        """Pasted row by row (no rotation or scale; grey or coloured)."""
        return not self.affine

    def n_draws(self, frames: int, digits: int) -> int:
        """Uniforms sample i draws after its base draws (0: the stream is exactly the original one)."""
        per_digit = (self.rotation > 0) + (self.scale is not None) + (self.colors is not None)
        return digits * per_digit + (frames * digits * 4 if self.bounce == "random" else 0)

    def split(self, u: np.ndarray, frames: int, digits: int) -> dict[str, np.ndarray]:
        """Cut the (n, k) uniforms into named (n, ...) blocks in the documented order."""
        out, at = {}, 0
        for name, on, size in (
            ("rotation", self.rotation > 0, digits),
            ("scale", self.scale is not None, digits),
            ("colors", self.colors is not None, digits),
            ("bounce", self.bounce == "random", frames * digits * 4),
        ):
            if on:
                out[name] = u[:, at : at + size]
                at += size
        if "bounce" in out:
            out["bounce"] = out["bounce"].reshape(len(u), frames, digits, 2, 2)
        return out


# --- validation ----------------------------------------------------------------------------------------


def _number(p: dict[str, Any], key: str) -> float:
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise DatagenError(f"{key} must be a finite number, got {v!r}")
    return float(v)


def validate_variant(p: dict[str, Any]) -> dict[str, Any]:
    """Check the variant keys of `p` in place; an option at its off value is dropped, so the params (and the
    dataset's record and digest) of a run without options are those of the plain generator."""
    if p.get("bounce", "reflect") not in BOUNCES:
        raise DatagenError(f"bounce must be one of {', '.join(BOUNCES)}, got {p['bounce']!r}")
    if p.get("bounce") == "reflect":
        del p["bounce"]
    if "rotation" in p:
        rot = _number(p, "rotation")
        if not 0 <= rot <= MAX_ROTATION:
            raise DatagenError(f"rotation must be in [0, {MAX_ROTATION:g}] degrees per frame, got {rot:g}")
        p["rotation"] = rot
        if rot == 0:
            del p["rotation"]
    _validate_scale(p)
    if p.get("colors") is not None and p["colors"] not in COLOR_MODES:
        raise DatagenError(f"colors must be one of {', '.join(COLOR_MODES)}, got {p['colors']!r}")
    if "colors" in p and p["colors"] is None:
        del p["colors"]
    return p


def _validate_scale(p: dict[str, Any]) -> None:
    lo_ok, hi_ok = SCALE_RANGE
    scale = p.get("scale")
    if scale is not None:
        if (
            not isinstance(scale, list | tuple)
            or len(scale) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scale)
        ):
            raise DatagenError(f"scale must be a range [lo, hi], got {scale!r}")
        lo, hi = float(scale[0]), float(scale[1])
        if not (lo_ok <= lo <= hi <= hi_ok):
            raise DatagenError(f"scale must satisfy {lo_ok:g} <= lo <= hi <= {hi_ok:g}, got {lo:g}-{hi:g}")
        p["scale"] = [lo, hi]
        if lo == hi == 1.0:
            scale = None
    if scale is None:
        p.pop("scale", None)
        if "scale_period" in p and p.get("scale_period") is not None:
            raise DatagenError("scale_period needs a scale range (--scale lo-hi)")
        p.pop("scale_period", None)
        return
    period = 20.0 if p.get("scale_period") is None else _number(p, "scale_period")
    if period <= 0:
        raise DatagenError(f"scale_period must be > 0 frames, got {period:g}")
    p["scale_period"] = period


def parse_range(text: str, what: str) -> list[float]:
    """`"0.5-1.5"` (or one number) -> [lo, hi]; a one-line DatagenError otherwise."""
    parts = text.split("-")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise DatagenError(f"{what} must be LO-HI or one number, e.g. 0.6-1.4, got {text!r}") from None
    if len(values) not in (1, 2):
        raise DatagenError(f"{what} must be LO-HI or one number, e.g. 0.6-1.4, got {text!r}")
    return [values[0], values[-1]]


# --- trajectories ---------------------------------------------------------------------------------------


def trajectories(variant: Variant, draws: dict[str, np.ndarray], n: int, frames: int, digits: int):
    """Per-frame angles (degrees) and scales, (n, T, D) each, and colours (n, D, 3) uint8 or None."""
    t = np.arange(frames, dtype=np.float64)[None, :, None]
    angles = np.zeros((n, frames, digits))
    if "rotation" in draws:
        omega = (2 * draws["rotation"] - 1) * variant.rotation
        angles = omega[:, None, :] * t
    scales = np.ones((n, frames, digits))
    if "scale" in draws:
        lo, hi = variant.scale
        phase = draws["scale"] * (2 * np.pi)
        scales = (lo + hi) / 2 + (hi - lo) / 2 * np.sin(
            phase[:, None, :] + 2 * np.pi * t / variant.scale_period
        )
    colors = None
    if "colors" in draws:
        colors = (
            palette_colors(draws["colors"]) if variant.colors == "palette" else hue_colors(draws["colors"])
        )
    return angles, scales, colors


def palette_colors(u: np.ndarray) -> np.ndarray:
    return PALETTE[np.minimum((u * len(PALETTE)).astype(np.int64), len(PALETTE) - 1)]


def hue_colors(u: np.ndarray) -> np.ndarray:
    """HSV (u, 1, 1) as RGB uint8: one channel is always 255."""
    h6 = u * 6
    sector = np.minimum(h6.astype(np.int64), 5)
    f = h6 - sector
    one, zero = np.ones_like(f), np.zeros_like(f)
    table = np.stack(
        [
            np.stack([one, f, zero], -1),
            np.stack([1 - f, one, zero], -1),
            np.stack([zero, one, f], -1),
            np.stack([zero, 1 - f, one], -1),
            np.stack([f, zero, one], -1),
            np.stack([one, zero, 1 - f], -1),
        ]
    )  # (6, ..., 3)
    rgb = np.take_along_axis(table, sector[None, ..., None], axis=0)[0]
    return np.rint(rgb * 255).astype(np.uint8)


# --- stochastic bounce ----------------------------------------------------------------------------------


def bounce_random(
    start: np.ndarray, theta: np.ndarray, frames: int, speed: float, kicks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions and velocities (frames, ..., 2) as `datagen.sim.mnist.bounce`, but a wall hit redraws the
    velocity as SVG's loader does (module docstring); also returns the hits (frames, ..., 2) bool.

    `start` is (n, D, 2) and `kicks` (n, frames, D, 2 axes, 2) uniforms (normal, tangent) in [0, 1), as
    `Variant.split` cuts them.
    """
    pos = np.array(start, dtype=np.float64)
    vel = np.stack([np.sin(theta), np.cos(theta)], axis=-1)
    k = np.moveaxis(kicks, 1, 0)  # (frames, n, D, 2, 2)
    normal = (1 + np.floor(4 * k[..., 0])) / 4  # {1, 2, 3, 4} quarters
    tangent = (np.floor(9 * k[..., 1]) - 4) / 4  # {-4, ..., 4} quarters
    positions, velocities = np.empty((frames, *pos.shape)), np.empty((frames, *pos.shape))
    hits = np.empty((frames, *pos.shape), bool)
    for t in range(frames):
        pos += vel * speed
        low, high = pos <= 0, pos >= 1
        pos[low], pos[high] = 0.0, 1.0
        hit = low | high
        away = np.where(low, 1.0, -1.0) * normal[t]
        hy, hx = hit[..., 0], hit[..., 1]
        vy = np.where(hy, away[..., 0], np.where(hx, tangent[t][..., 1], vel[..., 0]))
        vx = np.where(hx, away[..., 1], np.where(hy, tangent[t][..., 0], vel[..., 1]))
        vel = np.stack([vy, vx], axis=-1)
        positions[t], velocities[t], hits[t] = pos, vel, hit
    return positions, velocities, hits


def wall_hits(positions: np.ndarray) -> np.ndarray:
    """Srivastava's rule clamps exactly at 0 and 1: a hit is a coordinate on a wall (frames, ..., 2)."""
    return (positions == 0) | (positions == 1)


def events_of(hits: np.ndarray, top_left: np.ndarray) -> list[dict[str, Any]]:
    """One sample's wall events from hits (T, D, 2) and top-left corners (T, D, 2), frame by frame."""
    out = []
    for t, d, a in zip(*np.nonzero(hits), strict=True):
        out.append(
            {
                "frame": int(t),
                "kind": "wall",
                "objects": [int(d)],
                "axis": "yx"[a],
                "position": [int(top_left[t, d, 0]), int(top_left[t, d, 1])],
            }
        )
    return out


# --- rendering ------------------------------------------------------------------------------------------


def render_general(
    images: np.ndarray,
    ids: np.ndarray,
    top_left: np.ndarray,
    angles: np.ndarray,
    scales: np.ndarray,
    colors: np.ndarray | None,
    size: int,
    overlap_mode: int,
    want_flow: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Videos (n, T, H, W, C), masks (n, T, H, W) uint8, visible fractions (n, T, D), flow or None.

    `top_left` (n, T, D, 2) int; `angles` (degrees) and `scales` (n, T, D); `colors` (n, D, 3) or None.
    """
    n, frames, digits, _ = top_left.shape
    h, w = images.shape[1:]
    centre = top_left + np.array([h / 2, w / 2])
    rad = np.deg2rad(angles)
    channels = 1 if colors is None else 3
    cols = np.full((n, digits, 1), 255.0) if colors is None else colors.astype(np.float64)
    video = np.empty((n, frames, size, size, channels), np.uint8)
    mask = np.empty((n, frames, size, size), np.uint8)
    alone = np.zeros((n, frames, digits), np.int64)
    seen = np.zeros((n, frames, digits), np.int64)
    best = np.empty((size, size), np.uint8)
    _render_kernel(
        video, mask, alone, seen, best, np.ascontiguousarray(images), ids, ink_reach(images, ids),
        centre, np.cos(rad), np.sin(rad), scales, cols, overlap_mode, colors is not None,
    )  # fmt: skip
    visible = np.where(alone > 0, seen / np.maximum(alone, 1), 0.0)
    flow = None
    if want_flow:
        flow = np.empty((n, max(frames - 1, 0), size, size, 2), np.float16)
        _flow_kernel(flow.view(np.uint16), mask, centre, np.cos(rad), np.sin(rad), scales)
    return video, mask, visible, flow


def plain_fields(
    images: np.ndarray, ids: np.ndarray, top_left: np.ndarray, size: int, want_flow: bool, want_visible: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Masks, visible fractions and flow of upright unscaled digits (the video comes from `composite`): the
    same values as `render_general`, by kernels that work row by row like `composite` (several times faster).
    """
    n, frames, digits, _ = top_left.shape
    mask = np.empty((n, frames, size, size), np.uint8)
    _plain_mask_kernel(mask, np.empty(size * size, np.uint8), np.ascontiguousarray(images), ids, top_left)
    visible = None
    if want_visible:
        alone = np.count_nonzero(images[ids], axis=(2, 3))  # (n, D): a plain digit lies inside the canvas
        seen = np.zeros((n, frames, digits), np.int64)
        _box_counts(seen, mask, top_left, images.shape[1], images.shape[2])
        visible = np.where(alone[:, None, :] > 0, seen / np.maximum(alone[:, None, :], 1), 0.0)
    flow = None
    if want_flow:
        step = np.diff(top_left, axis=1)  # (n, T - 1, D, 2) as (y, x): whole pixels, exact in float16
        table = np.zeros((n, max(frames - 1, 0), digits + 1, 2), np.float16)
        table[:, :, 1:] = step[..., ::-1]  # (x, y); id 0 (background) stays 0
        flow = np.empty((n, max(frames - 1, 0), size, size, 2), np.float16)
        _gather_flow(flow.view(np.uint32), mask, table.view(np.uint32))
    return mask, visible, flow


def tinted_composite(
    images: np.ndarray, ids: np.ndarray, top_left: np.ndarray, colors: np.ndarray, size: int, mode: int
) -> np.ndarray:
    """Coloured upright digits (n, T, H, W, 3): `composite` channel by channel through a per-digit table
    ink -> round(ink * colour / 255), the same values as `render_general`'s."""
    n, frames = top_left.shape[:2]
    ink = np.arange(256, dtype=np.float64)[:, None]
    lut = np.floor(ink * colors[:, :, None, :].astype(np.float64) / 255.0 + 0.5).astype(
        np.uint8
    )  # (n, D, 256, 3)
    video = np.empty((n, frames, size, size, 3), np.uint8)
    _tinted_kernel(video, np.ascontiguousarray(images), ids, top_left, lut, mode)
    return video


@njit(cache=True)
def _tinted_kernel(video, images, ids, top_left, lut, mode):
    """Per frame: clear, then digit by digit: max (mode 0) or clipped sum of its tinted ink, per channel."""
    n, frames, height, width, channels = video.shape
    h, w = images.shape[1], images.shape[2]
    for b in range(n):
        for t in range(frames):
            frame = video[b, t]
            frame[:] = 0
            for d in range(ids.shape[1]):
                img, tab = images[ids[b, d]], lut[b, d]
                y, x = top_left[b, t, d, 0], top_left[b, t, d, 1]
                for r in range(h):
                    row = frame[y + r]
                    for c in range(w):
                        v = img[r, c]
                        if v == 0:
                            continue
                        for k in range(channels):
                            old, new = row[x + c, k], tab[v, k]
                            if mode == 0:
                                row[x + c, k] = old if old > new else new
                            else:
                                row[x + c, k] = min(int(old) + int(new), 255)


@njit(cache=True)
def _plain_mask_kernel(mask, best, images, ids, top_left):
    """Per frame, digit by digit: a pixel goes to the digit whose ink is >= the largest so far. Flat unsigned
    offsets, as in `composite`'s kernel (numba then vectorizes the rows)."""
    n, frames, height, width = mask.shape
    h, w = uint64(images.shape[1]), uint64(images.shape[2])
    flat = mask.reshape(mask.size)
    pixels = images.reshape(images.size)
    frame_size, row_size = uint64(height * width), uint64(width)
    for b in range(n):
        for t in range(frames):
            frame = uint64(b * frames + t) * frame_size
            for i in range(frame_size):
                flat[frame + i] = 0
                best[i] = 0
            for d in range(ids.shape[1]):
                src = uint64(ids[b, d]) * h * w
                dst = uint64(top_left[b, t, d, 0]) * row_size + uint64(top_left[b, t, d, 1])
                label = np.uint8(d + 1)
                for r in range(h):
                    out, row = dst + r * row_size, src + r * w
                    for c in range(w):
                        v, old = pixels[row + c], best[out + c]
                        take = (v >= old) & (v > 0)
                        best[out + c] = v if take else old
                        flat[frame + out + c] = label if take else flat[frame + out + c]


@njit(cache=True)
def _box_counts(seen, mask, top_left, h, w):
    """Pixels of each digit's id inside its own box (all it can own when upright and unscaled)."""
    n, frames, digits = seen.shape
    flat = mask.reshape(mask.size)
    frame_size, row_size = uint64(mask.shape[2] * mask.shape[3]), uint64(mask.shape[3])
    for b in range(n):
        for t in range(frames):
            frame = uint64(b * frames + t) * frame_size
            for d in range(digits):
                dst = frame + uint64(top_left[b, t, d, 0]) * row_size + uint64(top_left[b, t, d, 1])
                label, count = np.uint8(d + 1), 0
                for r in range(uint64(h)):
                    out = dst + r * row_size
                    for c in range(uint64(w)):
                        count += flat[out + c] == label
                seen[b, t, d] = count


@njit(cache=True)
def _gather_flow(flow, mask, table):
    """flow[b, t, pixel] = table[b, t, mask id] (each (x, y) float16 pair moved as one 32-bit word); flat
    unsigned offsets, as in `composite`'s kernel."""
    n, steps = table.shape[0], table.shape[1]
    frames, frame_size = uint64(mask.shape[1]), uint64(mask.shape[2] * mask.shape[3])
    out, ids = flow.reshape(flow.size), mask.reshape(mask.size)
    for b in range(n):
        for t in range(steps):
            src = (uint64(b) * frames + uint64(t)) * frame_size
            dst = (uint64(b) * uint64(steps) + uint64(t)) * frame_size
            tab = table[b, t, :, 0]
            for i in range(frame_size):
                out[dst + i] = tab[ids[src + i]]


@njit(cache=True)
def _bilinear(img, fy, fx):
    h, w = img.shape
    i0, j0 = math.floor(fy), math.floor(fx)
    wy, wx = fy - i0, fx - j0
    v = 0.0
    for di in range(2):
        i = i0 + di
        if i < 0 or i >= h:
            continue
        ky = wy if di else 1.0 - wy
        if ky == 0.0:
            continue
        for dj in range(2):
            j = j0 + dj
            if j < 0 or j >= w:
                continue
            kx = wx if dj else 1.0 - wx
            if kx != 0.0:
                v += ky * kx * img[i, j]
    return v


@njit(cache=True)
def _paste_ink(img, d, r, c, ink, alone, seen, best, mask_t, video_t, col, mode, colored, bt):
    """One digit pixel of ink > 0: count it, take the mask where it is the largest ink so far (ties: this,
    later, digit), colour it and combine it into the frame (max: mode 0, clipped sum: 1)."""
    b, t = bt
    alone[b, t, d] += 1
    if ink >= best[r, c]:
        prev = mask_t[r, c]
        if prev:
            seen[b, t, prev - 1] -= 1
        best[r, c] = ink
        mask_t[r, c] = d + 1
        seen[b, t, d] += 1
    for k in range(video_t.shape[2]):
        v = int(ink * col[k] / 255.0 + 0.5) if colored else ink
        old = int(video_t[r, c, k])
        video_t[r, c, k] = max(old, v) if mode == 0 else min(old + v, 255)


@njit(cache=True)
def _reach(box, cy, cx, ca, sa, s, height, width):
    """Canvas rows [r0, r1) and columns [c0, c1) that can get ink: the turned, scaled corners of the box
    (dy0, dy1, dx0, dx1; offsets from the digit's centre) where its bilinear samples can be non-zero."""
    y_lo = y_hi = x_lo = x_hi = 0.0
    for k in range(4):
        dy, dx = box[k // 2], box[2 + k % 2]
        py, px = s * (ca * dy - sa * dx), s * (sa * dy + ca * dx)
        if k == 0:
            y_lo, y_hi, x_lo, x_hi = py, py, px, px
        y_lo, y_hi, x_lo, x_hi = min(y_lo, py), max(y_hi, py), min(x_lo, px), max(x_hi, px)
    r0, r1 = max(0, math.floor(cy + y_lo)), min(height, math.ceil(cy + y_hi))
    c0, c1 = max(0, math.floor(cx + x_lo)), min(width, math.ceil(cx + x_hi))
    return r0, r1, c0, c1


def ink_reach(images: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per digit of each clip (n, D, 4): offsets (dy0, dy1, dx0, dx1) from the box centre beyond which its
    bilinear samples are 0 (its inked rows and columns, one pixel out); only the images in use are read."""
    h, w = images.shape[1:]
    used, where = np.unique(ids, return_inverse=True)
    ink = images[used] > 0
    rows, cols = ink.any(2), ink.any(1)  # (k, h), (k, w)
    first_r, last_r = rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1)
    first_c, last_c = cols.argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    box = np.stack(
        [first_r - 0.5 - h / 2, last_r + 1.5 - h / 2, first_c - 0.5 - w / 2, last_c + 1.5 - w / 2], -1
    )
    return box[where.reshape(ids.shape)]


@njit(cache=True)
def _render_kernel(
    video, mask, alone, seen, best, images, ids, reach, centre, cos, sin, scales, cols, mode, colored
):
    """Per frame: clear, then digit by digit in order: its ink (the image itself when upright at scale 1,
    else inverse-mapped bilinear over the canvas pixels its ink can reach, rounded to uint8) through
    `_paste_ink`."""
    n, frames, height, width, channels = video.shape
    h, w = images.shape[1], images.shape[2]
    for b in range(n):
        for t in range(frames):
            video_t, mask_t = video[b, t], mask[b, t]
            video_t[:] = 0
            mask_t[:] = 0
            best[:] = 0
            for d in range(ids.shape[1]):
                img, col = images[ids[b, d]], cols[b, d]
                cy, cx = centre[b, t, d, 0], centre[b, t, d, 1]
                ca, sa, s = cos[b, t, d], sin[b, t, d], scales[b, t, d]
                if ca == 1.0 and sa == 0.0 and s == 1.0:  # the plain paste (the box lies inside)
                    top, left = int(cy - h / 2), int(cx - w / 2)
                    for i in range(h):
                        for j in range(w):
                            ink = img[i, j]
                            if ink:
                                _paste_ink(img, d, top + i, left + j, ink, alone, seen, best, mask_t,
                                           video_t, col, mode, colored, (b, t))  # fmt: skip
                    continue
                r0, r1, c0, c1 = _reach(reach[b, d], cy, cx, ca, sa, s, height, width)
                for r in range(r0, r1):
                    qy = r + 0.5 - cy
                    for c in range(c0, c1):
                        qx = c + 0.5 - cx
                        fy = (sa * qx + ca * qy) / s + h / 2 - 0.5
                        fx = (ca * qx - sa * qy) / s + w / 2 - 0.5
                        ink = int(_bilinear(img, fy, fx) + 0.5)
                        if ink:
                            _paste_ink(img, d, r, c, ink, alone, seen, best, mask_t, video_t, col, mode,
                                       colored, (b, t))  # fmt: skip


@njit(cache=True)
def _half_bits(x):
    """IEEE binary16 bits of a float64, rounded to nearest even (numba has no float16)."""
    sign = 0x8000 if x < 0 else 0
    a = abs(x)
    if a == 0.0:
        return sign
    if a != a:
        return 0x7E00
    m, e = math.frexp(a)  # a = m 2^e, m in [0.5, 1)
    exp = e - 1
    if exp < -14:  # subnormal: multiples of 2^-24
        return sign | int(np.rint(a * 16777216.0))  # 1024 is the smallest normal's bits
    q = int(np.rint(m * 2048.0))  # 1024..2048
    if q == 2048:
        q, exp = 1024, exp + 1
    if exp > 15:
        return sign | 0x7C00
    return sign | ((exp + 15) << 10) | (q - 1024)


@njit(cache=True)
def _flow_kernel(flow_bits, mask, centre, cos, sin, scales):
    """Forward flow at the pixel centres of each digit's mask in frame t: where that point of the digit is in
    frame t + 1, minus where it is (x = column, y = row), as float16 bits. Per (t, digit) the map is affine:
    p' = A p + o with A = s' R' R^-1 / s."""
    n, frames, digits = cos.shape
    height, width = mask.shape[2], mask.shape[3]
    a = np.empty((digits, 2, 3))
    for b in range(n):
        for t in range(frames - 1):
            for d in range(digits):
                ca, sa, s = cos[b, t, d], sin[b, t, d], scales[b, t, d]
                cb, sb, s2 = cos[b, t + 1, d], sin[b, t + 1, d], scales[b, t + 1, d]
                k = s2 / s
                # R(a) maps (dy, dx) -> (-sin dx + cos dy, cos dx + sin dy); R(b) R(a)^-1 = R(b - a)
                cd, sd = cb * ca + sb * sa, sb * ca - cb * sa  # cos, sin of (b - a)
                a[d, 0, 0], a[d, 0, 1] = k * cd, -k * sd  # dy' from (dy, dx)
                a[d, 1, 0], a[d, 1, 1] = k * sd, k * cd  # dx' from (dy, dx)
                a[d, 0, 2] = centre[b, t + 1, d, 0] - centre[b, t, d, 0]
                a[d, 1, 2] = centre[b, t + 1, d, 1] - centre[b, t, d, 1]
            for r in range(height):
                for c in range(width):
                    m = mask[b, t, r, c]
                    if m == 0:
                        flow_bits[b, t, r, c, 0] = 0
                        flow_bits[b, t, r, c, 1] = 0
                        continue
                    d = m - 1
                    qy, qx = r + 0.5 - centre[b, t, d, 0], c + 0.5 - centre[b, t, d, 1]
                    fy = a[d, 0, 0] * qy + a[d, 0, 1] * qx + a[d, 0, 2] - qy
                    fx = a[d, 1, 0] * qy + a[d, 1, 1] * qx + a[d, 1, 2] - qx
                    flow_bits[b, t, r, c, 0] = _half_bits(fx)
                    flow_bits[b, t, r, c, 1] = _half_bits(fy)
