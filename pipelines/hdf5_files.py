"""HDF5 shards opened lazily in the process that reads them (a DataLoader worker) and kept open there.

Handles never cross a fork: a child finds its parent's handles, keeps them alive untouched, and opens its own.
For plainly chunked clips (one clip per chunk, no filters) the chunks' file offsets are read once so clips can
be read with ``preadv`` straight into their destination.
"""

from __future__ import annotations

import atexit
import io
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.index_cache import IndexCache
from pipelines.remote import open_location
from pipelines.sources import ShardRef

_CACHE_SIZE = 64
_REMOTE_CACHE_SIZE = 2  # http(s):// / pipe: HDF5 shards are read whole into memory

_H5_FILES: OrderedDict[tuple[str, bool | None], object] = OrderedDict()
_H5_OWNER = os.getpid()
_H5_INHERITED: list[object] = []  # handles a forked child inherited: kept alive, never used or closed there


def h5_file(shard: ShardRef, locking: bool | None):
    """The open h5py file for a shard in this process; a forked child never touches its parent's handles."""
    import h5py

    global _H5_OWNER
    if os.getpid() != _H5_OWNER:
        _H5_INHERITED.extend(_H5_FILES.values())
        _H5_FILES.clear()
        _H5_OWNER = os.getpid()
    cache_key = (shard.url, locking)
    handle = _H5_FILES.get(cache_key)
    if handle is None:
        kwargs = {} if locking is None else {"locking": locking}
        path = shard.local_path
        if path is not None:
            handle = h5py.File(path, "r", **kwargs)
        else:
            with open_location(shard.url, shard.nbytes) as stream:
                handle = h5py.File(io.BytesIO(stream.read()), "r", **kwargs)
        _H5_FILES[cache_key] = handle
        in_memory = [key for key in _H5_FILES if ShardRef(key[0], "hdf5").local_path is None]
        for key in in_memory[:-_REMOTE_CACHE_SIZE]:  # remote shards live in memory: keep the newest few
            _H5_FILES.pop(key).close()
        while len(_H5_FILES) > _CACHE_SIZE:
            _H5_FILES.popitem(last=False)[1].close()
    else:
        _H5_FILES.move_to_end(cache_key)
    return handle


def close_h5_file(path: str) -> None:
    """Close this process's handles of one local file (a shard cache is about to let it go)."""
    if os.getpid() == _H5_OWNER:
        for locking in (None, True, False):
            handle = _H5_FILES.pop((path, locking), None)
            if handle is not None:
                handle.close()


def close_h5_files() -> None:
    """Close the HDF5 files this process opened (call before forking workers you start yourself)."""
    if os.getpid() == _H5_OWNER:
        for handle in _H5_FILES.values():
            handle.close()
    _H5_FILES.clear()


# HDF5 files left open on in-memory buffers (remote shards) crashed the interpreter at exit (SIGSEGV while
# tearing down modules); closing them first avoids it.
atexit.register(close_h5_files)


@dataclass(frozen=True)
class H5Layout:
    """What the fast path needs of a shard, read once per process: h5py object lookups and key reads cost
    more than reading a block of small clips."""

    video_shape: tuple[int, ...]  # (N, T, H, W, C)
    keys: list[str]
    offsets: NDArray[np.int64] | None  # each clip's chunk in the file; None: not plain, read through h5py


_H5_LAYOUTS: IndexCache[H5Layout] = IndexCache(lambda layout: layout.video_shape[0])


def h5_layout(shard: ShardRef, locking: bool | None) -> H5Layout:
    """The shard's :class:`H5Layout`, cached per process, path, size and mtime; the file is opened (or taken
    from the open-file cache) only to read a layout not cached yet."""
    path = shard.local_path
    stat = os.stat(path) if path is not None else None
    cache_key = (shard.url, os.getpid(), stat and stat.st_size, stat and stat.st_mtime_ns)
    layout = _H5_LAYOUTS.get(cache_key)
    if layout is None:
        handle = h5_file(shard, locking)
        offsets = h5_chunk_offsets(shard, handle)
        keys = [str(k) for k in handle["key"].asstr()[:]] if offsets is not None else []
        layout = H5Layout(tuple(handle["video"].shape), keys, offsets)
        _H5_LAYOUTS.put(cache_key, layout)
    return layout


def h5_chunk_offsets(shard: ShardRef, handle) -> NDArray[np.int64] | None:
    """File offsets of each clip's chunk when chunks are one plain clip (no filters), else None (use h5py)."""
    ds = handle["video"]
    offsets = None
    plain = ds.chunks == (1, *ds.shape[1:]) and ds.id.get_create_plist().get_nfilters() == 0
    if plain and ds.dtype == np.uint8 and shard.local_path is not None:
        clip_bytes = int(np.prod(ds.shape[1:]))
        offsets = np.full(ds.shape[0], -1, dtype=np.int64)

        def visit(info) -> None:
            if info.size == clip_bytes and info.filter_mask == 0:
                offsets[info.chunk_offset[0]] = info.byte_offset

        try:
            ds.id.chunk_iter(visit)
        except (AttributeError, NotImplementedError, RuntimeError):  # HDF5 < 1.12.3 / old h5py
            for index in range(ds.shape[0]):
                visit(ds.id.get_chunk_info_by_coord((index, 0, 0, 0, 0)))
        if (offsets < 0).any():
            offsets = None  # unallocated or odd chunks: let h5py handle them
    return offsets
