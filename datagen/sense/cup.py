"""Compressed ultrafast photography (CUP; Gao, Liang et al., Nature 516, 2014): the forward model.

A scene x (T, H, W) in [0, 1] is recorded in one exposure (per view v; view 1 is the complementary mask of
the lossless-encoding CUP systems, optional):

    E_v(r, c) = sum_t M_v(r - t*s, c) * x(t, r - t*s, c)     (encode, shear s rows per frame, integrate)
    A x       = [E_0, E_1]                                        sensor (V, H + (T - 1) s, W)
    (A^T y)(t, h, w) = sum_v M_v(h, w) * y_v(h + t*s, w)         the adjoint

with M_0 one fixed pseudo-random binary mask (exactly round(fill * H * W) open pixels, drawn from
`mask_seed`) and M_1 = 1 - M_0. The sensor then counts electrons and digitizes them:

    e  ~ Poisson(photons * A x) + Normal(0, read_noise^2)         photons: electrons per unit scene, frame
    DN = clip(round(gain * e), 0, 2^bits - 1)  as uint16          gain: digital numbers per electron

so E[DN] = gain * photons * A x and Var[DN] = gain^2 (photons * A x + read_noise^2) + 1/12 away from the
clip. Colour clips are sensed in grey (the channel mean): a streak camera is monochrome. Everything is
vectorized numpy (a loop over the T frames at most, never over pixels); datagen never imports torch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from datagen.errors import DatagenError

MAX_BITS = 16  # the sensed field is uint16


@dataclass(frozen=True)
class CupParams:
    """The sensing parameters (all recorded in the output store's manifest)."""

    shear: int = 1  # rows the sweep moves per frame (s)
    fill: float = 0.5  # fraction of open mask pixels
    mask_seed: int = 0
    photons: float = 200.0  # expected electrons of a white scene pixel during one frame
    gain: float = 1.0  # digital numbers per electron
    read_noise: float = 2.0  # electrons rms
    bits: int = 12
    complementary: bool = False  # also record the complementary-mask view

    @property
    def views(self) -> int:
        return 2 if self.complementary else 1

    @property
    def scale(self) -> float:
        """Expected digital numbers per unit of A x: divide a sensed image by it to get A x back."""
        return self.gain * self.photons

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(name: str, value: Any, lo: float, hi: float, *, integer: bool, lo_open: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "a whole number" if integer else "a finite number"
        raise DatagenError(f"--{name.replace('_', '-')} must be {kind}, got {value!r:.40}")
    if value < lo or value > hi or (lo_open and value == lo):
        low = f"> {lo}" if lo_open else f">= {lo}"
        raise DatagenError(f"--{name.replace('_', '-')} must be {low} and <= {hi}, got {value}")


def check_params(params: Mapping[str, Any]) -> CupParams:
    """Mapping -> CupParams, or a one-line DatagenError naming the option."""
    known = {f.name for f in fields(CupParams)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise DatagenError(f"unknown cup parameter(s): {', '.join(unknown)}")
    p = CupParams(**params)
    _number("shear", p.shear, 0, 1024, integer=True)
    _number("fill", p.fill, 0.0, 1.0, integer=False, lo_open=True)
    _number("mask_seed", p.mask_seed, 0, 2**63 - 1, integer=True)
    _number("photons", p.photons, 0.0, 1e9, integer=False, lo_open=True)
    _number("gain", p.gain, 0.0, 1e6, integer=False, lo_open=True)
    _number("read_noise", p.read_noise, 0.0, 1e6, integer=False)
    _number("bits", p.bits, 1, MAX_BITS, integer=True)
    if not isinstance(p.complementary, bool):
        raise DatagenError(f"--complementary must be true or false, got {p.complementary!r:.40}")
    return p


def make_mask(height: int, width: int, fill: float, seed: int) -> NDArray[np.uint8]:
    """The fixed binary mask (H, W): exactly round(fill * H * W) open pixels, placed by `seed`."""
    n = height * width
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    mask = np.zeros(n, dtype=np.uint8)
    mask[rng.permutation(n)[: round(fill * n)]] = 1
    return mask.reshape(height, width)


def mask_sha256(mask: NDArray[np.uint8]) -> str:
    """sha256 of the mask's bytes (uint8, row-major), as the manifest records it."""
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def sensor_shape(frames: int, height: int, width: int, shear: int, views: int = 1) -> tuple[int, int, int]:
    """(V, H + (T - 1) * shear, W)."""
    return views, height + (frames - 1) * shear, width


class CupOperator:
    """A (encode, shear, integrate) and its adjoint over batches: x (..., T, H, W) <-> y (..., V, H', W)."""

    def __init__(self, mask: NDArray, frames: int, shear: int, complementary: bool = False) -> None:
        m = np.asarray(mask, dtype=np.float64)
        self.masks = np.stack([m, 1.0 - m]) if complementary else m[None]  # (V, H, W)
        self.frames, self.shear = frames, shear
        h, w = m.shape
        self.scene_shape = (frames, h, w)
        self.sensor_shape = sensor_shape(frames, h, w, shear, len(self.masks))
        # sensor row of scene row h in frame t: (T, H)
        self._rows = np.arange(frames)[:, None] * shear + np.arange(h)[None, :]

    def forward(self, x: NDArray) -> NDArray:
        """A x: (..., T, H, W) -> (..., V, H + (T - 1) s, W)."""
        x = np.asarray(x)
        lead = x.shape[:-3]
        enc = x[..., None, :, :, :] * self.masks[:, None]  # (..., V, T, H, W)
        y = np.zeros((*lead, *self.sensor_shape), dtype=np.result_type(x.dtype, np.float32))
        h = self.scene_shape[1]
        for t in range(self.frames):  # a loop over frames; each step is a whole-image add
            y[..., t * self.shear : t * self.shear + h, :] += enc[..., :, t, :, :]
        return y

    def adjoint(self, y: NDArray) -> NDArray:
        """A^T y: (..., V, H', W) -> (..., T, H, W)."""
        y = np.asarray(y)
        picked = y[..., self._rows, :]  # (..., V, T, H, W)
        return (picked * self.masks[:, None]).sum(axis=-4)

    def __call__(self, x: NDArray) -> NDArray:
        return self.forward(x)


def scene_of(video: NDArray[np.uint8]) -> NDArray[np.float64]:
    """A stored clip (T, H, W, C) uint8 -> the scene (T, H, W) in [0, 1] (grey: the channel mean)."""
    return video.mean(axis=-1, dtype=np.float64) / 255.0


def expose(ideal: NDArray, p: CupParams, rng: np.random.Generator) -> NDArray[np.uint16]:
    """The sensor: shot noise, read noise, gain, quantization to `bits` (A x -> uint16 digital numbers)."""
    electrons = rng.poisson(p.photons * np.maximum(ideal, 0.0)).astype(np.float64)
    if p.read_noise > 0:
        electrons += rng.normal(0.0, p.read_noise, size=electrons.shape)
    dn = np.rint(p.gain * electrons)
    return np.clip(dn, 0, 2**p.bits - 1).astype(np.uint16)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The project's per-sample stream (datagen.store.format.SEEDING)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def sense(video: NDArray[np.uint8], op: CupOperator, p: CupParams, rng: np.random.Generator) -> NDArray:
    """One stored clip -> its sensed image (V, H + (T - 1) s, W) uint16."""
    return expose(op.forward(scene_of(video)), p, rng)
