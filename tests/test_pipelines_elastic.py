"""Elastic resumption (issue #18): a loader state saved on W ranks resumes on W' ranks (and another number of
workers): the rest of the epoch is split over the new ranks with nothing lost or repeated, and the epochs
after it are those of a run started on W' ranks. Pure order functions first, then real gloo processes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_pipelines import make_store, run
from test_pipelines_dist import free_port

from datagen.store.sample import sample_key
from pipelines.dataset import VideoDataset
from pipelines.loader import make_loader
from pipelines.order import block_order, block_rng, elastic_count, exact_blocks, kept_range
from pipelines.world import World

SIZES = [7, 40, 13, 40, 1, 22]  # 123 samples: uneven over 2 and 3 ranks, so every step pads
ORDER = dict(seed=5, epoch=1, shuffle=True, block_size=16, interleave=4)


def yielded(world: World, history=(), start: int = 0) -> list[tuple[int, int]]:
    """(shard, sample) a rank yields from ``start``: each block's reads, shuffled, cut to what it keeps."""
    out = []
    for block in exact_blocks(SIZES, world=world, history=history, start=start, **ORDER):
        reads = [(s.shard, i) for s in block.segments for i in range(s.start, s.stop)]
        order = block_order(block, len(reads), shuffle=True, rng=block_rng(block))
        lo, hi = kept_range(block, len(reads), start)
        out += [reads[j] for j in order[lo:hi]]
    return out


def test_elastic_split_loses_and_repeats_nothing_over_two_steps():
    """2 ranks read 21 each, 3 ranks read 7 each, 1 rank reads the rest: the samples the old run had left
    (its padding included), each once, plus the new world's padding (repeats of the first of them)."""
    full = [yielded(World(r, 2)) for r in range(2)]
    epoch = Counter(s for rank in full for s in rank)
    assert len(epoch) == sum(SIZES) and sum(epoch.values()) == 124  # one pad repeat
    first = [rank[:21] for rank in full]
    left = [s for rank in full for s in rank[21:]]  # 82
    second = [yielded(World(r, 3), [(2, 21)]) for r in range(3)]
    assert [len(s) for s in second] == [elastic_count(sum(SIZES), 3, [(2, 21)])] * 3 == [28] * 3
    assert [s for rank in second for s in rank] == left + left[:2]  # split in order, padded by the first
    # the resumed rank from position 7 of the 3-rank step gives exactly the rest of that rank
    assert yielded(World(1, 3), [(2, 21)], start=7) == second[1][7:]
    third = yielded(World(0, 1), [(2, 21), (3, 7)])
    assert len(third) == elastic_count(sum(SIZES), 1, [(2, 21), (3, 7)]) == 63
    assert third == [s for rank in second for s in rank[7:]]
    read = Counter(s for rank in first for s in rank) + Counter(s for rank in second for s in rank[:7])
    assert read + Counter(third) == epoch + Counter(left[:2])
    # a state taken at the very end of the epoch resumes as an empty epoch on the new world
    assert elastic_count(sum(SIZES), 3, [(2, 62)]) == 0 and yielded(World(2, 3), [(2, 62)]) == []


def test_elastic_blocks_keep_their_shuffle_and_windows(tmp_path):
    """Whole samples move: a clip read after the resize has the frames (window draws) it had before."""
    store = make_store(tmp_path / "s", n_shards=6, per_shard=8, formats=("wds",))  # 48 samples

    def clips(world: World, state=None, workers: int = 0) -> dict[str, list[int]]:
        ds = VideoDataset(store, seed=2, frames=2, world=world, block_size=8, interleave=4)
        ds.set_epoch(3)
        loader = make_loader(ds, batch_size=4, num_workers=workers, dtype=torch.uint8)
        if state is not None:
            loader.load_state_dict(state)
        return {k: b["video"][i, 0, :, 0, 0].tolist() for b in loader for i, k in enumerate(b["key"])}

    before = clips(World(0, 2)) | clips(World(1, 2))
    loader = make_loader(
        _epoch(VideoDataset(store, seed=2, frames=2, world=World(0, 2), block_size=8, interleave=4), 3), 4, 0
    )
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    del it
    after = [clips(World(r, 3), state, workers=r) for r in range(3)]  # 32 left over 3 ranks: one repeat
    assert sum(map(len, after)) == 48 - 16 + 1
    assert state["sample_in_epoch"] == 8 and state["history"] == []
    for part in after:
        assert all(before[k] == frames for k, frames in part.items())


def _epoch(ds: VideoDataset, epoch: int) -> VideoDataset:
    ds.set_epoch(epoch)
    return ds


# ---------------------------------------------------------------- real torch.distributed (gloo) runs
N = 48  # 8 shards of 6
SETTINGS = dict(seed=4, block_size=6, interleave=3)


def _first_part(store: Path, world_size: int, read: int) -> list[dict]:
    """The old world, in this process (explicit World values: the same split as under torch.distributed,
    tests/test_pipelines_dist.py): each rank reads ``read`` batches of epoch 1 and saves its state."""
    ranks = []
    for rank in range(world_size):
        ds = _epoch(VideoDataset(store, world=World(rank, world_size), **SETTINGS), 1)
        loader = make_loader(ds, batch_size=4, num_workers=1 - rank % 2, dtype=torch.uint8)
        it = iter(loader)
        keys = [k for _ in range(read) for k in next(it)["key"]]
        ranks.append({"keys": keys, "state": loader.state_dict()})
        del it
        loader.close()
    return ranks


def _resumed(rank: int, world_size: int, port: int, store: str, out: str) -> None:
    """A rank of the new world: loads rank 0's saved state, reads the rest of epoch 1, then epoch 2."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        ds = VideoDataset(store, **SETTINGS)  # the World from torch.distributed
        loader = make_loader(ds, batch_size=4, num_workers=rank % 2, dtype=torch.uint8)
        loader.load_state_dict(json.loads(Path(out, "state.json").read_text()))
        result = {"keys": run(loader), "state": loader.state_dict()}
        loader.set_epoch(2)
        result["next"] = run(loader)
        steps = torch.tensor([len(result["keys"])])
        gathered = [torch.zeros_like(steps) for _ in range(world_size)]
        dist.all_gather(gathered, steps)
        result["all"] = [int(g) for g in gathered]
        Path(out, f"b{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _resize(tmp_path: Path, old: int, new: int, read: int) -> tuple[list[dict], list[dict]]:
    store = make_store(tmp_path / "store", n_shards=8, per_shard=6, formats=("wds",))
    a = _first_part(store, old, read)
    assert all(r["state"] == a[0]["state"] | {"rank": i} for i, r in enumerate(a))  # lock-step states
    (tmp_path / "state.json").write_text(json.dumps(a[0]["state"]))
    # spawn: a forked child of this multi-threaded process (DataLoader workers, torch threads) can hang
    mp.spawn(_resumed, args=(new, free_port(), str(store), str(tmp_path)), nprocs=new)
    return a, [json.loads((tmp_path / f"b{r}.json").read_text()) for r in range(new)]


def _check(tmp_path: Path, a: list[dict], b: list[dict], new: int) -> None:
    assert len(set(b[0]["all"])) == 1  # the new ranks step in lock-step
    seen = Counter(k for r in a + b for k in r["keys"])
    assert seen == Counter(sample_key(i) for i in range(N))  # every sample of the epoch exactly once
    assert all(r["state"]["history"] == [[len(a), a[0]["state"]["sample_in_epoch"]]] for r in b)
    store = tmp_path / "store"
    fresh = [
        run(
            make_loader(
                _epoch(VideoDataset(store, seed=4, world=World(r, new), block_size=6, interleave=3), 2), 4
            )
        )
        for r in range(new)
    ]
    assert [r["next"] for r in b] == fresh  # the next epoch is a run started on the new world size


@pytest.mark.integration
def test_gloo_two_ranks_resume_on_three(tmp_path):
    a, b = _resize(tmp_path, 2, 3, read=3)  # 2 x 12 read, 24 left: 8 per new rank
    assert [len(r["keys"]) for r in b] == [8, 8, 8]
    _check(tmp_path, a, b, 3)


@pytest.mark.integration
def test_gloo_three_ranks_resume_on_one(tmp_path):
    a, b = _resize(tmp_path, 3, 1, read=2)  # 3 x 8 read, 24 left for the one rank
    assert [len(r["keys"]) for r in b] == [24]
    _check(tmp_path, a, b, 1)


def test_a_resampled_state_of_another_world_is_refused(tmp_path):
    from pipelines.errors import PipelineError

    store = make_store(tmp_path / "s", n_shards=2, per_shard=4, formats=("wds",))
    two = VideoDataset(store, epoch_mode="resampled", epoch_length=8, world=World(0, 2))
    one = VideoDataset(store, epoch_mode="resampled", epoch_length=8, world=World())
    state = make_loader(two, 4, 0).state_dict()
    with pytest.raises(PipelineError, match="world_size=2"):
        make_loader(one, 4, 0).load_state_dict(state)
