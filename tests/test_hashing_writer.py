"""The shard files' writer: the bytes and sha256 of what was written, across its buffer's edges (failed
writes: tests/test_disk_full.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from datagen.store.atomic import WRITE_BUFFER, HashingWriter

SIZES = [0, 1, 4095, WRITE_BUFFER - 1, WRITE_BUFFER, WRITE_BUFFER + 1, 3 * WRITE_BUFFER + 4101]


def _pieces(total: int, seed: int) -> list:
    """Pieces of mixed kinds and sizes (bytes, multi-axis uint8 arrays, memoryviews), some over the buffer."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, total, dtype=np.uint8)
    cuts = np.sort(rng.integers(0, total + 1, 6)) if total else np.array([], dtype=np.int64)
    parts, lo = [], 0
    for i, hi in enumerate([*cuts.tolist(), total]):
        part = data[lo:hi]
        parts.append([part.tobytes(), part.reshape(1, -1, 1), memoryview(part.tobytes())][i % 3])
        lo = hi
    return parts


@pytest.mark.parametrize("total", SIZES)
def test_the_file_and_its_sha256_hold_every_byte_in_order(tmp_path, total):
    parts = _pieces(total, total)
    expected = b"".join(np.asarray(memoryview(p)).tobytes() for p in parts)
    path = tmp_path / "a.bin"
    with HashingWriter(path) as out:
        for part in parts:
            out.write(part)
        assert out.size == total
        digest = out.close()
    assert path.read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest()
