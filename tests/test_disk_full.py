"""A full disk or a failing write while writing shards: one line naming the folder (and for a full disk the
space the shard needs), no temporaries left, exit 2, and `--resume` completes the store to identical bytes.

HDF5 used to kill the process with SIGSEGV here (its close after a failed write); the file-size limit
(RLIMIT_FSIZE, any user) and a small tmpfs (root only) make the kernel refuse real writes.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from datagen.store import atomic
from datagen.store.atomic import WRITE_BUFFER, HashingWriter, WriteError, atomic_path, final_name
from datagen.store.hdf5 import hdf5_image, write_hdf5
from datagen.store.manifest import write_shard
from datagen.store.sample import Sample

BALLS = ["balls", "--n", "40", "--frames", "8", "--size", "32", "--shard-size", "10", "--seed", "3", "-q"]
TINY = ["balls", "--n", "40", "--frames", "2", "--size", "8", "--shard-size", "1", "--seed", "3", "-q"]
"""40 one-clip shards of 128 bytes: the files take pages far beyond the clips the space check counts."""


def samples(n: int, shape=(3, 5, 7, 1), seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [
        Sample(f"{i:09d}", rng.integers(0, 256, shape, dtype=np.uint8), {"i": i, "x": "y" * i})
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "n, shape", [(0, (1, 1, 1, 1)), (1, (2, 3, 4, 3)), (7, (3, 5, 7, 1)), (40, (4, 16, 16, 3))]
)
def test_hdf5_image_has_the_bytes_hdf5_writes_itself(tmp_path, n, shape):
    """The in-memory image is the file h5py writes to disk for the same content (the old writer's way)."""
    ss = samples(n, shape, seed=n)
    attrs = {"generator": "g", "seed": 3, "params": {"a": [1, 2]}}
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        if ss:  # the dataset stays open to the end, as in the writer (closing it early moves chunks)
            video = f.create_dataset(
                "video", shape=(n, *shape), dtype=np.uint8, chunks=(1, *shape), track_times=False
            )
            video[...] = np.stack([s.video for s in ss])
        else:
            f.create_dataset("video", shape=(0,), dtype=np.uint8, track_times=False)
        string = h5py.string_dtype("utf-8")
        keys = np.array([s.key for s in ss], dtype=object)
        f.create_dataset("key", data=keys, dtype=string, track_times=False)
        metas = np.array([f'{{"i":{s.meta["i"]},"x":"{s.meta["x"]}"}}' for s in ss], dtype=object)
        f.create_dataset("meta", data=metas, dtype=string, track_times=False)
        f.attrs["generator"], f.attrs["seed"], f.attrs["params"] = "g", 3, '{"a": [1, 2]}'
    assert hdf5_image(ss, attrs) == path.read_bytes()
    keys, sha = write_hdf5(tmp_path / "ours.h5", ss, attrs)
    assert (tmp_path / "ours.h5").read_bytes() == path.read_bytes() and len(keys) == n


class _FullDisk(io.RawIOBase):
    """A file on a disk that takes `room` bytes, then refuses with ENOSPC (as the kernel does)."""

    def __init__(self, path, room: int) -> None:
        self.file, self.room = open(path, "wb", buffering=0), room  # noqa: SIM115

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.file.write(memoryview(data)[: self.room])
        self.room -= n
        return n

    def close(self) -> None:
        self.file.close()
        super().close()


def full_disk_open(room: int):
    def fake_open(path, mode="r", buffering=-1):
        assert mode == "wb"
        return io.BufferedWriter(_FullDisk(path, room), buffer_size=max(buffering, 1))

    return fake_open


@pytest.mark.parametrize("room", [0, 100, WRITE_BUFFER + 10])
def test_a_full_disk_is_an_oserror_and_atomic_path_leaves_nothing(tmp_path, monkeypatch, room):
    monkeypatch.setattr(atomic, "open", full_disk_open(room), raising=False)
    with pytest.raises(OSError) as e:
        with atomic_path(tmp_path / "shard.tar") as tmp, HashingWriter(tmp) as out:
            for _ in range(3):
                out.write(b"y" * WRITE_BUFFER)
            out.close()
    assert e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_closing_is_reported_not_swallowed(tmp_path, monkeypatch):
    """What is still buffered reaches the disk only at close: a full disk there must surface too."""
    monkeypatch.setattr(atomic, "open", full_disk_open(10), raising=False)
    out = HashingWriter(tmp_path / "a.bin")
    out.write(b"z" * 100)  # stays in the buffer
    with pytest.raises(OSError, match="No space"):
        out.close()


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_no_space_at_the_write_call_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(atomic, "open", full_disk_open(100), raising=False)
    name = "s-000000" + (".tar" if fmt == "wds" else ".h5")
    with pytest.raises(WriteError) as e:
        write_shard(tmp_path, name, fmt, samples(5), {"seed": 1})
    message = str(e.value)
    assert message.startswith(f"no space left in {tmp_path}: it needs ") and name in message
    assert "\n" not in message and "--resume" in message
    assert list(tmp_path.iterdir()) == []  # the temporary is gone
    assert isinstance(e.value, OSError)  # callers handling failed writes still do


def test_temporary_names_map_back_to_the_shard():
    assert final_name(Path("/o/.balls-000001.h5.1234.tmp")) == "balls-000001.h5"
    assert final_name(Path("/o/balls-000001.tar")) == "balls-000001.tar"


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def datagen(*args: str, preexec=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "datagen", *args],
        capture_output=True,
        text=True,
        preexec_fn=preexec,
        timeout=timeout,
    )


def _store_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _reference(out: Path, job: list[str]) -> dict[str, bytes]:
    r = datagen(*job, "--format", "both", "--workers", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return _store_bytes(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The job run without limits, in both formats (the store to match byte for byte)."""
    return _reference(tmp_path_factory.mktemp("ref") / "s", BALLS)


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    return _reference(tmp_path_factory.mktemp("ref") / "s", TINY)


def _check_failed_then_resumed(
    out: Path, failed: subprocess.CompletedProcess, fmt: str, reference, job: list[str] = BALLS
) -> None:
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0], failed.stderr[-2000:]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / "manifest.json").exists()
    resumed = datagen(*job, "--format", fmt, "--workers", "0", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    ext = ".tar" if fmt == "wds" else ".h5"
    shards = {k: v for k, v in reference.items() if k.endswith(ext)}
    got = _store_bytes(out)
    assert {k: v for k, v in got.items() if k.endswith(ext)} == shards
    assert set(got) == set(shards) | {"manifest.json", "README.md"}  # the dataset card too


@pytest.mark.integration
@pytest.mark.parametrize("fmt, workers", [("hdf5", "0"), ("wds", "0"), ("hdf5", "1")])
def test_write_error_in_a_real_run_is_one_line_and_resumable(tmp_path, reference, fmt, workers):
    """The kernel refuses writes past a file-size limit (inherited by Dask workers): HDF5 segfaulted here."""
    out = tmp_path / "s"
    failed = datagen(
        *BALLS, "--format", fmt, "--workers", workers, "--out", str(out), preexec=_limit_file_size(30_000)
    )
    assert "File too large" in failed.stderr
    _check_failed_then_resumed(out, failed, fmt, reference)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (needs root and mount rights; skipped otherwise); grown with `remount`."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["hdf5", "wds"])
def test_full_disk_is_one_line_naming_the_space_and_resumable(small_disk, tiny_reference, fmt):
    """A real ENOSPC on a 1 MB tmpfs with 64 kB left: enough for what the up-front check counts (the clips,
    5 kB), not for 40 shard files, so a shard write fails mid-run."""
    out = small_disk / "s"
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
    failed = datagen(*TINY, "--format", fmt, "--workers", "0", "--out", str(out))
    assert f"no space left in {out}: it needs " in failed.stderr, failed.stderr[-2000:]
    ballast.unlink()
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    _check_failed_then_resumed(out, failed, fmt, tiny_reference, TINY)


def test_full_disk_at_the_journal_is_one_line(tmp_path, pattern, monkeypatch):
    """The shard fits, the journal line after it does not: a WriteError, and --resume finishes the store."""
    from datagen.jobs import JOURNAL, generation_job, run_store_job

    real_fsync = os.fsync

    def journal_full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(JOURNAL):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    def job(out):
        return generation_job(
            out, pattern, {"frames": 2, "size": 4}, seed=1, n=6, shard_size=2, formats=["wds"]
        )

    monkeypatch.setattr(os, "fsync", journal_full)
    out = tmp_path / "s"
    with pytest.raises(WriteError, match=f"no space left in {out}: it needs more room for {JOURNAL}"):
        run_store_job(job(out), workers=0)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not list(out.glob(".*.tmp")) and not (out / "manifest.json").exists()
    resumed = run_store_job(job(out), workers=0, resume=True)
    assert resumed == run_store_job(job(tmp_path / "ref"), workers=0)


def test_full_disk_writing_videogan_strips_is_one_line(tmp_path, monkeypatch):
    from datagen.stabilize.videogan_format import strip_path, write_list, write_strip

    def disk_full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    path = strip_path(tmp_path, 3, 1)
    with pytest.raises(WriteError, match=f"no space left in {path.parent}: it needs .* for 0001.jpg"):
        write_strip(path, np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(WriteError, match="list.txt"):
        write_list(tmp_path)
    assert [p.name for p in tmp_path.rglob("*")] == [path.parent.name]  # the folder, no file


def test_hdf5_bytes_do_not_depend_on_when_python_releases_datasets(monkeypatch):
    """h5py may close a released dataset late (it did in Dask workers), and a dataset's close used to be
    where its chunks got their place in the file: 1 and 2 workers then wrote other bytes for the same
    clips. Keeping every dataset alive to the end of the image must not change a byte."""
    rng = np.random.default_rng(5)
    ss = [
        Sample(
            f"{i:09d}",
            rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8),
            {"i": i},
            {
                "mask": rng.integers(0, 4, (4, 8, 8), dtype=np.uint8),
                "flow": rng.normal(size=(3, 8, 8, 2)).astype(np.float16),
            },
        )
        for i in range(6)
    ]
    released_at_once = hdf5_image(ss)
    kept = []
    create = h5py.Group.create_dataset

    def create_and_keep(self, *args, **kwargs):
        kept.append(create(self, *args, **kwargs))
        return kept[-1]

    monkeypatch.setattr(h5py.Group, "create_dataset", create_and_keep)
    assert hdf5_image(ss) == released_at_once and len(kept) == 5
