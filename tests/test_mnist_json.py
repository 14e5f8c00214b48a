"""`fast_json.TemplateJSON` (the Moving MNIST meta writer): byte-identical to json.dumps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datagen.sim.fast_json import TemplateJSON


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize("shape", [(), (1,), (3,), (2, 1), (4, 3, 2), (1, 1, 1, 1), (2, 3, 1, 2)])
def test_nested_integers_and_tokens_match_json_dumps(shape):
    rng = np.random.default_rng(len(shape))
    n = 25
    ints = rng.integers(0, 10 ** rng.integers(1, 19, (n, *shape)), dtype=np.int64)  # 1 to 19 digits
    floats = np.concatenate([rng.standard_normal(40) * 10.0 ** rng.integers(-300, 300, 40), [0.0, -0.0]])
    floats = np.concatenate([floats, [np.inf, -np.inf, np.nan, 1e-320, 5e-324, 1e16, 123456789.0]])
    picks = rng.integers(0, floats.size, (n, *shape))
    writer = TemplateJSON([b'{"a":', b',"bb":', b',"c":', b"}"], [shape, (), shape], [False, False, True])
    table = compact(floats.tolist())[1:-1]
    texts = writer.split(*writer.write([ints, np.arange(n) * 1000, picks], table))
    for k, text in enumerate(texts):
        expected = {"a": ints[k].tolist(), "bb": 1000 * k, "c": floats[picks[k]].tolist()}
        assert text == compact(expected)


def test_fields_side_by_side_and_empty_batches():
    writer = TemplateJSON([b"[", b",", b"]"], [(2,), (1,)], [False, False])
    texts = writer.split(*writer.write([np.array([[0, 10], [7, 99]]), np.array([[5], [0]])]))
    assert texts == [b"[[0,10],[5]]", b"[[7,99],[0]]"]
    assert writer.split(*writer.write([np.zeros((0, 2), int), np.zeros((0, 1), int)])) == []


def test_bad_input():
    with pytest.raises(ValueError, match="at least one number"):
        TemplateJSON([b"[", b",", b"]"], [(2,), (3, 0)], [False, False])
    with pytest.raises(ValueError, match="one more segment"):
        TemplateJSON([b"{", b"}"], [(2,), ()], [False, False])
    writer = TemplateJSON([b"[", b"]"], [(2,)], [True])
    with pytest.raises(ValueError, match="token indices"):
        writer.write([np.array([[0, 2]])], b"1.5,2.5")
    ints = TemplateJSON([b"[", b"]"], [(2,)], [False])
    with pytest.raises(ValueError, match="non-negative"):
        ints.write([np.array([[3, -1]])])
    assert ints.split(*ints.write([np.array([[3, 1]])])) == [b"[[3,1]]"]
