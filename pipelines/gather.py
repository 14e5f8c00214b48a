"""Scatter reads: many (file offset, destination buffer) pieces with few ``preadv`` calls, one copy each."""

from __future__ import annotations

import math
import os
from collections import OrderedDict

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
    read in the order added: a gap under ``_GAP`` bytes (tar headers, meta members) is read into a scratch
    buffer rather than starting a new call; a longer gap or a step back starts one, as does a full iovec.
    """

    def __init__(self, shard: ShardRef, fd: int) -> None:
        self.shard, self.fd = shard, fd
        self.offsets: list[int] = []
        self.ends: list[int] = []
        self.buffers: list[memoryview] = []

    def add_windows(
        self,
        out: NDArray[np.uint8],
        bases: NDArray[np.int64] | list[int],
        rows: NDArray[np.int64] | list[int],
        firsts: NDArray[np.int64] | list[int],
        stride: int,
        headers: list[memoryview] | None = None,
    ) -> None:
        """For each sample: frames ``first, first + stride, ...`` of the C-order clip stored at byte ``base``,
        into row ``row`` of ``out`` ``(rows, length, H, W, C)`` (C-contiguous); with ``headers`` (an
        equal-sized view per sample), also the bytes just before each clip (its .npy header). Samples come in
        ``base`` order.

        A run of a shard is one call, laid out with a few whole-array operations and list slicing: the fixed
        cost per run is what interleaved orders (many short runs per block) pay for.
        """
        n = len(bases)
        if not n:
            return
        length = out.shape[1]
        frame_bytes = math.prod(out.shape[2:]) * out.itemsize
        row_bytes = length * frame_bytes
        flat = memoryview(out.reshape(-1))
        base_at = np.asarray(bases, dtype=np.int64)
        clip_at = base_at + np.asarray(firsts, dtype=np.int64) * frame_bytes
        dest = np.asarray(rows, dtype=np.int64) * row_bytes
        if stride == 1:  # one piece per sample: the whole window
            offsets = clip_at.tolist()
            views = [flat[d : d + row_bytes] for d in dest.tolist()]
            piece = row_bytes
        else:  # one piece per frame
            steps = np.arange(length, dtype=np.int64)
            offsets = (clip_at[:, None] + steps * (stride * frame_bytes)).ravel().tolist()
            views = [
                flat[d : d + frame_bytes] for d in (dest[:, None] + steps * frame_bytes).ravel().tolist()
            ]
            piece = frame_bytes
        ends = [offset + piece for offset in offsets]
        if headers is not None:  # per sample: its header, then its pieces
            header_len = len(headers[0])
            header_ends = base_at.tolist()
            per = len(views) // n + 1
            offsets, ends, views = (
                _merge([end - header_len for end in header_ends], offsets, per),
                _merge(header_ends, ends, per),
                _merge(headers[:n], views, per),
            )
        self.offsets.extend(offsets)
        self.ends.extend(ends)
        self.buffers.extend(views)

    def flush(self) -> None:
        if not self.buffers:
            return
        calls = _calls(self.offsets, self.ends, self.buffers)
        self.offsets, self.ends, self.buffers = [], [], []
        for at, end, iov in calls:
            for first in range(0, len(iov), _IOV_MAX):
                chunk = iov if len(iov) <= _IOV_MAX else iov[first : first + _IOV_MAX]
                expected = end - at if chunk is iov else sum(map(len, chunk))
                if os.preadv(self.fd, chunk, at) != expected:
                    raise ShardError(self.shard.url, "file ended early (truncated)")
                at += expected


def _merge(heads: list, rest: list, per: int) -> list:
    """``heads[0], rest[0 : per - 1], heads[1], rest[per - 1 : 2 * (per - 1)], ...`` by slice assignment."""
    merged = heads * per
    merged[0::per] = heads
    for j in range(1, per):
        merged[j::per] = rest[j - 1 :: per - 1]
    return merged


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


def _calls(
    offsets: list[int], ends: list[int], pieces: list[memoryview]
) -> list[tuple[int, int, list[memoryview]]]:
    """``(file offset, end, iovec)`` per ``preadv``: pieces in the order given, each gap of 1 to ``_GAP``
    bytes read into a scratch view, a longer gap or a step back starting the next call.

    One plain loop over the pieces: for the runs of a few dozen pieces that interleaved blocks read, it
    costs less than the dozen array operations that did this before.
    """
    scratch = _scratch_views()
    calls = []
    at = end = offsets[0]
    iov: list[memoryview] = []
    for offset, stop, piece in zip(offsets, ends, pieces, strict=True):
        gap = offset - end
        if gap:
            if 0 < gap <= _GAP:
                iov.append(scratch[gap])
            else:
                calls.append((at, end, iov))
                iov, at = [], offset
        iov.append(piece)
        end = stop
    calls.append((at, end, iov))
    return calls
