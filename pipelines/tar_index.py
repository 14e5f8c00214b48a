"""Index of a local tar shard: per sample key, offset and size of its video and meta members.

Plain USTAR headers (what the store writer and webdataset's TarWriter produce) are read with one ``pread``
each, checksums checked; anything else (pax, GNU long names) goes through :mod:`tarfile`.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from webdataset.tariterators import base_plus_ext

from datagen.store.format import META_FIELD, VIDEO_FIELD
from pipelines.index_cache import IndexCache


@dataclass(frozen=True)
class TarIndex:
    """Per sample: key, and (offset, size) of its video and meta members (-1 when a meta member is absent)."""

    keys: list[str]
    video: NDArray[np.int64]  # (n, 2)
    meta: NDArray[np.int64]  # (n, 2)


_TAR_INDEX: IndexCache[TarIndex] = IndexCache(lambda index: len(index.keys))


class _NotPlainUstar(Exception):
    """A member this fast scanner does not handle (pax / GNU long names, links...): use tarfile instead."""


def _ustar_members(path: str) -> list[tuple[str, int, int]]:
    """``(name, data_offset, size)`` of the regular members of a plain USTAR tar, one ``pread`` per header.

    Checks every header's checksum and that data lies inside the file; raises _NotPlainUstar for headers it
    does not parse, so :mod:`tarfile` takes over.
    """
    members = []
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        offset = 0
        while offset + 512 <= size:
            header = os.pread(fd, 512, offset)
            if len(header) < 512:
                raise ValueError(f"tar header at byte {offset} is cut short (truncated)")
            if header == bytes(512):
                return members  # end-of-archive marker
            stored = header[148:156].split(b"\0", 1)[0].strip()
            if not stored or sum(header[:148]) + 256 + sum(header[156:]) != int(stored, 8):
                raise ValueError(f"bad tar header checksum at byte {offset}")
            kind = header[156:157]
            if kind not in (b"0", b"\0") or header[124] & 0x80 or not header[257:262] == b"ustar":
                raise _NotPlainUstar
            length = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
            if prefix:
                name = f"{prefix}/{name}"
            if offset + 512 + length > size:
                raise ValueError(f"member {name} runs past the end of the file (truncated)")
            members.append((name, offset + 512, length))
            offset += 512 + (length + 511) // 512 * 512
    if offset < size or not members and size:
        raise ValueError("tar ends inside a header (truncated)")
    return members


def _tarfile_members(path: str) -> list[tuple[str, int, int]]:
    size = os.path.getsize(path)
    members = []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.isreg():
                if member.offset_data + member.size > size:
                    raise ValueError(f"member {member.name} runs past the end of the file (truncated)")
                members.append((member.name, member.offset_data, member.size))
    return members


def _scan_tar(path: str) -> TarIndex:
    try:
        members = _ustar_members(path)
    except _NotPlainUstar:
        members = _tarfile_members(path)
    keys: list[str] = []
    video: list[tuple[int, int]] = []
    meta: list[tuple[int, int]] = []
    for name, offset, length in members:
        key, field = base_plus_ext(name)
        if key is None:
            continue
        if not keys or keys[-1] != key:
            if keys and key < keys[-1]:
                raise ValueError(f"keys out of order ({key} after {keys[-1]})")
            keys.append(key)
            video.append((-1, -1))
            meta.append((-1, -1))
        if field == VIDEO_FIELD:
            video[-1] = (offset, length)
        elif field == META_FIELD:
            meta[-1] = (offset, length)
    vid = np.array(video, dtype=np.int64).reshape(-1, 2)
    if len(vid) and vid[:, 0].min() < 0:
        raise ValueError(f"sample {keys[int(np.argmin(vid[:, 0]))]} has no {VIDEO_FIELD}")
    return TarIndex(keys, vid, np.array(meta, dtype=np.int64).reshape(-1, 2))


def tar_index(path: str) -> TarIndex:
    """The member index of a local tar shard, cached per process (keyed by path, size and mtime)."""
    stat = os.stat(path)
    cache_key = (path, stat.st_size, stat.st_mtime_ns)
    index = _TAR_INDEX.get(cache_key)
    if index is None:
        index = _scan_tar(path)
        _TAR_INDEX.put(cache_key, index)
    return index
