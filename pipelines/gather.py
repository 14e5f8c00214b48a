"""Scatter reads: many (file offset, destination buffer) pieces with few ``preadv`` calls, one copy each."""

from __future__ import annotations

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


class Gather:
    """Reads ``(offset, buffer)`` pieces of one file with few ``preadv`` calls (one copy from the page cache).

    Pieces come in increasing offset order; a gap under ``_GAP`` bytes (tar headers, meta members) is read
    into a scratch buffer rather than starting a new call; a longer gap, a step back or a full iovec starts
    one.
    """

    def __init__(self, shard: ShardRef, fd: int) -> None:
        self.shard, self.fd = shard, fd
        self.start = self.pos = -1
        self.buffers: list[memoryview] = []
        self.expected = 0

    def add(self, offset: int, buffer: memoryview) -> None:
        if self.buffers:
            gap = offset - self.pos
            if gap < 0 or gap > _GAP or len(self.buffers) >= _IOV_MAX - 1:
                self.flush()
            elif gap:
                self.buffers.append(_SCRATCH[:gap])
                self.expected += gap
        if not self.buffers:
            self.start = offset
        self.buffers.append(buffer)
        self.expected += len(buffer)
        self.pos = offset + len(buffer)

    def add_windows(
        self,
        out: NDArray[np.uint8],
        bases: list[int],
        rows: list[int],
        firsts: list[int],
        stride: int,
        headers: memoryview | None = None,
    ) -> None:
        """For each sample: frames ``first, first + stride, ...`` of the C-order clip stored at byte ``base``,
        into row ``row`` of ``out`` ``(rows, length, H, W, C)``; with ``headers`` (k equal slots), also the
        bytes just before each clip (its .npy header) into slot k."""
        length = out.shape[1]
        frame_bytes = out[0, 0].nbytes
        row_bytes = length * frame_bytes
        flat = memoryview(out.reshape(-1))
        header_len = len(headers) // max(1, len(bases)) if headers is not None else 0
        for k, (base, row, first) in enumerate(zip(bases, rows, firsts, strict=True)):
            if headers is not None:
                self.add(base - header_len, headers[k * header_len : (k + 1) * header_len])
            if stride == 1:
                self.add(base + first * frame_bytes, flat[row * row_bytes : (row + 1) * row_bytes])
                continue
            for k in range(length):
                at = row * row_bytes + k * frame_bytes
                self.add(base + (first + k * stride) * frame_bytes, flat[at : at + frame_bytes])

    def flush(self) -> None:
        if self.buffers:
            got = os.preadv(self.fd, self.buffers, self.start)
            if got != self.expected:
                raise ShardError(self.shard.url, "file ended early (truncated)")
        self.buffers, self.expected = [], 0


_GAP = 16 << 10
_IOV_MAX = 512
_SCRATCH = memoryview(bytearray(_GAP))
