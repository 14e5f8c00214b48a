"""The zero-copy parts of the loader: scatter reads (Gather) and the shared-memory block ring."""

from __future__ import annotations

import gc
import logging
import os

import numpy as np
import pytest
import torch
from test_pipelines import indices, make_store

from pipelines.dataset import VideoDataset
from pipelines.errors import PipelineError, ShardError
from pipelines.gather import _GAP, _IOV_MAX, Gather
from pipelines.loader import make_loader
from pipelines.ring import BlockRing
from pipelines.sources import ShardRef
from pipelines.world import World


@pytest.mark.parametrize("stride", [1, 3])
def test_gather_reads_what_plain_slicing_reads(tmp_path, stride):
    """Many pieces (several preadv calls), short and long gaps, a step back, headers: as plain slicing."""
    rng = np.random.default_rng(0)
    t, frame, header_len, n = 7, (2, 3, 1), 16, 3 * _IOV_MAX // 2
    clip_bytes = t * int(np.prod(frame))
    gaps = rng.integers(header_len, 600, size=n)
    gaps[n // 3] = 3 * _GAP  # a gap too long to read through
    bases = np.cumsum(gaps + clip_bytes) - clip_bytes
    order = np.arange(n)
    order[[n // 2, n // 2 + 1]] = order[[n // 2 + 1, n // 2]]  # a step back
    blob = rng.integers(0, 256, size=int(bases[-1]) + clip_bytes, dtype=np.uint8)
    path = tmp_path / "blob.bin"
    path.write_bytes(blob.tobytes())
    length = 2
    firsts = rng.integers(0, t - (length - 1) * stride, size=n)
    rows = rng.permutation(n)
    out = np.zeros((n, length, *frame), dtype=np.uint8)
    headers = np.zeros((n, header_len), dtype=np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        gather = Gather(ShardRef(str(path), "wds"), fd)
        gather.add_windows(
            out,
            bases[order].tolist(),
            rows[order].tolist(),
            firsts[order].tolist(),
            stride,
            headers=[memoryview(h) for h in headers],
        )
        gather.flush()
        clips = np.stack([blob[b : b + clip_bytes].reshape(t, *frame) for b in bases])
        for k in range(n):
            f = firsts[k]
            assert np.array_equal(out[rows[k]], clips[k, f : f + (length - 1) * stride + 1 : stride])
            assert np.array_equal(
                headers[np.flatnonzero(order == k)[0]], blob[bases[k] - header_len : bases[k]]
            )

        beyond = Gather(ShardRef(str(path), "wds"), fd)
        beyond.add_windows(out[:1], [len(blob) - 3], [0], [0], 1)
        with pytest.raises(ShardError, match="truncated"):
            beyond.flush()
    finally:
        os.close(fd)


def _publish(ring: BlockRing, number: int, value: int):
    tensor, array = ring.writer(0, number)((4, 5))
    array[:] = value
    return ring.publish({"video": tensor, "key": []}, 0, number)


def test_ring_hands_out_views_until_freed_and_catches_overwrites():
    ring = BlockRing(workers=1, slots=3, capacity=64)
    first = _publish(ring, 0, 1)
    view = ring.take(first["ring"])
    slot = first["ring"][1]
    assert view.tolist() == [[1] * 5] * 4 and int(ring.held[0, slot]) == 1
    second = _publish(ring, 1, 2)  # the held slot is not reused
    assert second["ring"][1] != slot
    part = view[1:3].numpy()  # a numpy view of a torch view still holds the slot
    del view
    gc.collect()
    assert int(ring.held[0, slot]) == 1 and part.tolist() == [[1] * 5] * 2
    del part
    assert int(ring.held[0, slot]) == 0
    again = ring.take(second["ring"])
    ring.stamp[0, second["ring"][1]] = 12345  # a worker writing into a slot that is still in use
    with pytest.raises(PipelineError, match="overwrote"):
        ring.check()
    del again


def test_ring_falls_back_to_fresh_memory_when_every_slot_is_held():
    ring = BlockRing(workers=1, slots=2, capacity=64)
    views = [ring.take(_publish(ring, n, n)["ring"]) for n in range(2)]
    assert int(ring.fallbacks[0]) == 0
    item = _publish(ring, 2, 9)
    assert int(ring.fallbacks[0]) == 1
    assert "ring" not in item and item["video"].tolist() == [[9] * 5] * 4
    assert [v[0, 0].item() for v in views] == [0, 1]


def missed_ring(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "missed the shared-memory ring" in r.getMessage()]


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_batches_kept_by_the_caller_stay_intact(tmp_path, fmt, caplog):
    """Holding every batch (more than the ring's slots) must neither corrupt nor stall the loader."""
    store = make_store(tmp_path / "s", n_shards=6, per_shard=8)
    ds = VideoDataset(store, format=fmt, seed=2, world=World(), block_size=2)
    with caplog.at_level(logging.INFO, logger="pipelines"):
        loader = make_loader(ds, batch_size=2, num_workers=2, dtype=torch.uint8)
        kept = [(b["key"], b["video"]) for b in loader]
    assert sorted(k for keys, _ in kept for k in keys) == [f"{i:09d}" for i in range(48)]
    for keys, video in kept:
        assert [int(k) for k in keys] == indices(video)
    # 24 blocks, 6 slots a worker: however the blocks are dealt, a worker gets more than its slots, all held
    assert missed_ring(caplog)


def test_spawned_workers_share_the_ring(tmp_path, caplog):
    """The ring crosses a spawn (attached by name), not only a fork; batches match in-process ones."""
    store = make_store(tmp_path / "s", n_shards=4, per_shard=6)

    def batches(workers: int, context: str | None):
        ds = VideoDataset(store, format="wds", seed=4, world=World(), block_size=5)
        loader = make_loader(
            ds, batch_size=4, num_workers=workers, dtype=torch.uint8, multiprocessing_context=context
        )
        return [(b["key"], b["video"].clone()) for b in loader]

    with caplog.at_level(logging.INFO, logger="pipelines"):
        spawned, local = batches(1, "spawn"), batches(0, None)
    assert not missed_ring(caplog)  # every block of the spawned worker came through the ring
    assert [k for k, _ in spawned] == [k for k, _ in local]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(spawned, local, strict=True))
