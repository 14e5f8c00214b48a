"""Streaming loaders on tiny real stores (both formats), written with the project's own shard writers.

Sample ``i`` has every pixel = ``i % 256`` except pixel (0, 0) of frame ``t``, which holds ``t``: so a batch
tells which sample (pixel (1, 1)) and which frames (pixel (0, 0)) it contains.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from datagen.store.manifest import build_manifest, shard_name, write_manifest, write_shard
from datagen.store.sample import Sample, sample_key
from pipelines.dataset import VideoDataset
from pipelines.errors import PipelineError
from pipelines.loader import make_loader
from pipelines.order import exact_blocks, rank_share, resampled_blocks
from pipelines.world import World

SHAPE = (4, 8, 8, 1)


def clip_of(index: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    video = np.full(shape, index % 256, dtype=np.uint8)
    video[:, 0, 0, :] = np.arange(shape[0], dtype=np.uint8)[:, None]
    return video


def make_store(
    root: Path,
    n_shards: int = 8,
    per_shard: int = 5,
    formats=("wds", "hdf5"),
    shape=SHAPE,
    last: int | None = None,
) -> Path:
    """A store of ``n_shards`` shards of ``per_shard`` samples (``last`` in the final one)."""
    root.mkdir(parents=True, exist_ok=True)
    entries, index = [], 0
    for s in range(n_shards):
        count = last if (last is not None and s == n_shards - 1) else per_shard
        samples = [
            Sample(sample_key(i), clip_of(i, shape), {"index": i}) for i in range(index, index + count)
        ]
        index += count
        for fmt in formats:
            entries.append(write_shard(root, shard_name("test", s, fmt), fmt, samples, {"generator": "test"}))
    record = {
        "generator": {"name": "test", "version": "1"},
        "params": {},
        "seed": 0,
        "layout": {"n_samples": index, "shard_size": per_shard, "formats": list(formats), "prefix": "test"},
        "sample": {"video": {"dtype": "uint8", "shape": list(shape), "layout": "THWC"}},
    }
    write_manifest(root, build_manifest(record, entries))
    return root


def thread_io(field: str) -> int:
    """This thread's I/O count so far (``syscr``: read system calls, ``rchar``: bytes read), from Linux's
    per-thread ``/proc/.../io``: what a loader reading in this thread (``num_workers=0``) costs."""
    io = Path(f"/proc/self/task/{threading.get_native_id()}/io")
    return int(dict(line.split(": ") for line in io.read_text().splitlines())[field])


needs_thread_io = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="needs Linux's per-thread I/O counts"
)


def indices(batch_video: torch.Tensor) -> list[int]:
    """Sample indices of a uint8 batch (B, C, T, H, W) or (B, C, H, W), read from pixel (1, 1)."""
    return batch_video[..., 1, 1].reshape(len(batch_video), -1)[:, 0].tolist()


def run(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), last=3)


# ---------------------------------------------------------------- pure order functions
def test_rank_share_pads_and_splits_evenly():
    shares = [rank_share(10, World(r, 3)) for r in range(3)]
    assert [count for _, count, _ in shares] == [4, 4, 4]
    assert [start for start, _, _ in shares] == [0, 4, 8]
    assert shares[0][2] == 2


def test_exact_blocks_cover_epoch_once_per_rank_set():
    sizes = [5, 5, 5, 3]
    seen = []
    for rank in range(2):
        for block in exact_blocks(sizes, seed=1, epoch=2, world=World(rank, 2), shuffle=True, block_size=4):
            for seg in block.segments:
                seen += [(seg.shard, i) for i in range(seg.start, seg.stop)]
    assert len(seen) == 18 and len(set(seen)) == 18
    again = exact_blocks(sizes, seed=1, epoch=2, world=World(0, 2), shuffle=True, block_size=4)
    assert again == exact_blocks(sizes, seed=1, epoch=2, world=World(0, 2), shuffle=True, block_size=4)
    other = exact_blocks(sizes, seed=1, epoch=3, world=World(0, 2), shuffle=True, block_size=4)
    assert other != again


def test_resampled_blocks_are_endless_and_deterministic():
    def take():
        blocks = resampled_blocks([5, 5, 5], seed=0, epoch=0, world=World(), block_size=4)
        return [next(blocks) for _ in range(20)]

    first, second = take(), take()
    assert first == second and len(first) == 20
    assert all(b.known_size == 4 for b in first)


# ---------------------------------------------------------------- dataset and loader
@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_epoch_covers_every_sample_once_with_content(store, fmt):
    ds = VideoDataset(store, format=fmt, seed=3, world=World())
    loader = make_loader(ds, batch_size=4, num_workers=0, dtype=torch.uint8)
    keys, idx = [], []
    for batch in loader:
        assert batch["video"].dtype == torch.uint8 and batch["video"].shape[1:] == (1, 4, 8, 8)
        keys += batch["key"]
        idx += indices(batch["video"])
    assert sorted(keys) == [sample_key(i) for i in range(38)]
    assert [int(k) for k in keys] == idx  # the key belongs to the pixels
    assert keys != sorted(keys)  # shuffled


def test_float_batches_are_scaled_to_minus_one_one(store):
    ds = VideoDataset(store, shuffle=False, world=World())
    batch = next(iter(make_loader(ds, batch_size=38, num_workers=0)))
    video = batch["video"]
    assert video.dtype == torch.float32 and video.shape == (38, 1, 4, 8, 8)
    expected = torch.tensor([i / 127.5 - 1 for i in range(38)])
    assert torch.allclose(video[:, 0, 0, 1, 1], expected)


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_order_is_independent_of_worker_count(store, fmt):
    def keys(workers):
        ds = VideoDataset(store, format=fmt, seed=7, frames=2, world=World(), block_size=3)
        ds.set_epoch(1)
        out = []
        for batch in make_loader(ds, batch_size=5, num_workers=workers, dtype=torch.uint8):
            out += [(k, tuple(batch["video"][i, 0, :, 0, 0].tolist())) for i, k in enumerate(batch["key"])]
        return out

    base = keys(0)
    assert keys(1) == base
    assert keys(2) == base


def test_iterating_twice_gives_the_same_order_and_set_epoch_changes_it(store):
    ds = VideoDataset(store, seed=5, world=World())
    loader = make_loader(ds, batch_size=8, num_workers=0, dtype=torch.uint8)
    first, again = run(loader), run(loader)
    assert first == again
    loader.set_epoch(1)
    assert run(loader) != first


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_resume_mid_epoch_yields_exactly_the_rest(store, fmt):
    ds = VideoDataset(store, format=fmt, seed=11, world=World(), block_size=4)
    ds.set_epoch(2)
    full = make_loader(ds, batch_size=3, num_workers=2, dtype=torch.uint8)
    expected = [(batch["key"], batch["video"].clone()) for batch in full]

    interrupted = make_loader(ds, batch_size=3, num_workers=2, dtype=torch.uint8)
    it = iter(interrupted)
    for _ in range(5):
        next(it)
    state = interrupted.state_dict()
    del it
    assert state == {
        "epoch": 2,
        "sample_in_epoch": 15,
        "seed": 11,
        "rank": 0,
        "world_size": 1,
        "block_size": 4,
        "interleave": 12,
        "history": [],
    }

    ds2 = VideoDataset(store, format=fmt, seed=11, world=World(), block_size=4)
    resumed = make_loader(ds2, batch_size=3, num_workers=1, dtype=torch.uint8)
    resumed.load_state_dict(state)
    rest = [(batch["key"], batch["video"]) for batch in resumed]
    assert len(rest) == len(expected) - 5
    for (k1, v1), (k2, v2) in zip(expected[5:], rest, strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    # the interrupted loader itself (persistent workers, abandoned iterator) resumes the same way
    interrupted.load_state_dict(state)
    assert [batch["key"] for batch in interrupted] == [k for k, _ in expected[5:]]
    assert [batch["key"] for batch in interrupted] == [k for k, _ in expected]  # next pass: whole epoch


def test_resume_state_must_match_the_loader(store):
    loader = make_loader(VideoDataset(store, seed=1, world=World()), batch_size=2, num_workers=0)
    state = loader.state_dict() | {"seed": 2}
    with pytest.raises(PipelineError, match="seed=2"):
        loader.load_state_dict(state)


def test_clip_window_frames_stride_offset(store):
    ds = VideoDataset(store, frames=2, stride=2, offset=1, shuffle=False, world=World())
    batch = next(iter(make_loader(ds, batch_size=4, num_workers=0, dtype=torch.uint8)))
    assert batch["video"].shape == (4, 1, 2, 8, 8)
    assert batch["video"][:, 0, :, 0, 0].tolist() == [[1, 3]] * 4
    rand = VideoDataset(store, frames=3, world=World())
    starts = [
        b["video"][:, 0, 0, 0, 0] for b in make_loader(rand, batch_size=38, num_workers=0, dtype=torch.uint8)
    ]
    starts = torch.cat(starts)
    assert set(starts.tolist()) == {0, 1}  # T=4, window 3: offsets 0 or 1
    with pytest.raises(PipelineError, match="does not fit"):
        VideoDataset(store, frames=3, stride=2, world=World())


def test_frame_mode_picks_uniform_random_frames(tmp_path):
    store = make_store(tmp_path / "s", n_shards=4, per_shard=100, formats=("hdf5",), shape=(5, 4, 4, 1))
    ds = VideoDataset(store, mode="frame", seed=0, world=World())
    frames = []
    for batch in make_loader(ds, batch_size=64, num_workers=0, dtype=torch.uint8):
        assert batch["video"].shape[1:] == (1, 4, 4)
        frames.append(batch["video"][:, 0, 0, 0])
    counts = np.bincount(torch.cat(frames).numpy(), minlength=5)
    assert counts.sum() == 400
    # uniform over 5 frames: each count ~ Binomial(400, 0.2), sd 8; allow 4 sd
    assert np.all(np.abs(counts - 80) < 32), counts


def test_with_meta(store):
    ds = VideoDataset(store, with_meta=True, world=World())
    batch = next(iter(make_loader(ds, batch_size=6, num_workers=0, dtype=torch.uint8)))
    assert [m["index"] for m in batch["meta"]] == [int(k) for k in batch["key"]]
    item = next(iter(ds))
    assert set(item) == {"key", "video", "meta"} and item["video"].shape == (1, 4, 8, 8)


def test_ranks_get_equal_disjoint_shares_with_padding_reported(store):
    with pytest.warns(UserWarning, match="padding the epoch with 2 repeated samples"):
        shares = [VideoDataset(store, world=World(r, 4), seed=2) for r in range(4)]
    keys = [run(make_loader(ds, batch_size=4, num_workers=0)) for ds in shares]
    assert [len(k) for k in keys] == [10] * 4
    assert shares[0].pad_count == 2
    flat = [k for ks in keys for k in ks]
    assert set(flat) == {sample_key(i) for i in range(38)}
    assert len(flat) - len(set(flat)) == 2


def test_resampled_mode_is_endless_and_worker_independent(store):
    def first(workers):
        ds = VideoDataset(store, epoch_mode="resampled", seed=4, world=World(), block_size=4)
        out = []
        for batch in make_loader(ds, batch_size=5, num_workers=workers, dtype=torch.uint8):
            out += batch["key"]
            if len(out) >= 60:
                return out

    keys = first(0)
    assert len(keys) == 60 and keys == first(2)
    ds = VideoDataset(store, epoch_mode="resampled", epoch_length=12, world=World())
    assert len(run(make_loader(ds, batch_size=5, num_workers=0))) == 12


@pytest.mark.integration
def test_url_pattern_and_pipe_sources(store):
    pattern = str(store / "test-{000000..000007}.tar")
    with pytest.raises(PipelineError, match="count_scan"):
        VideoDataset(pattern, world=World())
    local = VideoDataset(pattern, count_scan=True, seed=1, world=World())
    reference = VideoDataset(store, seed=1, world=World(), block_size=64)  # the order depends on it
    assert run(make_loader(local, batch_size=4, num_workers=0)) == run(
        make_loader(reference, batch_size=4, num_workers=0)
    )
    piped = [f"pipe:cat {store / shard_name('test', s, 'wds')}" for s in range(8)]
    ds = VideoDataset(piped, count_scan=True, seed=1, world=World(), block_size=2)
    loader = make_loader(ds, batch_size=4, num_workers=2, dtype=torch.uint8)
    keys, idx = [], []
    for batch in loader:
        keys += batch["key"]
        idx += indices(batch["video"])
    assert sorted(keys) == [sample_key(i) for i in range(38)] and [int(k) for k in keys] == idx
    resampled = VideoDataset(piped, epoch_mode="resampled", world=World())
    it = iter(make_loader(resampled, batch_size=4, num_workers=0))
    assert len(next(it)["key"]) == 4


def test_plain_dataloader_over_samples_and_hdf5_without_locking(store):
    ds = VideoDataset(store, format="hdf5", h5_locking=False, world=World(), block_size=4)
    keys = []
    for batch in torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2):
        assert batch["video"].shape[1:] == (1, 4, 8, 8)
        assert [int(k) for k in batch["key"]] == indices(batch["video"])
        keys += batch["key"]
    assert sorted(keys) == [sample_key(i) for i in range(38)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_video_hits_both_ends_exactly(dtype):
    from pipelines.device import scale_video

    video = torch.tensor([0, 255, 128], dtype=torch.uint8).reshape(1, 3, 1, 1, 1)  # (B, T, H, W, C)
    out = scale_video(video, dtype)
    assert out.dtype == dtype and out.shape == (1, 1, 3, 1, 1)
    assert out.flatten()[:2].tolist() == [-1.0, 1.0]
    assert abs(float(out.flatten()[2]) - (128 / 127.5 - 1)) < 1e-2
