"""Mixing stores by proportion (issue #18): exact proportions and source epochs, a deterministic order that
does not depend on workers, exact mid-epoch resumption, and a "source" index per batch item."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from test_pipelines import indices, make_store

from pipelines import mix
from pipelines.dataset import VideoDataset
from pipelines.errors import PipelineError
from pipelines.loader import make_loader
from pipelines.mix import apportion
from pipelines.world import World


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    small = make_store(root / "a", n_shards=4, per_shard=5, formats=("wds",))  # keys 0..19
    large = make_store(root / "b", n_shards=6, per_shard=10, formats=("wds",))  # keys 0..59
    return small, large


def mixed(stores, world: World = World(), **kw):
    small, large = stores
    a = VideoDataset(small, seed=1, frames=2, world=world, block_size=8)
    b = VideoDataset(large, seed=2, frames=2, world=world, block_size=8)
    return mix([a, b], [3, 1], seed=7, **kw)


def items(loader) -> list[tuple[int, str, tuple[int, ...]]]:
    """(source, key, first frame numbers) of every sample, checking each clip is the sample its key names."""
    out = []
    for batch in loader:
        assert [int(k) for k in batch["key"]] == indices(batch["video"])
        frames = batch["video"][:, 0, :, 0, 0].tolist()
        out += [(int(s), k, tuple(f)) for s, k, f in zip(batch["source"], batch["key"], frames, strict=True)]
    return out


def test_apportion_is_exact_and_proportional():
    assert apportion(80, [3, 1]) == [60, 20]
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [0, 2, 5]) == [0, 2, 5]
    with pytest.raises(PipelineError, match="weights"):
        apportion(5, [0, 0])


def test_proportions_and_exact_source_epochs(stores):
    """Mix epoch = 80 samples: 60 of the small store (three of its exact epochs) and 20 of the large one
    (a third of its epoch 0, which the next two mix epochs complete); every batch in proportion."""
    ds = mixed(stores)
    loader = make_loader(ds, batch_size=16, num_workers=0, dtype=torch.uint8)
    assert len(ds) == 80 and len(loader) == 5
    epochs = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        got = items(loader)
        assert Counter(s for s, _, _ in got) == {0: 60, 1: 20}
        epochs.append(got)
        for i in range(0, 80, 16):
            assert 10 <= sum(s == 0 for s, _, _ in got[i : i + 16]) <= 14  # 12 expected
    first = Counter(k for s, k, _ in epochs[0] if s == 0)
    assert first == Counter({f"{i:09d}": 3 for i in range(20)})  # the small store's epochs 0, 1, 2
    large = Counter(k for got in epochs for s, k, _ in got if s == 1)
    assert large == Counter({f"{i:09d}": 1 for i in range(60)})  # its epoch 0, exactly once


def test_order_is_deterministic_and_independent_of_workers(stores):
    def run(workers: int, epoch: int = 1, seed_shift: int = 0):
        ds = mixed(stores)
        ds.seed += seed_shift
        ds.set_epoch(epoch)
        return items(make_loader(ds, batch_size=10, num_workers=workers, dtype=torch.uint8))

    base = run(0)
    assert run(2) == base and run(1) == base
    assert run(0, epoch=2) != base and run(0, seed_shift=1) != base


def test_ranks_split_every_source_and_step_together(stores):
    got = [items(make_loader(mixed(stores, World(r, 2)), 8, 0, dtype=torch.uint8)) for r in range(2)]
    assert len(got[0]) == len(got[1]) == 40
    small = Counter(k for rank in got for s, k, _ in rank if s == 0)
    assert small == Counter({f"{i:09d}": 3 for i in range(20)})


def test_resume_mid_epoch_is_exact(stores):
    def loader(workers: int):
        ds = mixed(stores)
        ds.set_epoch(4)
        return make_loader(ds, batch_size=6, num_workers=workers, dtype=torch.uint8)

    expected = items(loader(0))
    interrupted = loader(2)
    it = iter(interrupted)
    for _ in range(5):  # 30 samples: inside a block
        next(it)
    state = interrupted.state_dict()
    del it
    assert state["sample_in_epoch"] == 30 and state["epoch"] == 4
    resumed = loader(1)
    resumed.load_state_dict(state)
    assert items(resumed) == expected[30:]


def _read_part(stores, world_size: int, batches: int, epoch: int = 3) -> tuple[list[list], dict]:
    """Each rank of the old world reads ``batches`` batches of 6 of mix epoch ``epoch``; rank 0's state."""
    parts, state = [], None
    for rank in range(world_size):
        loader = make_loader(
            _at(mixed(stores, World(rank, world_size)), epoch), 6, rank % 2, dtype=torch.uint8
        )
        it = iter(loader)
        got = []
        for _ in range(batches):
            batch = next(it)
            got += [(int(s), k) for s, k in zip(batch["source"], batch["key"], strict=True)]
        parts.append(got)
        state = state or loader.state_dict()
        del it
        loader.close()
    return parts, state


def _at(ds, epoch: int):
    ds.set_epoch(epoch)
    return ds


@pytest.mark.parametrize("old, new, batches", [(2, 3, 2), (3, 1, 1), (1, 2, 5)])
def test_a_mix_resumes_on_another_world_size(stores, old, new, batches):
    """What the old ranks had left of the mix epoch, each sample with its source, is split evenly over the
    new ranks (padded by repeating the first of it) in any number of workers; the next epoch is that of a
    mix made on the new world."""
    full = [
        [
            (s, k)
            for s, k, _ in items(make_loader(_at(mixed(stores, World(r, old)), 3), 6, 0, dtype=torch.uint8))
        ]
        for r in range(old)
    ]
    parts, state = _read_part(stores, old, batches)
    assert parts == [rank[: 6 * batches] for rank in full]
    left = [x for rank in full for x in rank[6 * batches :]]
    resumed = []
    for rank in range(new):
        loader = make_loader(mixed(stores, World(rank, new)), 6, num_workers=rank % 2, dtype=torch.uint8)
        loader.load_state_dict(state)
        got = [(s, k) for s, k, _ in items(loader)]
        assert state["history"] == [] and loader.state_dict()["history"] == [[old, 6 * batches]]
        resumed.append(got)
        loader.set_epoch(4)
        fresh = make_loader(_at(mixed(stores, World(rank, new)), 4), 6, 0, dtype=torch.uint8)
        assert items(loader) == items(fresh)
    share = -(-len(left) // new)
    assert [len(r) for r in resumed] == [share] * new
    assert [x for r in resumed for x in r] == (left + left)[: share * new]


def test_sources_must_agree(stores, tmp_path):
    small, large = stores
    a = VideoDataset(small, world=World())
    with pytest.raises(PipelineError, match="differs from source 0"):
        mix([a, VideoDataset(large, frames=2, world=World())], [1, 1])
    with pytest.raises(PipelineError, match="one weight per source"):
        mix([a], [1, 2])


def test_frame_mode_with_meta(stores):
    small, large = stores
    a = VideoDataset(small, mode="frame", with_meta=True, world=World(), block_size=8)
    b = VideoDataset(large, mode="frame", with_meta=True, world=World(), block_size=8)
    loader = make_loader(mix([a, b], [1, 1], epoch_size=30), 7, num_workers=1, dtype=torch.uint8)
    batches = list(loader)
    assert [len(batch["key"]) for batch in batches] == [7, 7, 7, 7, 2]
    for batch in batches:
        assert batch["video"].shape[1:] == (1, 8, 8)
        assert [int(k) for k in batch["key"]] == indices(batch["video"])
        assert [m["index"] for m in batch["meta"]] == [int(k) for k in batch["key"]]
    assert Counter(int(s) for batch in batches for s in batch["source"]) == {0: 15, 1: 15}
