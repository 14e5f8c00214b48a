"""CUP forward model: shapes, adjoint, where a pixel lands, the sensor's noise statistics and range."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.errors import DatagenError
from datagen.sense.cup import (
    CupOperator,
    CupParams,
    check_params,
    expose,
    make_mask,
    mask_sha256,
    sample_rng,
    sense,
)


def test_shapes_and_mask_fill() -> None:
    mask = make_mask(16, 12, 0.25, seed=3)
    assert mask.dtype == np.uint8 and mask.shape == (16, 12) and mask.sum() == 48
    assert np.array_equal(mask, make_mask(16, 12, 0.25, seed=3))
    assert mask_sha256(mask) != mask_sha256(make_mask(16, 12, 0.25, seed=4))
    op = CupOperator(mask, frames=5, shear=2, complementary=True)
    assert op.sensor_shape == (2, 16 + 4 * 2, 12)
    assert op.forward(np.zeros((3, 5, 16, 12))).shape == (3, 2, 24, 12)
    assert op.adjoint(np.zeros((2, 24, 12))).shape == (5, 16, 12)


@pytest.mark.parametrize("shear,complementary", [(0, False), (1, False), (3, True)])
def test_adjoint_identity(shear: int, complementary: bool) -> None:
    rng = np.random.default_rng(0)
    op = CupOperator(make_mask(9, 7, 0.5, 1), frames=6, shear=shear, complementary=complementary)
    x = rng.standard_normal((4, *op.scene_shape))
    y = rng.standard_normal((4, *op.sensor_shape))
    lhs, rhs = np.sum(op.forward(x) * y), np.sum(x * op.adjoint(y))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_bright_pixel_lands_where_the_shear_says() -> None:
    mask = np.ones((10, 8), dtype=np.uint8)
    op = CupOperator(mask, frames=4, shear=3)
    x = np.zeros(op.scene_shape)
    x[2, 5, 6] = 1.0  # frame 2, row 5, column 6
    y = op.forward(x)
    assert y.sum() == 1.0 and y[0, 5 + 2 * 3, 6] == 1.0
    mask[5, 6] = 0  # a closed mask pixel records nothing; the complementary view gets it
    both = CupOperator(mask, frames=4, shear=3, complementary=True).forward(x)
    assert both[0].sum() == 0.0 and both[1, 11, 6] == 1.0


def test_noise_statistics_match_the_parameters() -> None:
    p = CupParams(photons=50.0, gain=2.0, read_noise=3.0, bits=14)
    level = 1.5  # A x of every pixel
    dn = expose(np.full((400, 500), level), p, np.random.default_rng(7)).astype(np.float64)
    mean = p.gain * p.photons * level
    var = p.gain**2 * (p.photons * level + p.read_noise**2) + 1 / 12
    n = dn.size
    assert abs(dn.mean() - mean) < 5 * np.sqrt(var / n)
    assert abs(dn.var() / var - 1) < 5 * np.sqrt(2 / n)  # the sample variance's relative spread
    no_read = expose(np.full((400, 500), level), CupParams(photons=50.0, read_noise=0.0), sample_rng(0, 1))
    assert abs(no_read.astype(float).var() / (50 * level) - 1) < 0.02  # pure Poisson, gain 1


def test_quantization_range() -> None:
    p = CupParams(photons=1000.0, bits=8, read_noise=5.0)
    dn = expose(np.linspace(0, 2, 10_000).reshape(100, 100), p, np.random.default_rng(0))
    assert dn.dtype == np.uint16 and dn.min() == 0 and dn.max() == 255
    assert np.all(dn == np.rint(dn))


def test_sense_is_seeded_per_sample() -> None:
    p = CupParams(shear=2)
    video = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    op = CupOperator(make_mask(8, 8, p.fill, p.mask_seed), 4, p.shear)
    a, b = sense(video, op, p, sample_rng(5, 3)), sense(video, op, p, sample_rng(5, 3))
    assert a.shape == (1, 14, 8) and np.array_equal(a, b)
    assert not np.array_equal(a, sense(video, op, p, sample_rng(5, 4)))


@pytest.mark.parametrize(
    "bad,word",
    [
        ({"shear": -1}, "--shear"),
        ({"fill": 0.0}, "--fill"),
        ({"bits": 17}, "--bits"),
        ({"gain": float("nan")}, "--gain"),
        ({"shear": 1.5}, "--shear"),
        ({"color": 1}, "unknown"),
    ],
)
def test_bad_params_are_one_line(bad: dict, word: str) -> None:
    with pytest.raises(DatagenError, match=word) as e:
        check_params(bad)
    assert "\n" not in str(e.value)
