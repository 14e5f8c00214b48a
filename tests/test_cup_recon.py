"""The classical LS + TV baseline: exact adjoints, and recovery of a simple scene from noiseless data."""

from __future__ import annotations

import numpy as np

from datagen.sense.cup import CupOperator, CupParams, expose, make_mask, sample_rng
from datagen.sense.recon import (
    TVConfig,
    adjoint_estimate,
    grad,
    grad_adjoint,
    measurement,
    psnr,
    reconstruct_tv,
)

T, H, W = 8, 16, 16


def moving_square() -> np.ndarray:
    x = np.zeros((T, H, W))
    for t in range(T):
        x[t, 5:8, 3 + t : 6 + t] = 1.0
    x[:, 11:14, 2:6] = 0.5  # and a static grey block
    return x


def test_gradient_adjoint_is_exact() -> None:
    rng = np.random.default_rng(0)
    x, d = rng.standard_normal((T, H, W)), rng.standard_normal((3, T, H, W))
    for w in (1.0, 0.3):
        assert np.isclose(np.sum(grad(x, w) * d), np.sum(x * grad_adjoint(d, w)), rtol=1e-12)


def test_recovers_a_simple_scene_with_the_complementary_view() -> None:
    x = moving_square()
    op = CupOperator(make_mask(H, W, 0.5, 0), T, shear=1, complementary=True)
    y = op.forward(x)
    naive = psnr(adjoint_estimate(y, op, x), x)  # the adjoint at its best scale
    tv = psnr(reconstruct_tv(y, op, TVConfig(lam=0.01, rho=0.1, iters=300, cg_iters=10)), x)
    assert naive < 20 and tv > 35, (naive, tv)


def test_single_view_beats_the_adjoint() -> None:
    """One view is ~5.6x compressed at T = 8, shear 1: TV helps, but cannot recover the scene (see README)."""
    x = moving_square()
    op = CupOperator(make_mask(H, W, 0.5, 0), T, shear=1)
    y = op.forward(x)
    naive = psnr(adjoint_estimate(y, op, x), x)
    tv = psnr(reconstruct_tv(y, op, TVConfig(lam=0.01, rho=0.1, iters=200, cg_iters=10)), x)
    assert tv > naive + 3, (naive, tv)


def test_from_a_noisy_sensed_image_at_the_default_exposure() -> None:
    x = moving_square()
    p = CupParams(complementary=True)  # 200 electrons per white pixel and frame, 2 e- read noise, 12 bits
    op = CupOperator(make_mask(H, W, p.fill, p.mask_seed), T, p.shear, p.complementary)
    y = measurement(expose(op.forward(x), p, sample_rng(0, 0)), p.scale)
    assert psnr(reconstruct_tv(y, op, TVConfig(lam=0.01, rho=0.1, iters=200, cg_iters=10)), x) > 28
