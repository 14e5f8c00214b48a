"""Ground truth (`meta`): plain dicts whose values any reader sees, encoded by orjson as the straightforward
dict of lists would be."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from datagen.convert import MNIST_TEST_SEQ
from datagen.sim.balls import BALLS, ground_truth, simulate_balls
from datagen.store.wds import meta_bytes


def straightforward_meta(params, traj, k, index):
    scale = params["size"] / params["box"]
    return {
        "index": index,
        "n_balls": params["n_balls"],
        "radius_px": round(params["radius"] * scale, 6),
        "positions": np.round(traj.positions[k] * scale - 0.5, 6).tolist(),
        "velocities": np.round(traj.velocities[k] * scale, 6).tolist(),
    }


@pytest.mark.parametrize(("n_balls", "size"), [(1, 30), (3, 64), (2, 7)])
def test_balls_meta_encodes_as_the_straightforward_dict(n_balls, size):
    params = BALLS.validate({"n_balls": n_balls, "size": size, "frames": 9})
    indices = range(40, 240)
    _, traj = simulate_balls(params, 3, indices)
    for k, (i, meta) in enumerate(zip(indices, ground_truth(params, traj, indices), strict=True)):
        plain = straightforward_meta(params, traj, k, i)
        assert meta_bytes(meta) == meta_bytes(plain)
        assert json.loads(meta_bytes(meta)) == plain and list(meta) == list(plain)


def test_meta_is_a_plain_dict_that_c_level_readers_see():
    s = next(BALLS.generate(BALLS.validate({"n_balls": 2, "frames": 3}), 1, 7, 8))
    assert type(s.meta) is dict
    assert dict.get(s.meta, "index") == 7 and dict.__getitem__(s.meta, "n_balls") == 2
    positions = dict.get(s.meta, "positions")
    assert isinstance(positions, np.ndarray) and positions.shape == (3, 2, 2)
    assert not positions.flags.writeable  # a view shared with the batch: read-only
    text = orjson.dumps(s.meta, option=orjson.OPT_SERIALIZE_NUMPY)
    assert json.loads(text)["positions"] == positions.tolist()


def test_encoding_is_canonical_json():
    meta = {"b": np.arange(6).reshape(2, 3).T, "a": np.float32(1.5), "c": [1e-5, 5e-7, 1e16, -0.0, 2.5]}
    meta |= {"d": (1, 2), "e": np.int64(3), "f": np.array([np.nan, np.inf]), "g": "é"}
    text = meta_bytes(meta)
    assert text == (
        b'{"a":1.5,"b":[[0,3],[1,4],[2,5]],"c":[0.00001,5e-7,1e+16,-0.0,2.5],"d":[1,2],"e":3,'
        b'"f":[null,null],"g":"\xc3\xa9"}'
    )  # sorted keys, no spaces, shortest round-trip floats, UTF-8, non-finite numbers as null
    assert json.loads(text)["b"] == [[0, 3], [1, 4], [2, 5]]  # a transposed (non-contiguous) array too
    with pytest.raises(TypeError):
        meta_bytes({"x": object()})


def test_metas_of_plain_ints_and_strings_encode_as_json_did():
    """Stores whose metas hold only such values (mnist_test_seq) keep their bytes and version."""
    assert MNIST_TEST_SEQ.version == "1"
    meta = {"index": 12, "source": "mnist_test_seq", "source_index": 12}
    assert meta_bytes(meta) == json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
