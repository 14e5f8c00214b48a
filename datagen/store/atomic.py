"""Write files so that a final name only ever holds complete content, and hash them as they are written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from datagen.errors import DatagenError
from datagen.store.format import TEMP_RE, TMP_SUFFIX

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""Write errors that more room (or a higher quota) cures."""


class WriteError(DatagenError, OSError):
    """Writing into an output folder failed (disk full, quota, I/O error); a resumed run can finish it.

    An OSError too, so code that handles failed writes keeps handling it; the CLI prints it as one line.
    """


def format_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def final_name(path: Path) -> str:
    """The name a temporary from :func:`atomic_path` is renamed to (other names unchanged)."""
    name = Path(path).name
    m = TEMP_RE.fullmatch(name)
    return m["final"] if m else name


def write_error(exc: OSError, path: Path, needed: int | None = None) -> WriteError:
    """One line for a failed write of `path` (a file or its temporary): the folder, the file, and for a
    full disk the space that file needs and what is free."""
    if isinstance(exc, WriteError):
        return exc
    if not isinstance(path, str | os.PathLike):  # an fsspec file object: its path in the bucket
        path = str(getattr(path, "path", "shard"))
    folder, name = Path(path).parent, final_name(path)
    if exc.errno not in NO_SPACE:
        return WriteError(f"cannot write {name} in {folder}: {exc.strerror or exc}; rerun with --resume")
    try:
        free = format_bytes(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    need = f"{format_bytes(needed)} for {name}" if needed else f"more room for {name}"
    return WriteError(
        f"no space left in {folder}: it needs {need} ({free} free; {exc.strerror}); "
        "make room and rerun with --resume"
    )


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success fsync it and rename it to `final`, else remove it.

    A failing fsync or rename (a full disk can surface only there) raises :class:`WriteError`.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        yield tmp
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
                _drop_cached(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as e:
            raise write_error(e, final) from None
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _drop_cached(fd: int) -> None:
    """Let the kernel drop the file's pages from the page cache now that they are on disk.

    A store is written once and read later, if at all; left cached, gigabytes of shard pages made the
    kernel reclaim them while later shards were written, which more than doubled the writer's CPU
    (measured: 60 shards of 32 MB, 4.9 CPU-s and 13 s without, 2.0 CPU-s and 6 s with). A no-op where
    unsupported.
    """
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """`data` under `final`, complete or not at all; a failed write is one WriteError line."""
    try:
        with atomic_path(final) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise write_error(e, final, len(data)) from None


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, fixed indent: identical content gives identical bytes (manifests, job files)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(final: Path, obj: Any) -> None:
    """Canonical JSON (sorted keys, fixed indent) so identical content gives identical bytes."""
    write_bytes_atomic(final, canonical_json(obj))


WRITE_BUFFER = 1 << 20
"""Bytes Python's buffered writer gathers per write call (small tar headers and clips join in it)."""


class HashingWriter:
    """A new file written front to back through Python's buffered I/O, its sha256 taken on the way (no
    re-read). `close()` returns the digest; completing the file (fsync, rename) is `atomic_path`'s job.
    Given an open binary file instead (an fsspec upload), it writes there, and `close()` closes it (commits
    the upload); leaving with an exception leaves that file open for its owner to discard.

    Use as a context manager: leaving it with an exception closes the file and leaves it to the caller (an
    atomic temporary) to delete.
    """

    def __init__(self, path: Path | str | BinaryIO) -> None:
        self._own = isinstance(path, str | os.PathLike)
        if self._own:
            self._file = open(path, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 (closed by close/__exit__)
        else:
            self._file = path
        self._sha = hashlib.sha256()
        self.size = 0
        """Bytes written so far."""

    def write(self, data) -> None:
        """Append bytes (anything with the buffer protocol, C-contiguous: bytes, memoryviews, arrays)."""
        self._file.write(data)
        self._sha.update(data)
        self.size += memoryview(data).nbytes

    def close(self) -> str:
        """Flush and close the file; the sha256 of every byte written."""
        self._file.close()
        return self._sha.hexdigest()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._own:
            return  # closing a failed upload would commit it: its owner discards it
        try:
            self._file.close()  # closes the file also when flushing what is left fails
        except OSError:
            if exc_type is None:
                raise  # else the first error is the one to report


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(folder: Path) -> int:
    """Remove temporary files a killed run left behind; returns how many."""
    n = 0
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        n += 1
    return n
