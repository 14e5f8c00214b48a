"""Batched JSON text of rounded floats: byte-identical to json.dumps, including repr's corner cases."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

from datagen.sim.balls import BALLS
from datagen.sim.fast_json import EncodedMeta, rounded_json


def dumps_each(values: np.ndarray, decimals: int) -> list[bytes]:
    return [json.dumps(np.round(v, decimals).tolist(), separators=(",", ":")).encode() for v in values]


@pytest.mark.parametrize("decimals", range(7))
def test_matches_json_dumps_over_many_magnitudes(decimals):
    rng = np.random.default_rng(decimals)
    values = rng.standard_normal((40, 6, 3)) * 10.0 ** rng.integers(-8, 7, (40, 6, 3))
    assert rounded_json(values, decimals) == dumps_each(values, decimals)


def test_repr_corner_cases():
    corner = [0.0, -0.0, -1e-8, 4e-7, 5e-5, 1.2e-5, -3.4e-5, 1e-4, 9.99999e-5, 0.5, -0.25, 3.0, 10.0, 100.0]
    corner += [123456.7, -1e-6, 1e-6, 2.5e-7, 1e9 + 0.1, 99.9999995, 29.5, -0.5]
    values = np.array([corner])
    assert rounded_json(values) == dumps_each(values, 6)
    assert rounded_json(values)[0].startswith(b"[0.0,-0.0,-0.0,0.0,5e-05,1.2e-05,-3.4e-05,0.0001,0.0001,0.5,")


@pytest.mark.parametrize("shape", [(3, 1), (2, 5), (1, 1, 1, 1), (4, 30, 3, 2), (2, 2, 1, 3)])
def test_nesting_and_brackets(shape):
    values = np.random.default_rng(1).random(shape) * 60 - 2
    assert rounded_json(values) == dumps_each(values, 6)


def test_bad_input():
    with pytest.raises(ValueError, match="decimals"):
        rounded_json(np.zeros((1, 2)), 7)
    with pytest.raises(ValueError, match="finite"):
        rounded_json(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="one or more axes per item"):
        rounded_json(np.zeros(3))
    assert rounded_json(np.zeros((0, 4, 2))) == []


@pytest.mark.parametrize(("n_balls", "size"), [(1, 30), (3, 30), (5, 64), (2, 7)])
def test_balls_meta_carries_exactly_the_writers_json(n_balls, size):
    params = BALLS.validate({"n_balls": n_balls, "size": size, "frames": 12})
    for s in BALLS.generate(params, 5, 0, 300):
        assert isinstance(s.meta, EncodedMeta)
        assert s.meta.encoded_json == json.dumps(s.meta, sort_keys=True, separators=(",", ":")).encode()


def test_encoded_meta_survives_pickle_and_copy():
    meta = EncodedMeta({"a": [1.5]}, b'{"a":[1.5]}')
    for clone in (pickle.loads(pickle.dumps(meta)), copy.deepcopy(meta), copy.copy(meta)):
        assert clone == meta and clone.encoded_json == meta.encoded_json
