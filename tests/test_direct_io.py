"""Shard output: same bytes and sha256 with and without O_DIRECT, fallbacks, errors reaching the caller."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os

import numpy as np
import pytest

from datagen.store import direct_io
from datagen.store.atomic import atomic_path
from datagen.store.direct_io import ALIGN, CHUNK, ShardOutput

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + ALIGN + 5]


def _pieces(total: int, seed: int) -> list:
    """Pieces of mixed kinds and sizes (bytes, uint8 arrays, memoryviews), some over a staging buffer."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, total, dtype=np.uint8)
    cuts = np.sort(rng.integers(0, total + 1, 6)) if total else np.array([], dtype=np.int64)
    parts, lo = [], 0
    for i, hi in enumerate([*cuts.tolist(), total]):
        part = data[lo:hi]
        parts.append([part.tobytes(), part.reshape(1, -1), memoryview(part.tobytes())][i % 3])
        lo = hi
    return parts


@pytest.mark.parametrize("total", SIZES)
def test_direct_and_buffered_write_the_same_bytes(tmp_path, total):
    parts = _pieces(total, total)
    expected = b"".join(np.asarray(memoryview(p)).tobytes() for p in parts)
    for direct in (True, False):
        path = tmp_path / f"{direct}.bin"
        with ShardOutput(path, direct=direct) as out:
            for part in parts:
                out.write(part)
            assert out.size == total
            digest = out.close()
        assert path.read_bytes() == expected
        assert digest == hashlib.sha256(expected).hexdigest()


def test_direct_io_is_used_where_the_filesystem_allows(tmp_path):
    probe = tmp_path / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | direct_io.O_DIRECT))
    except (OSError, AttributeError):
        pytest.skip("this filesystem refuses O_DIRECT")
    with ShardOutput(tmp_path / "a.bin", direct=True) as out:
        assert out.direct
        assert fcntl.fcntl(out._fd, fcntl.F_GETFL) & direct_io.O_DIRECT
        out.write(b"x" * (CHUNK + 10))
        out.close()
    assert (tmp_path / "a.bin").stat().st_size == CHUNK + 10


def test_environment_switch_turns_direct_io_off(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAGEN_DIRECT_IO", "0")
    with ShardOutput(tmp_path / "a.bin") as out:
        assert not out.direct
        out.write(b"abc")
        out.close()
    assert (tmp_path / "a.bin").read_bytes() == b"abc"


def test_open_refused_falls_back_to_plain_writes(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if flags & direct_io.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    data = bytes(range(256)) * (CHUNK // 256 + 3)
    with ShardOutput(tmp_path / "a.bin", direct=True) as out:
        out.write(data)
        digest = out.close()
    assert not out.direct
    assert (tmp_path / "a.bin").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


def test_write_refused_mid_file_goes_on_without_o_direct(tmp_path, monkeypatch):
    """A filesystem that opens with O_DIRECT but refuses the writes: the same bytes, written plainly."""
    real_write = os.write

    def refuse_direct_writes(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct_io.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuse_direct_writes)
    data = np.random.default_rng(1).integers(0, 256, 2 * CHUNK + 12345, dtype=np.uint8).tobytes()
    with ShardOutput(tmp_path / "a.bin", direct=True) as out:
        out.write(data)
        digest = out.close()
    assert (tmp_path / "a.bin").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


def test_helper_error_reaches_the_caller_and_nothing_is_left(tmp_path, monkeypatch):
    real_write = os.write
    calls = {"n": 0}

    def disk_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full)
    final = tmp_path / "shard.tar"
    with pytest.raises(OSError, match="No space"):
        with atomic_path(final) as tmp, ShardOutput(tmp) as out:
            for _ in range(6):
                out.write(b"y" * CHUNK)
            out.close()
    assert list(tmp_path.iterdir()) == []
    # the staging buffers went back to the pool and work for the next file
    monkeypatch.setattr(os, "write", real_write)
    with ShardOutput(tmp_path / "b.bin") as out:
        out.write(b"z" * (CHUNK + 1))
        out.close()
    assert (tmp_path / "b.bin").read_bytes() == b"z" * (CHUNK + 1)
