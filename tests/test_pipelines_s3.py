"""Reading stores from a real S3 server (moto in server mode, through s3fs) with the bounded shard cache."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from s3_server import s3_fixture, s3_session_fixture, upload_store  # noqa: F401  (fixtures s3, s3_session)
from test_pipelines import make_store
from test_pipelines_dist import free_port

from pipelines import cache as cache_module
from pipelines.cache import MARKER, ShardCache, entry_name, parse_size
from pipelines.dataset import VideoDataset
from pipelines.errors import PipelineError, ShardError
from pipelines.loader import make_loader
from pipelines.world import World

SHAPE = (4, 16, 16, 3)  # 3 KiB a clip: shards of 5 clips are ~18 KB
N_SHARDS = 8


def read_all(ds: VideoDataset, epochs=(0, 1), num_workers: int = 0) -> list[tuple[list[str], np.ndarray]]:
    """Keys and videos of each epoch, through make_loader."""
    out = []
    loader = make_loader(ds, batch_size=4, num_workers=num_workers, dtype=torch.uint8)
    for epoch in epochs:
        loader.set_epoch(epoch)
        keys, videos = [], []
        for batch in loader:
            keys += batch["key"]
            videos.append(batch["video"].numpy())
        out.append((keys, np.concatenate(videos)))
    return out


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for (keys_a, video_a), (keys_b, video_b) in zip(a, b, strict=True):
        assert keys_a == keys_b
        np.testing.assert_array_equal(video_a, video_b)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("s3src"), n_shards=N_SHARDS, formats=("wds",), shape=SHAPE)


@pytest.fixture
def remote(s3, local_store) -> str:
    return upload_store(local_store, s3.url("store"))


def shard_bytes(store: Path) -> int:
    return max(p.stat().st_size for p in store.glob("*.tar"))


def entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_file() and p.name != MARKER)


def deleted_open_files(root: Path) -> list[str]:
    """Files under ``root`` this process still holds open after they were deleted (evicted)."""
    links = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return [link for link in links if link.startswith(str(root)) and link.endswith("(deleted)")]


# ---------------------------------------------------------------- units
def test_parse_size_is_strict():
    assert parse_size("20GB") == 20 * 10**9
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1.5 kb") == 1500
    assert parse_size(4096) == 4096
    for bad in ("20", "20 GiBs", "-1GB", "GB", "0B", "1e9B", "", True, 0):
        with pytest.raises(PipelineError, match="cache_limit"):
            parse_size(bad)


def test_cache_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "mine.txt").write_text("not the cache's")
    with pytest.raises(PipelineError, match="did not make"):
        ShardCache(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "not the cache's"


def test_eviction_spares_parts_pins_and_foreign_files(tmp_path):
    cache = ShardCache(tmp_path, cache_limit=100)
    names = [entry_name(f"s3://b/s/test-{i:06d}.tar") for i in range(3)]
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 60)
        cache._lock_path(name).touch()
    part = tmp_path / f"{names[0]}.part-1-abcd"
    part.write_bytes(b"y" * 10)
    (tmp_path / "other-file.tar").write_bytes(b"z" * 500)
    held = cache._open_lock(names[2])  # in use elsewhere
    import fcntl

    fcntl.flock(held, fcntl.LOCK_SH)
    assert cache.usage()[0] == 3 * 60 + 10  # the part counts; the foreign file does not
    cache._make_room(20)
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert part.name in left and "other-file.tar" in left and names[2] in left
    assert names[0] not in left and names[1] not in left
    cache._close_lock(held)


def test_a_download_in_flight_counts_at_its_full_size(tmp_path):
    """Two processes making room at once each reserve their download's whole length before it streams in:
    the second sees the first's bytes and evicts for them (counted as they arrived, both fit, and two
    ranks' cache ended one shard over its limit)."""
    first, second = ShardCache(tmp_path, cache_limit=100), ShardCache(tmp_path, cache_limit=100)
    old = entry_name("s3://b/s/test-000000.tar")
    (tmp_path / old).write_bytes(b"x" * 40)
    first._lock_path(old).touch()
    first._reserve(tmp_path / f"{entry_name('s3://b/s/a.tar')}.part-1-abcd", 60)  # nothing arrived yet
    assert second.usage()[0] == 100 and (tmp_path / old).exists()
    second._reserve(tmp_path / f"{entry_name('s3://b/s/b.tar')}.part-2-abcd", 40)
    assert second.usage()[0] == 100 and not (tmp_path / old).exists()


def test_usage_counts_a_download_renamed_into_place_during_its_listing(tmp_path, monkeypatch):
    """Another process's download finishing (its part renamed to the entry) between the listing and the stat
    of the part: usage lists again and counts the shard once, under its new name (it raised
    FileNotFoundError, failing a 2-rank shared-cache run)."""
    cache = ShardCache(tmp_path, cache_limit=100)
    name = entry_name("s3://b/s/test-000000.tar")
    part = tmp_path / f"{name}.part-1-abcd"
    part.write_bytes(b"y" * 30)
    scandir, calls = os.scandir, []

    def racing_scandir(path):
        listing = scandir(path)
        if not calls:  # the first listing: the part is listed, then renamed before it is measured
            items = list(listing)
            listing.close()
            part.rename(tmp_path / name)
            listing = contextlib.nullcontext(iter(items))
        calls.append(path)
        return listing

    monkeypatch.setattr(cache_module.os, "scandir", racing_scandir)
    total, entries = cache.usage()
    assert len(calls) == 2
    assert total == 30 and [(n, size) for _, n, size in entries] == [(name, 30)]


def test_forked_worker_drops_the_parents_locks(tmp_path):
    """A forked DataLoader worker inherits the parent's lock descriptors; kept, they would pin the parent's
    shards (and block their downloads) for the worker's whole life."""
    cache = ShardCache(tmp_path, cache_limit=100)
    name = entry_name("s3://b/s/test-000000.tar")
    (tmp_path / name).write_bytes(b"x" * 60)
    fd = cache._open_lock(name)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_SH)  # the parent uses the shard
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: touches the cache, then lives on
        try:
            cache.release_all()
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        cache._close_lock(fd)  # the parent is done with it
        assert cache._evict(name)  # the live worker holds nothing
    finally:
        os.write(done_w, b"1")
        os.waitpid(pid, 0)
        for end in (ready_r, ready_w, done_r, done_w):
            os.close(end)


# ---------------------------------------------------------------- against the server
def test_store_url_reads_back_exactly_and_cache_is_reused(remote, local_store, tmp_path):
    expected = read_all(VideoDataset(local_store, seed=3))
    cached = VideoDataset(remote, seed=3, cache_dir=tmp_path / "cache")
    assert cached.shards[0].url.startswith("s3://")
    assert_same(read_all(cached), expected)
    assert len([n for n in entries(tmp_path / "cache") if ".part-" not in n]) == N_SHARDS
    assert cached.cache.downloads == N_SHARDS  # once per shard over two epochs
    # a new run (a new process's view) reuses the files: no download; manifest URL works too
    again = VideoDataset(remote + "/manifest.json", seed=3, cache_dir=tmp_path / "cache", verify="sha256")
    assert_same(read_all(again), expected)
    assert again.cache.downloads == 0


def test_cache_smaller_than_store_evicts_and_stays_exact(remote, local_store, tmp_path):
    limit = 3 * shard_bytes(local_store)
    expected = read_all(VideoDataset(local_store, seed=5, interleave=1, block_size=5), epochs=(0, 1, 2))
    ds = VideoDataset(remote, seed=5, interleave=1, block_size=5, cache_dir=tmp_path / "c", cache_limit=limit)
    assert_same(read_all(ds, epochs=(0, 1, 2)), expected)
    assert ds.cache.downloads > N_SHARDS  # evicted and fetched again
    assert deleted_open_files(tmp_path / "c") == []  # no evicted file kept alive by a reader's descriptor
    ds.cache.close()
    total, _ = ds.cache.usage()
    assert total <= limit


def test_cache_below_the_working_set_is_trimmed_once_shards_are_released(remote, local_store, tmp_path):
    limit = shard_bytes(local_store)  # one shard; a block of the default order reads pieces of all eight
    ds = VideoDataset(remote, seed=8, cache_dir=tmp_path / "c", cache_limit=limit)
    assert_same(read_all(ds, epochs=(0,)), read_all(VideoDataset(local_store, seed=8), epochs=(0,)))
    ds.cache.close()
    assert ds.cache.usage()[0] <= limit


def test_foreign_files_are_never_evicted_and_bad_copies_refetched(remote, local_store, tmp_path):
    root = tmp_path / "c"
    ds = VideoDataset(remote, seed=1, cache_dir=root, cache_limit=2 * shard_bytes(local_store))
    (root / "notes.txt").write_bytes(b"x" * 100_000)  # added by a user after the cache made the folder
    expected = read_all(VideoDataset(local_store, seed=1))
    assert_same(read_all(ds), expected)
    assert (root / "notes.txt").stat().st_size == 100_000
    # a cached copy cut short (a disk fault, a user) is not used: refetched
    ds.cache.close()
    victim = next(p for p in root.iterdir() if p.name.endswith(".tar"))
    victim.write_bytes(victim.read_bytes()[:1000])
    big = VideoDataset(remote, seed=1, cache_dir=root)
    assert_same(read_all(big), expected)
    assert big.cache.downloads >= 1
    # same size, other bytes: only the sha256 check sees it, and refetches
    big.cache.close()
    victim = next(p for p in root.iterdir() if p.name.endswith(".tar"))
    data = bytearray(victim.read_bytes())
    data[-3000] ^= 0xFF
    victim.write_bytes(bytes(data))
    checked = VideoDataset(remote, seed=1, cache_dir=root, verify="sha256")
    assert_same(read_all(checked), expected)
    assert checked.cache.downloads == 1


class _FaultyStream:
    """A server body that resets after ``cut`` bytes."""

    def __init__(self, stream, cut: int) -> None:
        self.stream, self.cut, self.sent = stream, cut, 0

    def read(self, n: int = -1) -> bytes:
        if self.sent >= self.cut:
            raise ConnectionResetError(104, "Connection reset by peer")
        chunk = self.stream.read(min(n, self.cut - self.sent) if n > 0 else self.cut - self.sent)
        self.sent += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()


def test_server_fault_midway_is_retried_and_epochs_stay_exact(remote, local_store, tmp_path, monkeypatch):
    real_open, faults = cache_module.open_location, []

    def faulty_open(url, max_bytes=None):
        stream = real_open(url, max_bytes)
        if url not in faults:  # every shard's first download breaks halfway
            faults.append(url)
            return _FaultyStream(stream, 5000)
        return stream

    monkeypatch.setattr(cache_module, "open_location", faulty_open)
    monkeypatch.setattr(cache_module.time, "sleep", lambda s: None)
    expected = read_all(VideoDataset(local_store, seed=2))
    ds = VideoDataset(remote, seed=2, cache_dir=tmp_path / "c", verify="sha256")
    assert_same(read_all(ds), expected)
    assert len(faults) == N_SHARDS
    assert not [n for n in entries(tmp_path / "c") if ".part-" in n]


def test_wrong_bytes_on_the_server_are_refused_not_cached(s3, local_store, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in local_store.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    shard = sorted(bad.glob("*.tar"))[2]
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    url = upload_store(bad, s3.url("bad"))
    ds = VideoDataset(url, seed=0, cache_dir=tmp_path / "c", verify="sha256", on_error="skip")
    with pytest.warns(RuntimeWarning, match="sha256"):
        keys = [k for keys, _ in read_all(ds, epochs=(0,)) for k in keys]
    assert len(keys) == (N_SHARDS - 1) * 5
    assert entry_name(ds.shards[2].url) not in entries(tmp_path / "c")
    with pytest.raises(ShardError, match="sha256"):
        read_all(VideoDataset(url, seed=0, cache_dir=tmp_path / "c", verify="sha256"), epochs=(0,))


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pipelines import cache
    from pipelines.dataset import VideoDataset

    real = cache.open_location

    class Dying:
        def __init__(self, stream):
            self.stream, self.sent = stream, 0
        def read(self, n=-1):
            if self.sent:
                os.kill(os.getpid(), signal.SIGKILL)  # killed halfway through the download
            data = self.stream.read(4096)
            self.sent += len(data)
            return data
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            pass

    cache.open_location = lambda url, max_bytes=None: Dying(real(url, max_bytes))
    ds = VideoDataset(sys.argv[1], cache_dir=sys.argv[2])
    ds.cache.acquire(ds.shards[0])
    """
)


@pytest.mark.integration
def test_killed_download_leaves_nothing_used_and_next_run_is_exact(remote, local_store, tmp_path):
    root = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-c", KILLER, remote, str(root)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    parts = [n for n in entries(root) if ".part-" in n]
    assert len(parts) == 1  # never renamed; reserved at the shard's length, and only its start arrived
    got, shard = (root / parts[0]).read_bytes(), min(local_store.glob("*.tar")).read_bytes()
    assert len(got) == len(shard) and not any(got[4096:]) and got != shard
    assert not [n for n in entries(root) if n.endswith(".tar")]
    ds = VideoDataset(remote, seed=4, cache_dir=root)
    assert_same(read_all(ds), read_all(VideoDataset(local_store, seed=4)))
    assert not [n for n in entries(root) if ".part-" in n]  # removed under the shard's lock


def _download_all(shards, root: Path, go: int, report: int) -> None:
    """A forked process (a rank on the node): waits for the start signal, then takes every shard."""
    code = 1
    try:
        cache = ShardCache(root)
        os.read(go, 1)
        for shard in shards:
            local = cache.acquire(shard)
            assert Path(local.url).stat().st_size == shard.nbytes
        os.write(report, bytes([cache.downloads]))
        code = 0
    finally:
        os._exit(code)


@pytest.mark.integration
def test_eight_processes_starting_at_once_download_each_shard_once(remote, tmp_path):
    shards = VideoDataset(remote).shards
    go_r, go_w = os.pipe()
    report_r, report_w = os.pipe()
    pids = []
    for _ in range(8):  # forked, not spawned: no interpreter start, so they really start together
        pid = os.fork()
        if pid == 0:
            _download_all(shards, tmp_path / "c", go_r, report_w)
        pids.append(pid)
    os.write(go_w, b"x" * 8)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    downloads = list(os.read(report_r, 64))
    for end in (go_r, go_w, report_r, report_w):
        os.close(end)
    assert codes == [0] * 8
    assert len(downloads) == 8 and sum(downloads) == N_SHARDS


def _rank_main(rank: int, world: int, port: int, url: str, cache_dir: str, limit: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ds = VideoDataset(url, seed=7, interleave=1, block_size=5, cache_dir=cache_dir, cache_limit=limit)
        result = [keys for keys, _ in read_all(ds, epochs=(0, 1, 2), num_workers=1)]
        digests = [float(video.astype(np.float64).sum()) for _, video in read_all(ds, epochs=(3,))]
        Path(out, f"rank{rank}.json").write_text(json.dumps({"keys": result, "sum3": digests}))
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_two_gloo_ranks_share_a_cache_smaller_than_the_store(remote, local_store, tmp_path):
    limit = 4 * shard_bytes(local_store)
    args = (2, free_port(), remote, str(tmp_path / "c"), limit, str(tmp_path))
    mp.spawn(_rank_main, args=args, nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        local = VideoDataset(local_store, seed=7, interleave=1, block_size=5, world=World(rank, 2))
        expected = read_all(local, epochs=(0, 1, 2, 3))
        assert got["keys"] == [keys for keys, _ in expected[:3]]
        assert got["sum3"] == [float(expected[3][1].astype(np.float64).sum())]
    # every shard was read, yet the cache holds at most 4 of 8 once released: evictions happened
    total = sum(p.stat().st_size for p in (tmp_path / "c").iterdir() if p.name.endswith(".tar"))
    assert total <= limit
    assert os.path.isdir(tmp_path / "c" / "locks")


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_store_written_by_datagen_to_s3_reads_back_exactly(s3, tmp_path, pattern, fmt):
    """``datagen``'s own writer puts the store on S3 (--out s3://); both formats read back through the cache
    exactly as the local store, with verify='sha256'."""
    from datagen.jobs import generation_job, run_store_job

    def job(out):
        params = {"frames": 3, "size": 6}
        return generation_job(out, pattern, params, seed=7, n=24, shard_size=5, formats=["wds", "hdf5"])

    run_store_job(job(tmp_path / "local"), workers=0)
    url = s3.url("written")
    run_store_job(job(url), workers=0)
    expected = read_all(VideoDataset(tmp_path / "local", seed=6, format=fmt, interleave=1, block_size=5))
    limit = 2 * max(p.stat().st_size for p in (tmp_path / "local").glob("*.h5" if fmt == "hdf5" else "*.tar"))
    got = VideoDataset(
        url,
        seed=6,
        format=fmt,
        cache_dir=tmp_path / "c",
        verify="sha256",
        interleave=1,
        block_size=5,
        cache_limit=limit,
    )
    assert_same(read_all(got), expected)
    assert got.cache.downloads > 5  # evictions
    assert deleted_open_files(tmp_path / "c") == []


def test_a_mix_reads_each_remote_source_through_its_own_cache(s3, local_store, tmp_path):
    """Two S3 sources with their own caches and one streamed without a cache, mixed: the same batches as
    the mix of the local copies, and each cache holds exactly its own source's shards."""
    from pipelines import mix

    urls = [upload_store(local_store, s3.url(name)) for name in ("one", "two", "three")]
    caches = [tmp_path / "c1", tmp_path / "c2", None]

    def mixed(paths, cache_dirs):
        sources = [
            VideoDataset(path, seed=3 + i, cache_dir=cache, block_size=8, verify="sha256")
            for i, (path, cache) in enumerate(zip(paths, cache_dirs, strict=True))
        ]
        return mix(sources, [2, 1, 1], seed=9)

    expected = read_all(mixed([local_store] * 3, [None] * 3))
    remote = mixed(urls, caches)
    assert_same(read_all(remote, num_workers=2), expected)
    for url, cache in zip(urls[:2], caches[:2], strict=True):
        names = {entry_name(f"{url}/{p.name}") for p in local_store.glob("*.tar")}
        assert set(entries(cache)) == names
