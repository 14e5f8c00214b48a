"""Per-clip cost must not grow with the store: shard indexes stay cached and ring slots are reused.

A worker visits nearly every shard each epoch; a cache holding fewer shards than the store then misses on
every visit (a 64-entry cache made a 128-shard store 4-5x slower per clip than a 16-shard one).
"""

from __future__ import annotations

import pytest
import torch
from test_pipelines import make_store

import pipelines.hdf5_files as hdf5_files
import pipelines.tar_index as tar_index
from pipelines.dataset import VideoDataset
from pipelines.index_cache import IndexCache
from pipelines.loader import make_loader
from pipelines.world import World

N_SHARDS = 80  # more than the 64 entries the caches used to hold


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("many"), n_shards=N_SHARDS, per_shard=2, shape=(2, 4, 4, 1))


def test_index_cache_evicts_least_recently_used_by_samples():
    cache: IndexCache[list[int]] = IndexCache(len, max_samples=10)
    cache.put("a", [0] * 4)
    cache.put("b", [0] * 4)
    assert cache.get("a") == [0] * 4  # "b" is now the least recently used
    cache.put("c", [0] * 4)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("huge", [0] * 50)  # over the budget alone: kept, everything older goes
    assert len(cache) == 1 and cache.get("huge") is not None


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_later_epochs_read_no_shard_index_again(many_shards, fmt, monkeypatch):
    """Epoch 0 indexes every shard once; epochs 1 and 2 open, scan or index none (in-process reads)."""
    calls = {"scan": 0, "open": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(tar_index, "_scan_tar", counted("scan", tar_index._scan_tar))
    monkeypatch.setattr(hdf5_files, "h5_chunk_offsets", counted("scan", hdf5_files.h5_chunk_offsets))
    monkeypatch.setattr(hdf5_files, "h5_file", counted("open", hdf5_files.h5_file))
    ds = VideoDataset(many_shards, format=fmt, seed=1, world=World(), block_size=8)
    loader = make_loader(ds, batch_size=8, num_workers=0, dtype=torch.uint8)
    seen = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        keys = [k for batch in loader for k in batch["key"]]
        assert sorted(keys) == [f"{i:09d}" for i in range(2 * N_SHARDS)]
        seen.append(dict(calls))
    assert seen[0]["scan"] == N_SHARDS
    assert seen[2] == seen[0]


def test_a_normal_epoch_never_falls_back_to_fresh_shared_memory(many_shards):
    """Batches used and dropped, as in training: every block goes through a reused ring slot."""
    ds = VideoDataset(many_shards, format="wds", seed=3, world=World(), block_size=4)
    loader = make_loader(ds, batch_size=3, num_workers=2, dtype=torch.uint8)
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert sum(len(batch["key"]) for batch in loader) == 2 * N_SHARDS
    ring = loader._block_ring
    assert ring is not None and int(ring.received.sum()) > 0
    assert ring.fallbacks.tolist() == [0, 0]
