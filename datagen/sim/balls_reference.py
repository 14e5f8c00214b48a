"""Straightforward port of Sutskever's RTRBM bouncing-balls generator: the oracle for tests and benchmarks.

The original (`bounce_n` / `matricize`, copied in zhegan27/TSBN_code_NIPS2015 and belaalb/frameGAN) is kept
as written: per-ball Python loops, `norm`, `dot` and `new_speeds` per pair, the full-frame
`exp(-(((I-x)^2 + (J-y)^2) / r^2)^4)` per ball. Changes, all without effect on the physics:
- randomness comes from an explicit `numpy.random.Generator` (same draw order: `standard_normal((n, 2))` for
  the velocities, then `random((n, 2))` per position attempt) instead of the unseeded global RNG;
- velocities are recorded next to the positions (the original returns positions only);
- the box side is a parameter `size`; initial positions are `size/5 + (4 size/5) U`, i.e. `2 + 8U` for the
  original box of 10;
- pixel centres are `(0.5/res + k/res) * size` for exactly `res` values of k (the original's float `arange`
  yields res + 1 centres for a few resolutions such as 49);
- `to_uint8` defines how float frames are stored.
"""

from __future__ import annotations

import numpy as np

SIZE = 10.0
"""Side of the square box in world units."""
RADIUS = 1.2
"""Ball radius in world units."""
EPS = 0.5
"""Sub-step length: int(1 / EPS) = 2 sub-steps of x += EPS * v per frame."""


def new_speeds(m1: float, m2: float, v1: float, v2: float) -> tuple[float, float]:
    """1-D elastic collision of masses m1, m2 with speeds v1, v2 (the original's formula)."""
    new_v2 = (2 * m1 * v1 + v2 * (m2 - m1)) / (m1 + m2)
    new_v1 = new_v2 + (v2 - v1)
    return new_v1, new_v2


def norm(x: np.ndarray) -> float:
    return np.sqrt((x**2).sum())


def bounce_n(
    rng: np.random.Generator,
    T: int = 128,
    n: int = 2,
    r: np.ndarray | None = None,
    m: np.ndarray | None = None,
    size: float = SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities (T, n, 2) in world units, each recorded before the frame's sub-steps."""
    if r is None:
        r = np.array([RADIUS] * n)
    if m is None:
        m = np.array([1] * n)
    X = np.zeros((T, n, 2), dtype="float")
    V = np.zeros((T, n, 2), dtype="float")
    v = rng.standard_normal((n, 2))
    v = v / norm(v) * 0.5
    low, span = size / 5, size * 4 / 5
    good_config = False
    while not good_config:
        x = low + rng.random((n, 2)) * span
        good_config = True
        for i in range(n):
            for z in range(2):
                if x[i][z] - r[i] < 0:
                    good_config = False
                if x[i][z] + r[i] > size:
                    good_config = False
        for i in range(n):
            for j in range(i):
                if norm(x[i] - x[j]) < r[i] + r[j]:
                    good_config = False

    eps = EPS
    for t in range(T):
        for i in range(n):
            X[t, i] = x[i]
            V[t, i] = v[i]
        for _mu in range(int(1 / eps)):
            for i in range(n):
                x[i] += eps * v[i]
            for i in range(n):
                for z in range(2):
                    if x[i][z] - r[i] < 0:
                        v[i][z] = abs(v[i][z])  # want positive
                    if x[i][z] + r[i] > size:
                        v[i][z] = -abs(v[i][z])  # want negative
            for i in range(n):
                for j in range(i):
                    if norm(x[i] - x[j]) < r[i] + r[j]:
                        w = x[i] - x[j]
                        w = w / norm(w)
                        v_i = np.dot(w.transpose(), v[i])
                        v_j = np.dot(w.transpose(), v[j])
                        new_v_i, new_v_j = new_speeds(m[i], m[j], v_i, v_j)
                        v[i] += w * (new_v_i - v_i)
                        v[j] += w * (new_v_j - v_j)
    return X, V


def pixel_centres(res: int, size: float = SIZE) -> np.ndarray:
    """World coordinates of the `res` pixel centres along one axis: (k + 0.5) / res * size."""
    step = 1.0 / res
    return (step / 2 + np.arange(res) * step) * size


def matricize(X: np.ndarray, res: int, r: np.ndarray | None = None, size: float = SIZE) -> np.ndarray:
    """Render positions (T, n, 2) as float frames (T, res, res) in [0, 1]: x is the column, y the row."""
    T, n = X.shape[:2]
    if r is None:
        r = np.array([RADIUS] * n)
    A = np.zeros((T, res, res), dtype="float")
    I, J = np.meshgrid(pixel_centres(res, size), pixel_centres(res, size))  # noqa: E741 (original's names)
    for t in range(T):
        for i in range(n):
            A[t] += np.exp(-((((I - X[t, i, 0]) ** 2 + (J - X[t, i, 1]) ** 2) / (r[i] ** 2)) ** 4))
        A[t][A[t] > 1] = 1
    return A


def to_uint8(A: np.ndarray) -> np.ndarray:
    """Storage quantization: round(clip(A, 0, 1) * 255), ties to even (np.rint), as uint8."""
    scaled = np.minimum(A, 1.0)
    np.maximum(scaled, 0.0, out=scaled)
    np.multiply(scaled, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def reference_video(
    rng: np.random.Generator,
    *,
    n_balls: int = 3,
    frames: int = 30,
    res: int = 30,
    radius: float = RADIUS,
    size: float = SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One clip the classic way: uint8 frames (T, res, res), world positions and velocities (T, n, 2)."""
    r = np.array([radius] * n_balls)
    X, V = bounce_n(rng, T=frames, n=n_balls, r=r, size=size)
    return to_uint8(matricize(X, res, r, size)), X, V
