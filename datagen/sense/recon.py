"""The classical CUP reconstruction: least squares + total variation, solved by ADMM on the known operator.

    x* = argmin_x  1/2 ||A x - y||^2 + lam * ||D x||_1,    D = forward differences along (t, h, w)

ADMM splits z = D x and b = x with b in the scene's range [0, 1] (Boyd et al. 2011, sections 5 and 6.4.1):
    x <- (A^T A + rho (D^T D + I))^{-1} (A^T y + rho (D^T (z - u) + b - c))   conjugate gradients, warm
    z <- soft(D x + u, lam / rho);  b <- clip(x + c, 0, 1)
    u <- u + D x - z;  c <- c + x - b `y` is in units of A x (a sensed image divided by
`CupParams.scale`). This is the reference learned reconstructions are compared against; TwIST (the CUP
papers' solver) minimizes the same objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from datagen.sense.cup import CupOperator


def grad(x: NDArray, time_weight: float = 1.0) -> NDArray:
    """D x: (3, T, H, W) forward differences along t, h, w (0 at the far edge)."""
    d = np.zeros((3, *x.shape), dtype=x.dtype)
    d[0, :-1] = time_weight * (x[1:] - x[:-1])
    d[1, :, :-1] = x[:, 1:] - x[:, :-1]
    d[2, :, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    return d


def grad_adjoint(d: NDArray, time_weight: float = 1.0) -> NDArray:
    """D^T d: (3, T, H, W) -> (T, H, W), the exact adjoint of :func:`grad`."""
    out = np.zeros(d.shape[1:], dtype=d.dtype)
    out[:-1] -= time_weight * d[0, :-1]
    out[1:] += time_weight * d[0, :-1]
    out[:, :-1] -= d[1, :, :-1]
    out[:, 1:] += d[1, :, :-1]
    out[:, :, :-1] -= d[2, :, :, :-1]
    out[:, :, 1:] += d[2, :, :, :-1]
    return out


@dataclass(frozen=True)
class TVConfig:
    lam: float = 0.02  # TV weight, in units of A x
    rho: float = 1.0
    iters: int = 100  # ADMM iterations
    cg_iters: int = 5  # conjugate-gradient steps per x-update (warm-started)
    time_weight: float = 1.0  # weight of temporal differences relative to spatial ones


def _inner(a: NDArray, b: NDArray) -> float:
    """<a, b> without BLAS: np.vdot's threaded BLAS spins its threads and ran 20x slower on small scenes."""
    return float(np.sum(a * b))


def _cg(apply, b: NDArray, x: NDArray, iters: int) -> NDArray:
    r = b - apply(x)
    p, rr = r.copy(), _inner(r, r)
    for _ in range(iters):
        if rr < 1e-20:
            break
        ap = apply(p)
        alpha = rr / _inner(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr, rr_old = _inner(r, r), rr
        p = r + (rr / rr_old) * p
    return x


def reconstruct_tv(y: NDArray, op: CupOperator, cfg: TVConfig = TVConfig()) -> NDArray:
    """The LS + TV estimate of the scene (T, H, W) in [0, 1] from one measurement y (V, H', W)."""
    w = cfg.time_weight

    def normal(v: NDArray) -> NDArray:
        return op.adjoint(op.forward(v)) + cfg.rho * (grad_adjoint(grad(v, w), w) + v)

    aty = op.adjoint(y)
    x = np.zeros(op.scene_shape)
    z, u = np.zeros((3, *op.scene_shape)), np.zeros((3, *op.scene_shape))  # z = D x
    b, c = np.zeros(op.scene_shape), np.zeros(op.scene_shape)  # b = x, in [0, 1]
    thresh = cfg.lam / cfg.rho
    for _ in range(cfg.iters):
        x = _cg(normal, aty + cfg.rho * (grad_adjoint(z - u, w) + b - c), x, cfg.cg_iters)
        v = grad(x, w) + u
        z = np.sign(v) * np.maximum(np.abs(v) - thresh, 0.0)
        u = v - z
        b = np.clip(x + c, 0.0, 1.0)
        c += x - b
    return np.clip(x, 0.0, 1.0)


def psnr(estimate: NDArray, target: NDArray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of an estimate in [0, peak]."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - target) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def adjoint_estimate(y: NDArray, op: CupOperator, target: NDArray | None = None) -> NDArray:
    """A^T y scaled to the scene (by least squares against `target` when given: the adjoint's best case,
    else by A^T A 1), the naive reference."""
    back = op.adjoint(y)
    if target is not None:
        scale = _inner(back, target) / max(_inner(back, back), 1e-12)
    else:
        scale = 1.0 / max(float(op.adjoint(op.forward(np.ones(op.scene_shape))).mean()), 1e-12)
    return np.clip(scale * back, 0.0, 1.0)


def measurement(sensed: NDArray, scale: float) -> NDArray[np.float64]:
    """A stored sensed image (digital numbers) -> y in units of A x (divide by `CupParams.scale`)."""
    return np.asarray(sensed, dtype=np.float64) / scale
