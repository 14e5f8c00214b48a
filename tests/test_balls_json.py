"""Batched JSON text of rounded floats: byte-identical to json.dumps, including repr's corner cases."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

from datagen.sim.balls import BALLS, ground_truth, simulate_balls
from datagen.sim.fast_json import EncodedMeta, LazyMeta, rounded_json


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


def straightforward_meta(params, traj, k, index):
    scale = params["size"] / params["box"]
    return {
        "index": index,
        "n_balls": params["n_balls"],
        "radius_px": round(params["radius"] * scale, 6),
        "positions": np.round(traj.positions[k] * scale - 0.5, 6).tolist(),
        "velocities": np.round(traj.velocities[k] * scale, 6).tolist(),
    }


@pytest.mark.parametrize(("n_balls", "size"), [(1, 30), (3, 64)])
def test_balls_meta_equals_the_straightforward_dict(n_balls, size):
    params = BALLS.validate({"n_balls": n_balls, "size": size, "frames": 9})
    indices = range(40, 140)
    _, traj = simulate_balls(params, 3, indices)
    metas = ground_truth(params, traj, indices)
    for k, (i, meta) in enumerate(zip(indices, metas, strict=True)):
        plain = straightforward_meta(params, traj, k, i)
        assert meta.encoded_json == json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()
        assert meta == plain and list(meta) == list(plain)  # same values, same key order


def lazy_meta() -> LazyMeta:
    params = BALLS.validate({"n_balls": 2, "frames": 3})
    return next(iter(BALLS.generate(params, 1, 7, 8))).meta


def test_lazy_meta_reads_like_the_dict_it_encodes():
    meta = lazy_meta()
    assert isinstance(meta, LazyMeta) and len(meta) == 5 and "positions" in meta and meta
    plain = json.loads(meta.encoded_json)
    assert json.dumps(meta) == json.dumps({k: plain[k] for k in meta})  # insertion order kept
    assert json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() == meta.encoded_json
    assert json.loads(json.dumps(meta, indent=2)) == plain
    checks = [  # each on a meta not decoded yet
        lambda m: plain == m,  # dict.__eq__ defers to the subclass's __eq__
        lambda m: m == plain,
        lambda m: not (m != plain),
        lambda m: m["index"] == 7,
        lambda m: m.get("n_balls") == 2,
        lambda m: dict(m) == plain,
        lambda m: {**m} == plain,
        lambda m: dict(m.items()) == plain,
        lambda m: list(m.values()) == [plain[k] for k in m.keys()],
        lambda m: [m[k] for k in m] == [plain[k] for k in m],
        lambda m: eval(repr(m)) == plain,  # noqa: S307 (repr of floats and lists)
        lambda m: (m | {}) == plain and ({} | m) == plain,
        lambda m: m.copy() == plain,
        lambda m: m.pop("index") == 7 and len(m) == 4,
    ]
    for check in checks:
        assert check(lazy_meta())
    for clone in (
        pickle.loads(pickle.dumps(lazy_meta())),
        copy.deepcopy(lazy_meta()),
        copy.copy(lazy_meta()),
    ):
        assert type(clone) is EncodedMeta and clone == plain and clone.encoded_json == meta.encoded_json
    updated = lazy_meta()
    updated.update(index=8)
    assert updated["index"] == 8 and updated["positions"] == plain["positions"]


def test_numbers_repeated_from_the_previous_row_are_copied_exactly():
    rows = np.array([[1.5, -0.0, 2e-5, 7.25], [1.5, 0.0, 2e-5, -7.25], [1.5, -0.0, 3e-5, -7.25]])
    values = np.stack([rows, rows[::-1], np.round(rows, 1)])  # (3 items, 3 rows, 4)
    assert rounded_json(values) == dumps_each(values, 6)
