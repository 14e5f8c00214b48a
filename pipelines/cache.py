"""A bounded, node-wide cache of whole remote shards (``s3://``, ``gs://``, ``http(s)://``, any fsspec URL).

Remote shards are fetched whole into ``cache_dir`` and read there like local ones (random access, the
``fill_run`` fast path). One folder serves every worker and every rank on the node:

- **one download per shard per node**: each shard has a lock file (``locks/<entry>.lock``, ``flock``);
  a reader holds it shared while it uses the shard, a downloader exclusive, so eight ranks starting at once
  wait for the one that downloads and then share its file;
- **atomic and verified**: bytes go to ``<entry>.part-<pid>-<token>``, are counted (and hashed when
  ``verify="sha256"``) while they stream, checked against the manifest's size (and sha256), and only then
  renamed to ``<entry>``; a failed or refused download leaves nothing under the final name (retried
  ``retries`` times, then a :class:`ShardError` that ``on_error`` handles like any bad shard);
- **bounded**: before a download, least-recently-used entries (by their lock file's mtime, touched on every
  use) are evicted until the new shard fits under ``cache_limit``; a shard in use anywhere on the node (its
  lock held) is never evicted, so the folder exceeds the limit when the working set (ranks x workers x
  shards per block, plus prefetch) does not fit, and is trimmed again once those shards are released;
- **its own files only**: a new folder gets a marker file; a non-empty folder without it is refused. Only
  names the cache makes (``<16 hex>-<shard name>``, their ``.part-`` files, ``locks/``) are counted, evicted
  or removed; anything else in the folder is left alone;
- **reused, never trusted blindly**: a cache left by a killed run is reused after the size check (and a
  sha256 check, once per process and file version, when ``verify="sha256"``); a file that fails is
  downloaded again. A killed download's ``.part-`` file is removed by the next process that takes that
  shard's lock (the lock proves no live process is writing it).
- **prefetched**: :meth:`ShardCache.prefetch` queues downloads on a small thread pool (``prefetch_threads``)
  ahead of the read order, bounded in bytes (a quarter of the limit).

Entries are named by the shard URL's hash, so stores with the same shard names do not collide.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.errors import PipelineError, ShardError
from pipelines.integrity import check_digest
from pipelines.remote import open_location
from pipelines.sources import ShardRef

MARKER = ".videogen-shard-cache"
LOCKS = "locks"
SPACE_LOCK = ".space"  # in LOCKS: held while a process makes room and reserves a download's bytes
_CHUNK = 4 << 20
_ENTRY = re.compile(r"^[0-9a-f]{16}-[A-Za-z0-9][A-Za-z0-9._-]*$")
_PART = re.compile(r"^(?P<entry>[0-9a-f]{16}-[A-Za-z0-9][A-Za-z0-9._-]*)\.part-\d+-[0-9a-f]+$")
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes of ``"20GB"`` (10^9), ``"512MiB"`` (2^20), ``"1.5 TB"`` or a plain int; anything else raises."""
    if isinstance(text, bool):
        raise PipelineError(f"cache_limit must be a size such as '20GB', got {text!r}")
    if isinstance(text, int):
        if text < 1:
            raise PipelineError(f"cache_limit must be positive, got {text}")
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise PipelineError(
            f"cache_limit must be a size such as '20GB', '512MiB' or a byte count, got {text!r}"
        )
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 1:
        raise PipelineError(f"cache_limit must be positive, got {text!r}")
    return size


def is_remote(shard: ShardRef) -> bool:
    """Shards the cache fetches: anything that is not a local file (``pipe:`` commands excepted)."""
    return shard.local_path is None and not shard.url.startswith("pipe:")


def entry_name(url: str) -> str:
    """``<16 hex of the URL's sha256>-<its file name>``: unique per URL, readable in a listing."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1]).lstrip("._-") or "shard"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{base[:100]}"


@dataclass
class _Pin:
    fd: int
    count: int
    path: str


class ShardCache:
    """A node-wide cache folder of whole shards (see the module docstring); one object per process."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        cache_limit: str | int = "20GB",
        *,
        verify: str = "size",
        retries: int = 3,
        prefetch_threads: int = 2,
    ) -> None:
        self.root = Path(cache_dir).expanduser().resolve()
        self.limit = parse_size(cache_limit)
        self.verify, self.retries, self.prefetch_threads = verify, int(retries), int(prefetch_threads)
        self._claim_folder()
        self._reset_process_state()

    # ------------------------------------------------------------ setup
    def _claim_folder(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise PipelineError(f"cache_dir {root} is not a folder")
        root.mkdir(parents=True, exist_ok=True)
        if not (root / MARKER).exists():
            others = [p.name for p in root.iterdir() if p.name != MARKER]
            if others:
                raise PipelineError(
                    f"cache_dir {root} holds files the shard cache did not make ({others[0]}, ...): "
                    "pass an empty or new folder"
                )
            (root / MARKER).write_text("videogen shard cache: files here are evicted and replaced\n")
        (root / LOCKS).mkdir(exist_ok=True)

    def _reset_process_state(self) -> None:
        """Pins, futures and the pool belong to one process: a forked DataLoader worker starts its own, and
        closes its copies of the parent's lock descriptors (a copy would hold the parent's locks forever)."""
        for fd in getattr(self, "_fds", ()):
            os.close(fd)
        self._fds: set[int] = set()
        self._pid = os.getpid()
        self._mutex = threading.RLock()  # a done future runs its callback in the submitting thread
        self._pins: dict[str, _Pin] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}
        self._pending_bytes = 0
        self._over = False  # the last eviction pass could not get under the limit
        self.downloads = 0  # downloads this process made (tests, benches)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            self._reset_process_state()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_mutex", "_pins", "_pool", "_pending", "_fds"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    # ------------------------------------------------------------ names
    def path_of(self, shard: ShardRef) -> Path:
        return self.root / entry_name(shard.url)

    def _lock_path(self, entry: str) -> Path:
        return self.root / LOCKS / f"{entry}.lock"

    # ------------------------------------------------------------ use
    def acquire(self, shard: ShardRef) -> ShardRef:
        """The shard as a local file in the cache (downloaded if needed), pinned in this process until
        :meth:`release` (a pin is a shared lock: no process evicts it)."""
        self._check_process()
        entry = entry_name(shard.url)
        with self._mutex:
            pin = self._pins.get(entry)
            if pin is not None:
                pin.count += 1
                return replace(shard, url=pin.path)
        fd = self._open_lock(entry)
        try:
            path = self._obtain(shard, entry, fd)
        except BaseException:
            self._close_lock(fd)
            raise
        with self._mutex:
            pin = self._pins.get(entry)
            if pin is not None:  # another thread pinned it meanwhile: keep one lock
                pin.count += 1
                self._close_lock(fd)
            else:
                self._pins[entry] = _Pin(fd, 1, str(path))
        os.utime(self._lock_path(entry))  # least-recently-used order
        return replace(shard, url=str(path))

    def release(self, shard: ShardRef) -> None:
        """Unpin a shard acquired earlier (its file may be evicted once no process holds it)."""
        self._check_process()
        entry = entry_name(shard.url)
        with self._mutex:
            pin = self._pins.get(entry)
            if pin is None:
                return
            pin.count -= 1
            if pin.count > 0:
                return
            del self._pins[entry]
        _close_cached_fd(pin.path)
        self._close_lock(pin.fd)  # drops the shared lock

    def release_all(self) -> None:
        self._check_process()
        with self._mutex:
            pins, self._pins = list(self._pins.values()), {}
        for pin in pins:
            _close_cached_fd(pin.path)
            self._close_lock(pin.fd)
        if self._over:  # a download went past the limit while shards were in use: trim now
            self._make_room(0)

    def _open_lock(self, entry: str) -> int:
        fd = os.open(self._lock_path(entry), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with self._mutex:
            self._fds.add(fd)
        return fd

    def _close_lock(self, fd: int) -> None:
        with self._mutex:
            self._fds.discard(fd)
        os.close(fd)

    def _obtain(self, shard: ShardRef, entry: str, fd: int) -> Path:
        """Hold ``fd``'s lock shared on a valid file, downloading it under the exclusive lock if needed."""
        path = self.root / entry
        fcntl.flock(fd, fcntl.LOCK_SH)
        if self._valid(shard, path):
            return path
        fcntl.flock(fd, fcntl.LOCK_EX)  # not atomic: another process may have fetched it meanwhile
        if not self._valid(shard, path):
            self._remove_stale(entry, path)
            self._download(shard, entry, path)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return path

    def _valid(self, shard: ShardRef, path: Path) -> bool:
        """Whether the cached file may be used: present, the manifest's size, its sha256 when asked."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if shard.nbytes is not None and size != shard.nbytes:
            return False
        if self.verify == "sha256" and shard.sha256 is not None:
            try:
                check_digest(replace(shard, url=str(path)))  # once per process and file version
            except ShardError:
                return False
        return True

    def _remove_stale(self, entry: str, path: Path) -> None:
        """Under the entry's exclusive lock: a bad final file and any ``.part-`` of this entry (their
        writers are dead or failed, or they would hold the lock) go."""
        path.unlink(missing_ok=True)
        for part in self.root.glob(f"{entry}.part-*"):
            if _PART.match(part.name):
                part.unlink(missing_ok=True)

    # ------------------------------------------------------------ download
    def _download(self, shard: ShardRef, entry: str, path: Path) -> None:
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.2 * 2**attempt))
            part = self.root / f"{entry}.part-{os.getpid()}-{secrets.token_hex(4)}"
            self._reserve(part, shard.nbytes or 0)
            try:
                reason = self._fetch_to(shard, part)
            except OSError as exn:
                reason = f"download failed: {exn.strerror or exn}"
            if not reason:
                os.replace(part, path)
                self.downloads += 1
                return
            part.unlink(missing_ok=True)
            if isinstance(reason, _Refused):
                break  # wrong bytes: fetching again gets the same
        raise ShardError(shard.url, str(reason))

    def _fetch_to(self, shard: ShardRef, part: Path) -> str:
        """Stream the shard into ``part``; why it is refused ("" when it is good)."""
        digest = hashlib.sha256() if self.verify == "sha256" and shard.sha256 else None
        total = 0
        with open_location(shard.url, shard.nbytes) as stream, open(part, "r+b") as out:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if shard.nbytes is not None and total > shard.nbytes:
                    return _Refused(f"serves more than the manifest's {shard.nbytes} bytes")
                if digest is not None:
                    digest.update(chunk)
                out.write(chunk)
            out.truncate()  # the reservation's length, where the stream ended short
            out.flush()
            os.fsync(out.fileno())
        if shard.nbytes is not None and total != shard.nbytes:
            return f"download ended after {total} of {shard.nbytes} bytes"
        if digest is not None and digest.hexdigest() != shard.sha256:
            return _Refused(
                f"sha256 {digest.hexdigest()[:16]}... is not the manifest's {str(shard.sha256)[:16]}... "
                "(corrupt or changed)"
            )
        return ""

    # ------------------------------------------------------------ eviction
    def usage(self) -> tuple[int, list[tuple[float, str, int]]]:
        """Bytes of the cache's own files (entries and parts), and its entries as (last use, name, bytes).

        A file that vanishes between the listing and its stat (another process's download renamed into place
        from its ``.part-`` file) makes it list again, so the finished download is counted under its new name.
        """
        while True:
            scanned = self._scan_usage()
            if scanned is not None:
                return scanned

    def _scan_usage(self) -> tuple[int, list[tuple[float, str, int]]] | None:
        """One listing for :meth:`usage`; None when one of its files vanished before it was measured."""
        total, entries = 0, []
        with os.scandir(self.root) as listing:
            for item in listing:
                if not item.is_file(follow_symlinks=False):
                    continue
                is_part = bool(_PART.match(item.name))  # a part's name matches _ENTRY too
                is_entry = not is_part and bool(_ENTRY.match(item.name))
                if not (is_part or is_entry):
                    continue
                try:
                    size = item.stat().st_size
                except FileNotFoundError:
                    return None
                total += size
                if is_entry:
                    try:
                        used = os.stat(self._lock_path(item.name)).st_mtime
                    except FileNotFoundError:
                        used = 0.0
                    entries.append((used, item.name, size))
        return total, entries

    def _reserve(self, part: Path, nbytes: int) -> None:
        """Make room for a download and create its ``.part-`` file at its full length (sparse), under the
        cache-wide space lock: every process's :meth:`usage` counts a download in flight at its final size,
        so processes making room at once cannot together overshoot the limit (one shard over, measured)."""
        fd = os.open(self.root / LOCKS / SPACE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._make_room(nbytes)
            with open(part, "xb") as out:
                out.truncate(nbytes)
        finally:
            os.close(fd)  # drops the lock

    def _make_room(self, incoming: int) -> None:
        """Evict least-recently-used entries no process holds until ``incoming`` more bytes fit."""
        total, entries = self.usage()
        for _, name, size in sorted(entries):
            if total + incoming <= self.limit:
                break
            if self._evict(name):
                total -= size
        self._over = total + incoming > self.limit

    def _evict(self, name: str) -> bool:
        fd = self._open_lock(name)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exn:
                if exn.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False  # in use (here or in another process)
                raise
            (self.root / name).unlink(missing_ok=True)
            return True
        finally:
            self._close_lock(fd)

    # ------------------------------------------------------------ prefetch
    def prefetch(self, shards: Iterable[ShardRef]) -> None:
        """Queue downloads of shards needed soon (in order), as far as a quarter of the limit allows."""
        self._check_process()
        for shard in shards:
            entry = entry_name(shard.url)
            with self._mutex:
                if entry in self._pending or entry in self._pins:
                    continue
                if self._pending and self._pending_bytes + (shard.nbytes or 0) > self.limit // 4:
                    return
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.prefetch_threads, thread_name_prefix="shard-fetch")
                self._pending_bytes += shard.nbytes or 0
                future = self._pool.submit(self._prefetch_one, shard)
                self._pending[entry] = future
                future.add_done_callback(lambda _f, e=entry, n=shard.nbytes or 0: self._done(e, n))

    def _done(self, entry: str, nbytes: int) -> None:
        with self._mutex:
            if self._pending.pop(entry, None) is not None:
                self._pending_bytes -= nbytes

    def _prefetch_one(self, shard: ShardRef) -> None:
        entry = entry_name(shard.url)
        fd = self._open_lock(entry)
        try:
            self._obtain(shard, entry, fd)
            os.utime(self._lock_path(entry))
        except (OSError, ShardError):
            pass  # the reader meets the same failure and handles it (on_error)
        finally:
            self._close_lock(fd)

    def close(self) -> None:
        if self._pool is not None and os.getpid() == self._pid:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.release_all()


class _Refused(str):
    """A download whose bytes are wrong (not a transfer failure): not retried."""


def _close_cached_fd(path: str) -> None:
    """Readers keep descriptors (tar) and h5py handles per path; an unpinned file may be evicted (a kept
    descriptor would hold its disk space), so they go."""
    from pipelines import gather, hdf5_files

    gather.close_fd(path)
    if path.endswith((".h5", ".hdf5")):
        hdf5_files.close_h5_file(path)
