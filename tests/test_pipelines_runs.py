"""The per-run read path (``fill_run``): a run of a shard whose .npy header is already known skips the
header's own read and parse, and still reads and refuses exactly what the full path does (issue #18: the
interleaved order reads many short runs, so their fixed cost matters)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from test_pipelines import SHAPE, clip_of, make_store, needs_thread_io, thread_io

from datagen.store.sample import sample_key
from pipelines import readers
from pipelines.errors import ShardError
from pipelines.readers import Placement, copy_rows, fill_run, read_run
from pipelines.sources import ShardRef
from pipelines.tar_index import _TAR_INDEX, tar_index

PER_SHARD = 12


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "store", n_shards=2, per_shard=PER_SHARD)


def shard_of(store: Path, fmt: str) -> ShardRef:
    ext = ".tar" if fmt == "wds" else ".h5"
    last = sample_key(PER_SHARD - 1)
    return ShardRef(str(store / f"test-000000{ext}"), fmt, PER_SHARD, sample_key(0), last)


def placements(rng: np.random.Generator, n: int) -> list[Placement]:
    """Every row kept, some dropped (resumption), windows at random offsets, stride 2."""
    t = SHAPE[0]
    rows = rng.permutation(n).astype(np.int64)
    dropped = np.where(rng.random(n) < 0.4, -1, rows)
    return [
        Placement(rows, np.zeros(n, dtype=np.int64), t, 1),
        Placement(dropped, np.zeros(n, dtype=np.int64), t, 1),
        Placement(rows, rng.integers(0, 3, size=n), 2, 1),
        Placement(dropped, rng.integers(0, 2, size=n), 2, 2),
    ]


def expected(shard: ShardRef, start: int, stop: int, place: Placement) -> np.ndarray:
    out = np.zeros((stop - start, place.length, *SHAPE[1:]), dtype=np.uint8)
    copy_rows(shard, read_run(shard, start, stop), out, place)
    return out


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_runs_read_what_the_generic_path_reads_cold_and_warm(store, fmt, monkeypatch):
    """Each placement, on a fresh index (the full path) and again once the header is known (the fast path),
    fills exactly the rows the generic read-then-copy path fills."""
    shard = shard_of(store, fmt)
    full_reads = []
    checked = readers._fill_tar_checked
    monkeypatch.setattr(readers, "_fill_tar_checked", lambda *a: full_reads.append(a[3]) or checked(*a))
    rng = np.random.default_rng(0)
    learned = 0
    for start, stop in [(0, PER_SHARD), (3, 8), (11, 12)]:
        for place in placements(rng, stop - start):
            want = expected(shard, start, stop, place)
            full_before = None
            for run in ("cold", "warm"):
                if run == "warm" and fmt == "wds" and tar_index(shard.url).notes:
                    learned, full_before = learned + 1, len(full_reads)
                out = np.zeros_like(want)
                keys, meta = fill_run(shard, start, stop, out, place)
                assert keys == [sample_key(i) for i in range(start, stop)] and meta is None
                assert np.array_equal(out, want)
            if full_before is not None:
                assert len(full_reads) == full_before  # the warm read took the fast path
            _TAR_INDEX.clear()  # the next placement starts cold again
    assert learned >= (10 if fmt == "wds" else 0)


@needs_thread_io
def test_a_warm_run_is_one_read_call(store):
    """Once a shard's header is known, a run costs one ``preadv`` (no header ``pread`` before it)."""
    shard = shard_of(store, "wds")
    place = Placement(np.arange(5), np.zeros(5, dtype=np.int64), SHAPE[0], 1)
    out = np.zeros((5, *SHAPE), dtype=np.uint8)
    fill_run(shard, 0, 5, out, place)
    before = thread_io("syscr")
    itself = thread_io("syscr") - before  # reading the count costs read calls too
    before = thread_io("syscr")
    fill_run(shard, 5, 10, out, place)
    assert thread_io("syscr") - before - itself == 1


def overwrite_keeping_mtime(path: Path, offset: int, data: bytes) -> None:
    """Change bytes in place with the size and mtime kept, so the cached index (and header) stay in use."""
    stat = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def video_offset(path: Path, member: int) -> int:
    with tarfile.open(path) as tar:
        return [m for m in tar.getmembers() if m.name.endswith(".video.npy")][member].offset_data


@pytest.mark.parametrize("first", [True, False], ids=["first-of-run", "inside-run"])
def test_a_header_changed_after_it_was_learned_fails_as_on_a_fresh_read(store, first):
    """A header broken after the shard's header was learned: the same error as a process that never read
    the shard (parse error as the run's first sample, 'differs' inside it), and the other runs still read."""
    shard = shard_of(store, "wds")
    path = Path(shard.url)
    place = Placement(np.arange(4), np.zeros(4, dtype=np.int64), SHAPE[0], 1)
    out = np.zeros((4, *SHAPE), dtype=np.uint8)
    fill_run(shard, 0, 4, out, place)  # learns the header
    overwrite_keeping_mtime(path, video_offset(path, 6), b"garbage!")
    start = 6 if first else 4
    with pytest.raises(ShardError) as warm:
        fill_run(shard, start, start + 4, out, place)
    _TAR_INDEX.clear()
    with pytest.raises(ShardError) as cold:
        fill_run(shard, start, start + 4, out, place)
    assert str(warm.value) == str(cold.value)
    assert ("not a .npy file" if first else "differs from the shard's first") in str(warm.value)
    fill_run(shard, 0, 4, out, place)  # header learned again: runs without the broken sample still read
    fill_run(shard, 8, 12, out, place)
    assert np.array_equal(out[:, 0, 1, 1, 0], np.arange(8, 12))


def test_a_shard_of_mixed_sizes_refuses_only_runs_holding_the_odd_one(tmp_path):
    """Sizes checked per run where the shard's members differ in size: a run without the odd sample reads
    on the fast path, one with it gets the full path's error."""
    path = tmp_path / "mixed.tar"
    long = (SHAPE[0] + 1, *SHAPE[1:])
    with wds.TarWriter(str(path)) as sink:
        for i in range(8):
            sink.write({"__key__": sample_key(i), "video.npy": clip_of(i, long if i == 5 else SHAPE)})
    shard = ShardRef(str(path), "wds", 8, sample_key(0), sample_key(7))
    place = Placement(np.arange(3), np.zeros(3, dtype=np.int64), SHAPE[0], 1)
    out = np.zeros((3, *SHAPE), dtype=np.uint8)
    fill_run(shard, 0, 3, out, place)
    assert not next(iter(tar_index(str(path)).notes.values())).sizes_ok
    with pytest.raises(ShardError, match=r"sample 000000005: \.npy of \d+ bytes, expected \d+"):
        fill_run(shard, 4, 7, out, place)
    _TAR_INDEX.clear()
    fill_run(shard, 4, 7, out, Placement(np.array([0, -1, 1]), np.zeros(3, dtype=np.int64), SHAPE[0], 1))
    fill_run(shard, 1, 4, out, place)  # fast path, sizes checked per run
    assert np.array_equal(out[:, 0, 1, 1, 0], [1, 2, 3])
