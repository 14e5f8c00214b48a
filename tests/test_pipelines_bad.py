"""Bad data: truncated, corrupt, missing shards and manifest mismatches raise naming the shard, or are skipped
and counted when asked; read-time failures in DataLoader workers reach the caller (no hang)."""

from __future__ import annotations

import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
from test_pipelines import indices, make_store, run

from datagen.store.sample import sample_key
from pipelines.dataset import VideoDataset
from pipelines.errors import PipelineError, ShardError
from pipelines.loader import make_loader
from pipelines.npy import decode_npy
from pipelines.world import World


@pytest.fixture
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("bad"), n_shards=4, per_shard=5)


def shard(store: Path, s: int, ext: str) -> Path:
    return store / f"test-{s:06d}{ext}"


def corrupt_npy(path: Path, member: int) -> None:
    """Overwrite the .npy magic of a tar member in place (file size unchanged)."""
    with tarfile.open(path) as tar:
        offset = [m for m in tar.getmembers() if m.name.endswith(".video.npy")][member].offset_data
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"garbage!")


@pytest.mark.parametrize("ext", [".tar", ".h5"])
def test_truncated_shard_is_named_before_reading(store, ext):
    path = shard(store, 2, ext)
    path.write_bytes(path.read_bytes()[:-700])
    with pytest.raises(ShardError, match=f"{path.name}.*truncated"):
        VideoDataset(store, format="wds" if ext == ".tar" else "hdf5", world=World())


def test_truncated_shard_skipped_and_counted_when_asked(store):
    path = shard(store, 1, ".tar")
    path.write_bytes(path.read_bytes()[:-700])
    with pytest.warns(RuntimeWarning, match=path.name):
        ds = VideoDataset(store, on_error="skip", world=World())
    keys = run(make_loader(ds, batch_size=4, num_workers=0))
    assert sorted(keys) == [sample_key(i) for i in range(20) if not 5 <= i < 10]


def test_truncated_shard_without_manifest_is_named(store):
    path = shard(store, 3, ".tar")
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[-2].offset_data + 10  # inside the last sample's video
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ShardError, match=path.name):
        VideoDataset(str(store / "test-{000000..000003}.tar"), count_scan=True, world=World())


def test_missing_shard(store):
    shard(store, 0, ".h5").unlink()
    with pytest.raises(ShardError, match="test-000000.h5: missing"):
        VideoDataset(store, format="hdf5", world=World())
    with pytest.warns(RuntimeWarning, match="missing"):
        ds = VideoDataset(store, format="hdf5", on_error="skip", world=World())
    assert len(run(make_loader(ds, batch_size=4, num_workers=0))) == 15


def test_shard_vanishing_after_start_raises_from_worker(store):
    # one worker: after a worker error torch's DataLoader takes MP_STATUS_CHECK_INTERVAL (5 s) per worker to
    # shut down (the same with a bare IterableDataset); the error itself arrives at once
    ds = VideoDataset(store, world=World())
    shard(store, 2, ".tar").unlink()
    loader = make_loader(ds, batch_size=4, num_workers=1, timeout=60)
    with pytest.raises(ShardError, match="test-000002.tar"):
        run(loader)


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_corrupt_sample_raises_naming_shard_and_key(store, fmt):
    if fmt == "wds":
        corrupt_npy(shard(store, 1, ".tar"), 2)
        match = r"test-000001.tar.*sample 000000007"
    else:
        (store / "test-000001.h5").write_bytes(b"\0" * (store / "test-000001.h5").stat().st_size)
        match = "test-000001.h5: cannot read HDF5"
    ds = VideoDataset(store, format=fmt, world=World())
    with pytest.raises(ShardError, match=match):
        run(make_loader(ds, batch_size=4, num_workers=0))


def test_corrupt_sample_skipped_and_counted(store):
    corrupt_npy(shard(store, 1, ".tar"), 2)
    # block-local order: the block is the whole shard, read as one run
    ds = VideoDataset(store, on_error="skip", world=World(), block_size=5, interleave=1)
    loader = make_loader(ds, batch_size=4, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = run(loader)
    assert any("test-000001.tar" in str(w.message) for w in caught)
    assert loader.skipped == 5  # the shard run holding the bad sample
    assert len(keys) == 15


def test_corrupt_hdf5_is_named(store):
    path = shard(store, 0, ".h5")
    data = bytearray(path.read_bytes())
    data[:64] = b"\0" * 64  # superblock gone, size unchanged
    path.write_bytes(bytes(data))
    ds = VideoDataset(store, format="hdf5", world=World())
    with pytest.raises(ShardError, match="test-000000.h5: cannot read HDF5"):
        run(make_loader(ds, batch_size=4, num_workers=0))


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_manifest_count_mismatch_is_named(tmp_path, fmt):
    # a shard file that holds more samples than its (valid) manifest entry says: caught when read
    store = make_store(tmp_path / "short", n_shards=3, per_shard=5, last=3)
    ext = ".tar" if fmt == "wds" else ".h5"
    shutil.copy(shard(store, 0, ext), shard(store, 2, ext))
    ds = VideoDataset(store, format=fmt, world=World(), verify="none")
    with pytest.raises(ShardError, match="test-000002.*holds 5 samples but the manifest says 3"):
        run(make_loader(ds, batch_size=4, num_workers=0))


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_manifest_key_mismatch_is_named(store, fmt):
    # shard files swapped: sizes and counts agree, keys do not
    ext = ".tar" if fmt == "wds" else ".h5"
    shutil.copy(shard(store, 0, ext), shard(store, 1, ext))
    ds = VideoDataset(store, format=fmt, world=World(), shuffle=False)
    with pytest.raises(ShardError, match="test-000001.*first key 000000000 but the manifest says 000000005"):
        run(make_loader(ds, batch_size=4, num_workers=0))


def test_no_pickle_npy_refused():
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        decode_npy(buf.getvalue())


def test_bad_source_and_settings(tmp_path, store):
    with pytest.raises(PipelineError, match="no manifest.json"):
        VideoDataset(tmp_path, world=World())
    with pytest.raises(PipelineError, match="mode"):
        VideoDataset(store, mode="video", world=World())
    with pytest.raises(PipelineError, match="prefetch"):
        make_loader(VideoDataset(store, world=World()), batch_size=2, prefetch=1)
    only_h5 = tmp_path / "h5"
    shutil.copytree(store, only_h5)
    with pytest.raises(PipelineError, match="URL"):
        VideoDataset([str(only_h5 / "test-000000.h5"), "pipe:cat x"], world=World())
    item = next(iter(VideoDataset(store, world=World())))  # the bare dataset still works after all that
    assert item["video"].shape == (1, 4, 8, 8) and indices(item["video"][None]) == [int(item["key"])]
