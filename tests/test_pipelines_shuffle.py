"""Shuffle quality (issue #18): the interleaved order mixes many shards per batch, stays a pure function of
(seed, epoch, rank, world), independent of workers, and resumes exactly; ``interleave=1`` is the old order."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from test_pipelines import make_store, run

from pipelines.dataset import VideoDataset
from pipelines.loader import make_loader
from pipelines.order import Block, block_order, exact_blocks
from pipelines.world import World

PER_SHARD = 40
N_SHARDS = 24


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """24 shards of 40 small clips (960): enough shards for 8+ per batch of 32."""
    root = tmp_path_factory.mktemp("many")
    return make_store(root, n_shards=N_SHARDS, per_shard=PER_SHARD, formats=("wds",))


def shards_per_batch(keys: list[str], batch: int = 32) -> list[int]:
    full = len(keys) // batch * batch
    return [len({int(k) // PER_SHARD for k in keys[i : i + batch]}) for i in range(0, full, batch)]


def test_default_mixes_at_least_8_shards_per_batch_and_block_local_does_not(many):
    """The issue's target: >= 8 distinct shards per batch of 32 by default (block-local: 1-2)."""

    def keys(**kw) -> list[str]:
        ds = VideoDataset(many, seed=3, world=World(), block_size=PER_SHARD, **kw)
        ds.set_epoch(1)
        return run(make_loader(ds, batch_size=32, num_workers=0, dtype=torch.uint8))

    mixed, local = keys(), keys(interleave=1)
    assert sorted(mixed) == sorted(local) == [f"{i:09d}" for i in range(N_SHARDS * PER_SHARD)]
    assert np.mean(shards_per_batch(mixed)) >= 8 and min(shards_per_batch(mixed)) >= 6
    assert np.mean(shards_per_batch(local)) <= 2.5


def test_resampled_lanes_mix_shards_and_resume_exactly(many):
    """Resampled epochs draw 12 shards side by side (lanes): a batch mixes them; resuming is exact."""

    def loader(workers: int, **kw):
        ds = VideoDataset(many, epoch_mode="resampled", epoch_length=320, seed=2, world=World(), **kw)
        return make_loader(ds, batch_size=32, num_workers=workers, dtype=torch.uint8)

    keys = run(loader(0, block_size=PER_SHARD * 4))
    assert len(keys) == 320 and run(loader(2, block_size=PER_SHARD * 4)) == keys
    assert np.mean(shards_per_batch(keys)) >= 8
    assert np.mean(shards_per_batch(run(loader(0, block_size=PER_SHARD * 4, interleave=1)))) <= 5
    interrupted = loader(1, block_size=PER_SHARD * 4)
    it = iter(interrupted)
    next(it), next(it), next(it)
    state = interrupted.state_dict()
    del it
    resumed = loader(0, block_size=PER_SHARD * 4)
    resumed.load_state_dict(state)
    assert run(resumed) == keys[96:]


def test_block_local_order_is_the_previous_one():
    """interleave=1 gives the blocks the order had before interleaving (consecutive stream runs)."""
    blocks = exact_blocks([5, 5, 5, 3], seed=1, epoch=2, world=World(0, 1), shuffle=True, block_size=4)
    assert [b.position for b in blocks] == [0, 4, 8, 12, 16]
    assert all(b.pieces == () and b.seed_key == (1, 2, 1, b.position) for b in blocks)
    stream = [(s.shard, i) for b in blocks for s in b.segments for i in range(s.start, s.stop)]
    runs = [stream[i][1] + 1 == stream[i + 1][1] for i in range(len(stream) - 1)]
    assert sum(not r for r in runs) == 3  # only the shard boundaries break the stream


@pytest.mark.parametrize("world_size", [1, 3])
def test_interleaved_blocks_cover_each_sample_once_and_are_pure(world_size):
    sizes = [7, 40, 13, 40, 1, 22]
    seen: Counter = Counter()
    for rank in range(world_size):
        args = dict(seed=5, epoch=1, world=World(rank, world_size), shuffle=True, block_size=24, interleave=6)
        blocks = exact_blocks(sizes, **args)
        assert blocks == exact_blocks(sizes, **args)
        assert exact_blocks(sizes, **(args | {"epoch": 2})) != blocks
        assert all(b.known_size <= 24 and len(b.pieces) <= 6 for b in blocks)
        assert [b.position for b in blocks] == list(np.cumsum([0] + [b.known_size for b in blocks[:-1]]))
        seen.update((s.shard, i) for b in blocks for s in b.segments for i in range(s.start, s.stop))
    pad = -sum(sizes) % world_size
    assert len(seen) == sum(sizes) and sum(seen.values()) == sum(sizes) + pad


def test_stratified_block_order_spreads_every_piece_over_the_block():
    """Any 2k + 2 consecutive samples of a block of k equal pieces hold every piece (a uniform shuffle's
    do not)."""
    k, size = 12, 20
    block = Block(0, 0, (), (0,), pieces=(size,) * k)
    piece_of = np.repeat(np.arange(k), size)
    for seed in range(20):
        order = block_order(block, k * size, shuffle=True, rng=np.random.default_rng(seed))
        assert sorted(order.tolist()) == list(range(k * size))
        emitted = piece_of[order]
        assert min(len(set(emitted[i : i + 2 * k + 2])) for i in range(0, k * size - 2 * k - 2)) == k
    uniform = piece_of[np.random.default_rng(0).permutation(k * size)]
    assert min(len(set(uniform[i : i + 2 * k + 2])) for i in range(0, k * size - 2 * k - 2)) < k


def test_interleaved_order_is_worker_independent_and_resumes_exactly(many):
    """The new default keeps the loader's guarantees: any num_workers, exact mid-epoch resume."""

    def loader(workers: int):
        ds = VideoDataset(many, seed=11, frames=2, world=World(), block_size=64)
        ds.set_epoch(2)
        return make_loader(ds, batch_size=10, num_workers=workers, dtype=torch.uint8)

    expected = [(b["key"], b["video"].clone()) for b in loader(0)]
    assert [k for k, _ in expected] == [b["key"] for b in loader(2)]
    interrupted = loader(2)
    it = iter(interrupted)
    for _ in range(17):  # 170 samples: inside the third block
        next(it)
    state = interrupted.state_dict()
    del it
    assert state["interleave"] == 12 and state["sample_in_epoch"] == 170
    resumed = loader(1)
    resumed.load_state_dict(state)
    rest = [(b["key"], b["video"]) for b in resumed]
    assert len(rest) == len(expected) - 17
    for (k1, v1), (k2, v2) in zip(expected[17:], rest, strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_a_state_of_another_interleave_is_refused(many):
    from pipelines.errors import PipelineError

    old = make_loader(VideoDataset(many, world=World(), block_size=64, interleave=1), 4, num_workers=0)
    new = make_loader(VideoDataset(many, world=World(), block_size=64), 4, num_workers=0)
    with pytest.raises(PipelineError, match="interleave=1"):
        new.load_state_dict(old.state_dict())
    legacy = {k: v for k, v in old.state_dict().items() if k not in ("interleave", "history")}
    with pytest.raises(PipelineError, match="interleave=1"):  # states from before interleaving: block-local
        new.load_state_dict(legacy)


def test_a_state_from_before_interleaving_says_how_to_resume_it(many):
    """A state saved by the block-local default (no 'interleave' key, 256-clip blocks) names the settings that
    resume it, and a dataset made with them does resume it exactly."""
    from pipelines.errors import PipelineError

    ref = make_loader(VideoDataset(many, seed=2, world=World(), block_size=256, interleave=1), 8, 0)
    it = iter(ref)
    first = [next(it)["key"] for _ in range(5)]
    legacy = {k: v for k, v in ref.state_dict().items() if k not in ("interleave", "history")}
    rest = [b["key"] for b in it]
    with pytest.raises(PipelineError, match="make the VideoDataset with block_size=256, interleave=1"):
        make_loader(VideoDataset(many, seed=2, world=World()), 8, 0).load_state_dict(legacy)
    again = make_loader(VideoDataset(many, seed=2, world=World(), block_size=256, interleave=1), 8, 0)
    again.load_state_dict(legacy)
    assert [b["key"] for b in again] == rest and first
