"""Scatter reads: many (file offset, destination buffer) pieces with few ``preadv`` calls, one copy each."""

from __future__ import annotations

import os
from collections import OrderedDict
from operator import itemgetter

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import ShardError
from pipelines.sources import ShardRef

_CACHE_SIZE = 64

_FDS: OrderedDict[str, int] = OrderedDict()
_FD_OWNER = os.getpid()


def fd_for(path: str) -> int:
    """A read-only descriptor for ``pread``, cached per process (a forked child opens its own)."""
    global _FD_OWNER
    if os.getpid() != _FD_OWNER:
        _FDS.clear()  # the parent's descriptors stay the parent's business
        _FD_OWNER = os.getpid()
    fd = _FDS.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        _FDS[path] = fd
        while len(_FDS) > _CACHE_SIZE:
            os.close(_FDS.popitem(last=False)[1])
    return fd


def close_fd(path: str) -> None:
    """Close this process's cached descriptor of ``path`` (a shard cache is about to let the file go)."""
    fd = _FDS.pop(path, None) if os.getpid() == _FD_OWNER else None
    if fd is not None:
        os.close(fd)


class Gather:
    """Reads ``(offset, buffer)`` pieces of one file with few ``preadv`` calls (one copy from the page cache).

    Pieces are collected as arrays (per-piece Python work was most of a worker's time on small clips) and
    read in offset order: a gap under ``_GAP`` bytes (tar headers, meta members) is read into a scratch buffer
    rather than starting a new call; a longer gap or a step back starts one, as does a full iovec.
    """

    def __init__(self, shard: ShardRef, fd: int) -> None:
        self.shard, self.fd = shard, fd
        self.offsets: list[NDArray[np.int64]] = []
        self.lengths: list[NDArray[np.int64]] = []
        self.buffers: list[memoryview] = []

    def add_windows(
        self,
        out: NDArray[np.uint8],
        bases: list[int],
        rows: list[int],
        firsts: list[int],
        stride: int,
        headers: list[memoryview] | None = None,
    ) -> None:
        """For each sample: frames ``first, first + stride, ...`` of the C-order clip stored at byte ``base``,
        into row ``row`` of ``out`` ``(rows, length, H, W, C)``; with ``headers`` (an equal-sized view per
        sample), also the bytes just before each clip (its .npy header). Samples come in ``base`` order."""
        n = len(bases)
        if not n:
            return
        length = out.shape[1]
        frame_bytes = out[0, 0].nbytes
        row_bytes = length * frame_bytes
        flat = memoryview(out.reshape(-1))
        base_at = np.asarray(bases, dtype=np.int64)
        clip_at = base_at + np.asarray(firsts, dtype=np.int64) * frame_bytes
        row_at = np.asarray(rows, dtype=np.int64) * row_bytes
        if stride == 1:  # one piece per sample: the whole window
            offsets, dests, piece = clip_at[:, None], row_at[:, None], row_bytes
        else:  # one piece per frame
            steps = np.arange(length, dtype=np.int64)
            offsets = clip_at[:, None] + steps * (stride * frame_bytes)
            dests, piece = row_at[:, None] + steps * frame_bytes, frame_bytes
        views = [flat[d : d + piece] for d in dests.ravel().tolist()]
        lengths = np.full(offsets.shape, piece, dtype=np.int64)
        if headers is not None:
            header_len = len(headers[0])
            offsets = np.concatenate([base_at[:, None] - header_len, offsets], axis=1)
            lengths = np.concatenate([np.full((n, 1), header_len, dtype=np.int64), lengths], axis=1)
            per = offsets.shape[1]
            merged: list[memoryview] = headers * per
            merged[0::per] = headers
            for j in range(1, per):
                merged[j::per] = views[j - 1 :: per - 1]
            views = merged
        self.offsets.append(offsets.ravel())
        self.lengths.append(lengths.ravel())
        self.buffers.extend(views)

    def flush(self) -> None:
        if not self.buffers:
            return
        offsets, lengths = np.concatenate(self.offsets), np.concatenate(self.lengths)
        buffers = self.buffers
        self.offsets, self.lengths, self.buffers = [], [], []
        gaps = offsets[1:] - (offsets[:-1] + lengths[:-1])
        cuts = np.flatnonzero((gaps < 0) | (gaps > _GAP)) + 1
        begin = 0
        for end in [*cuts.tolist(), len(buffers)]:
            iov = _interleave(buffers[begin:end], gaps[begin : end - 1])
            at = int(offsets[begin])
            for first in range(0, len(iov), _IOV_MAX):
                chunk = iov if len(iov) <= _IOV_MAX else iov[first : first + _IOV_MAX]
                expected = (
                    int(offsets[end - 1] + lengths[end - 1]) - at if chunk is iov else sum(map(len, chunk))
                )
                if os.preadv(self.fd, chunk, at) != expected:
                    raise ShardError(self.shard.url, "file ended early (truncated)")
                at += expected
            begin = end


_GAP = 16 << 10
_IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 1024
_SCRATCH = memoryview(bytearray(_GAP))
_SCRATCH_BY_LENGTH: list[memoryview] = []


def _scratch_views() -> list[memoryview]:
    """Views of the scratch buffer's first 0, 1, ..., _GAP bytes (made once: per-gap slicing was a
    noticeable part of a worker's time on small clips)."""
    if not _SCRATCH_BY_LENGTH:
        _SCRATCH_BY_LENGTH.extend(_SCRATCH[:n] for n in range(_GAP + 1))
    return _SCRATCH_BY_LENGTH


def _interleave(pieces: list[memoryview], gaps: NDArray[np.int64]) -> list[memoryview]:
    """piece, gap, piece, ..., piece, each non-empty gap (``gaps[i]`` bytes after piece ``i``) a scratch view;
    empty gaps get no entry (the kernel pays per entry). Built by index, without a per-piece loop."""
    nonzero = np.flatnonzero(gaps)
    if not len(nonzero):
        return pieces
    n = len(pieces)
    piece_at = np.arange(n, dtype=np.int64)
    piece_at[1:] += np.cumsum(gaps != 0)
    order = np.empty(n + len(nonzero), dtype=np.int64)
    order[piece_at] = np.arange(n)
    order[piece_at[nonzero] + 1] = n + np.arange(len(nonzero))
    return _pick(pieces + _pick(_scratch_views(), gaps[nonzero].tolist()), order.tolist())


def _pick(items: list[memoryview], indices: list[int]) -> list[memoryview]:
    """``[items[i] for i in indices]`` at C speed."""
    if len(indices) == 1:
        return [items[indices[0]]]
    return list(itemgetter(*indices)(items)) if indices else []
