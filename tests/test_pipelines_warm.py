"""Per-clip cost must not grow with the store: shard indexes stay cached and ring slots are reused.

A worker visits nearly every shard each epoch; a cache holding fewer shards than the store then misses on
every visit (a 64-entry cache made a 128-shard store 4-5x slower per clip than a 16-shard one). Measured as
the read system calls of the thread that reads (Linux's per-thread ``/proc/.../io``).
"""

from __future__ import annotations

import logging

import pytest
import torch
from test_pipelines import make_store, needs_thread_io, thread_io

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
    assert cache.get("b") is None and cache.get("a") == [0] * 4 and cache.get("c") == [0] * 4
    cache.put("huge", [1] * 50)  # over the budget alone: kept, everything older goes
    assert len(cache) == 1 and cache.get("huge") == [1] * 50 and cache.get("a") is None


@needs_thread_io
@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_later_epochs_read_only_their_samples(many_shards, fmt):
    """After epoch 0 indexed every shard, an epoch costs at most a read per sample and one per shard (the
    index scans cost more than that: epoch 0 shows them; with too small a cache every epoch did)."""
    # block-local order (interleaved pieces cost a read each: tests/test_pipelines_shuffle.py)
    ds = VideoDataset(many_shards, format=fmt, seed=1, world=World(), block_size=8, interleave=1)
    loader = make_loader(ds, batch_size=8, num_workers=0, dtype=torch.uint8)  # read in this thread
    calls = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        before = thread_io("syscr")
        keys = [k for batch in loader for k in batch["key"]]
        calls.append(thread_io("syscr") - before)
        assert sorted(keys) == [f"{i:09d}" for i in range(2 * N_SHARDS)]
    budget = len(keys) + N_SHARDS
    assert calls[0] > budget and calls[1] <= budget and calls[2] <= budget, calls


def test_a_normal_epoch_never_falls_back_to_fresh_shared_memory(many_shards, caplog):
    """Batches used and dropped, as in training: every block goes through a reused ring slot."""
    ds = VideoDataset(many_shards, format="wds", seed=3, world=World(), block_size=4)
    loader = make_loader(ds, batch_size=3, num_workers=2, dtype=torch.uint8)
    with caplog.at_level(logging.INFO, logger="pipelines"):
        for epoch in range(2):
            loader.set_epoch(epoch)
            assert sum(len(batch["key"]) for batch in loader) == 2 * N_SHARDS
        kept = [batch["video"] for batch in loader]  # an epoch whose batches are all kept: slots run out
    assert len(kept) == -(-2 * N_SHARDS // 3)
    missed = [r.getMessage() for r in caplog.records if "missed the shared-memory ring" in r.getMessage()]
    assert len(missed) == 1, missed  # the third epoch's, not the first two
