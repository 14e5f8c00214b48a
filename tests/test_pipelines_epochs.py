"""Persistent workers stream on across epoch boundaries: the same batches as a fresh start of every epoch,
one worker stream for epochs taken in order (the next epoch read ahead, no block read twice), a restart for
anything else (blocks read ahead are dropped, the asked epoch read from its start)."""

from __future__ import annotations

import gc
import multiprocessing
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_pipelines import make_store
from test_pipelines_bad import corrupt_npy, shard

from pipelines.dataset import VideoDataset
from pipelines.errors import PipelineError
from pipelines.loader import make_loader
from pipelines.world import World


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("epochs"), last=3)  # 38 samples


def batches(loader, stop: int | None = None) -> list[tuple[list[str], torch.Tensor]]:
    out = []
    for batch in loader:
        out.append((batch["key"], batch["video"].clone()))
        if stop is not None and len(out) == stop:
            break
    return out


def fresh_epoch(make_dataset, epoch: int) -> list[tuple[list[str], torch.Tensor]]:
    """The reference: a new in-process loader for the epoch (nothing carried over)."""
    dataset = make_dataset()
    dataset.set_epoch(epoch)
    return batches(make_loader(dataset, batch_size=5, num_workers=0, dtype=torch.uint8))


def assert_same(got, expected) -> None:
    assert [keys for keys, _ in got] == [keys for keys, _ in expected]
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert torch.equal(a, b)


class LoggedDataset(VideoDataset):
    """A dataset whose workers append the identity (``seed_key``) of every block they read to ``log``."""

    log = ""

    def read_block(self, block, start=0, alloc=None):
        with open(self.log, "a") as fh:  # one short O_APPEND write per line: whole lines from any worker
            fh.write(f"{block.seed_key}\n")
        return super().read_block(block, start, alloc)


def logged(dataset: VideoDataset, log: Path) -> LoggedDataset:
    dataset.__class__, dataset.log = LoggedDataset, str(log)
    log.touch()
    return dataset  # type: ignore[return-value]


def reads(dataset: LoggedDataset) -> Counter:
    """How often each block was read so far."""
    return Counter(Path(dataset.log).read_text().splitlines())


def keys_of(dataset: VideoDataset, epoch: int) -> set[str]:
    return {str(block.seed_key) for block in dataset.blocks(0, epoch)}


def wait_for_read_ahead(dataset: LoggedDataset, epoch: int) -> None:
    """Blocks of ``epoch`` are read before the caller asks for that epoch (the stream runs on)."""
    deadline = time.monotonic() + 30
    while not keys_of(dataset, epoch) & set(reads(dataset)):
        assert time.monotonic() < deadline, f"no block of epoch {epoch} was read ahead"
        time.sleep(0.02)


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
@pytest.mark.parametrize("workers", [2, 3])  # 10 blocks an epoch: 3 workers start each epoch at another one
@pytest.mark.parametrize("epoch_mode", ["exact", "resampled"])
def test_epochs_in_order_come_from_one_worker_stream(store, fmt, workers, epoch_mode, tmp_path):
    length = 13 if epoch_mode == "resampled" else None

    def make_dataset():
        return VideoDataset(
            store, format=fmt, seed=3, world=World(), block_size=4, epoch_mode=epoch_mode, epoch_length=length
        )

    dataset = logged(make_dataset(), tmp_path / "reads.log")
    loader = make_loader(dataset, batch_size=5, num_workers=workers, dtype=torch.uint8)
    for epoch in range(4):
        loader.set_epoch(epoch)
        assert_same(batches(loader), fresh_epoch(make_dataset, epoch))
        wait_for_read_ahead(dataset, epoch + 1)
    loader.close()
    read = reads(dataset)
    assert set().union(*(keys_of(dataset, e) for e in range(4))) <= set(read)
    assert max(read.values()) == 1  # one stream: nothing read ahead was dropped and read again


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_epochs_out_of_order_or_broken_off_restart_the_stream(store, fmt, tmp_path):
    def make_dataset():
        return VideoDataset(store, format=fmt, seed=4, world=World(), block_size=4)

    dataset = logged(make_dataset(), tmp_path / "reads.log")
    loader = make_loader(dataset, batch_size=5, num_workers=3, dtype=torch.uint8)
    assert_same(batches(loader), fresh_epoch(make_dataset, 0))
    assert_same(batches(loader), fresh_epoch(make_dataset, 0))  # no set_epoch: epoch 0 again
    loader.set_epoch(5)
    assert_same(batches(loader), fresh_epoch(make_dataset, 5))  # a jump
    loader.set_epoch(2)
    assert_same(batches(loader, stop=2), fresh_epoch(make_dataset, 2)[:2])  # broken off
    loader.set_epoch(3)
    assert_same(batches(loader), fresh_epoch(make_dataset, 3))
    loader.set_epoch(4)
    assert_same(batches(loader), fresh_epoch(make_dataset, 4))  # in order again: no restart
    loader.close()
    read = reads(dataset)
    assert {read[key] for key in keys_of(dataset, 0)} == {2}  # read from its start both times
    assert {read[key] for key in keys_of(dataset, 4)} == {1}  # followed on from 3, not restarted
    # (the jump to 5 and the restart at 3 read every block once, and blocks read ahead before them again)


def test_resuming_a_followed_epoch_mid_way(store):
    def make_dataset():
        return VideoDataset(store, seed=6, world=World(), block_size=4)

    loader = make_loader(make_dataset(), batch_size=5, num_workers=2, dtype=torch.uint8)
    batches(loader)
    loader.set_epoch(1)
    head = batches(loader, stop=3)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["sample_in_epoch"] == 15
    loader.load_state_dict(state)
    assert_same(head + batches(loader), fresh_epoch(make_dataset, 1))


def test_skipped_samples_neither_end_an_epoch_early_nor_leak_into_the_next(tmp_path):
    store = make_store(tmp_path / "bad", last=3)
    corrupt_npy(shard(store, 7, ".tar"), 1)  # epochs come out short: their end is never counted down to 0

    def make_dataset():
        return VideoDataset(store, format="wds", seed=8, world=World(), block_size=4, on_error="skip")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = logged(make_dataset(), tmp_path / "reads.log")
        loader = make_loader(dataset, batch_size=5, num_workers=2, dtype=torch.uint8)
        for epoch in range(3):
            loader.set_epoch(epoch)
            got = batches(loader)
            assert_same(got, fresh_epoch(make_dataset, epoch))
            assert sum(len(keys) for keys, _ in got) < 38
        loader.close()
    assert max(reads(dataset).values()) == 1  # one stream across the short epochs


def test_close_stops_the_workers_and_a_later_pass_starts_new_ones(store):
    before = set(multiprocessing.active_children())
    loader = make_loader(VideoDataset(store, seed=1, world=World()), batch_size=5, num_workers=2)
    first = [batch["key"] for batch in loader]
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    loader.close()
    assert not workers & set(multiprocessing.active_children())
    assert [batch["key"] for batch in loader] == first
    loader.close()


def test_close_stops_the_workers_even_while_the_caller_holds_an_iterator(store):
    before = set(multiprocessing.active_children())
    ds = VideoDataset(store, seed=1, world=World(), block_size=4)  # 10 blocks: most not yet taken
    loader = make_loader(ds, batch_size=5, num_workers=2)
    running = iter(loader)
    next(running)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    started = time.perf_counter()
    loader.close()
    assert time.perf_counter() - started < 3  # no join timing out on a worker that never got the sentinel
    assert not workers & set(multiprocessing.active_children())
    with pytest.raises(PipelineError, match="closed during iteration"):
        list(running)  # what the main process had already taken comes out first


def test_a_loader_dying_in_a_reference_cycle_stops_its_workers_at_once(store):
    before = set(multiprocessing.active_children())
    loader = make_loader(VideoDataset(store, seed=1, world=World()), batch_size=5, num_workers=2)
    loader.me = loader  # e.g. a trainer that holds the loader and is held by it
    sum(len(batch["key"]) for batch in loader)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    del loader
    started = time.perf_counter()
    gc.collect()
    assert time.perf_counter() - started < 3  # torch's own shutdown waits 5 s per worker here
    assert not workers & set(multiprocessing.active_children())
