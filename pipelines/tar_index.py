"""Index of a local tar shard: per sample key, offset and size of its video and meta members.

Plain USTAR headers (what the store writer and webdataset's TarWriter produce) are read with one ``pread``
each, checksums checked; anything else (pax, GNU long names) goes through :mod:`tarfile`, after the header
chain was walked and checked. A shard is data from wherever the store came from: every failure is a
ValueError (or tarfile's error) with the byte offset, never a loop or a read outside the file.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from webdataset.tariterators import base_plus_ext

from datagen.store.format import ARRAY_FIELDS, META_FIELD, VIDEO_FIELD, field_member
from pipelines.index_cache import IndexCache


@dataclass(frozen=True)
class TarIndex:
    """Per sample: key, and (offset, size) of its video and meta members (-1 when a meta member is absent)."""

    keys: list[str]
    video: NDArray[np.int64]  # (n, 2)
    meta: NDArray[np.int64]  # (n, 2)
    fields: dict[str, NDArray[np.int64]] = field(default_factory=dict)  # extra arrays (mask, flow): (n, 2)
    # What readers learned of this shard's bytes, kept as long as the index (e.g. its validated .npy header).
    notes: dict = field(default_factory=dict, compare=False, repr=False)


_FIELD_MEMBERS = {field_member(name): name for name in ARRAY_FIELDS}


_TAR_INDEX: IndexCache[TarIndex] = IndexCache(lambda index: len(index.keys))


# pax / GNU long-name records are a few hundred bytes; Python < 3.11.10 parses big ones in quadratic time
# (CVE-2024-6232), so a larger one is refused before tarfile sees it.
MAX_EXTENDED_HEADER = 8 << 10
_EXTENDED = (b"x", b"g", b"L", b"K")


def _octal(field: bytes, what: str, offset: int) -> int:
    """A header's number: octal digits only (``int(.., 8)`` takes a sign, and a size of -1000 stepped the
    scan back forever), or positive base-256 (the 0x80 prefix); empty is 0."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if digits.strip(b"01234567"):
        raise ValueError(f"tar header at byte {offset}: {what} {bytes(field)!r} is not a number")
    return int(digits or b"0", 8)


def _ustar_members(path: str) -> list[tuple[str, int, int]] | None:
    """``(name, data_offset, size)`` of the regular members of a plain USTAR tar, one ``pread`` per header;
    None when other headers (pax, GNU long names, links...) need :mod:`tarfile`.

    Walks every header either way, checking checksums, numbers, that data lies inside the file and that
    extended headers are small, so tarfile only ever gets a tar whose header chain is sound.
    """
    members = []
    plain = True
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        offset = 0
        while offset + 512 <= size:
            header = os.pread(fd, 512, offset)
            if len(header) < 512:
                raise ValueError(f"tar header at byte {offset} is cut short (truncated)")
            if header == bytes(512):
                return members if plain else None  # end-of-archive marker
            try:
                stored = _octal(header[148:156], "checksum", offset)
            except ValueError:
                stored = -1
            if sum(header[:148]) + 256 + sum(header[156:]) != stored:
                raise ValueError(f"bad tar header checksum at byte {offset}")
            kind = header[156:157]
            length = _octal(header[124:136], "size", offset)
            if offset + 512 + length > size:
                raise ValueError(f"tar member at byte {offset} runs past the end of the file (truncated)")
            if kind in _EXTENDED and length > MAX_EXTENDED_HEADER:
                raise ValueError(f"tar extended header at byte {offset} of {length} bytes (at most 8 KiB)")
            if kind not in (b"0", b"\0") or header[257:262] != b"ustar":
                plain = False
            elif plain:
                name = header[:100].split(b"\0", 1)[0]
                prefix = header[345:500].split(b"\0", 1)[0]
                try:
                    text = (prefix + b"/" + name if prefix else name).decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(f"tar member name at byte {offset} is not UTF-8") from None
                members.append((text, offset + 512, length))
            offset += 512 + (length + 511) // 512 * 512
    if offset < size or not members and size:
        raise ValueError("tar ends inside a header (truncated)")
    return members if plain else None


def _tarfile_members(path: str) -> list[tuple[str, int, int]]:
    """Regular members through :mod:`tarfile`, each checked to lie inside the file, after the last one (a
    pax ``size`` record of -1536 made tarfile read one header forever)."""
    size = os.path.getsize(path)
    members = []
    last = -1
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.size < 0 or member.offset <= last:
                raise ValueError(f"tar member {member.name!r:.80} at byte {member.offset}: bad size or order")
            last = member.offset
            if member.isreg():
                if member.offset_data + member.size > size:
                    raise ValueError(f"member {member.name} runs past the end of the file (truncated)")
                members.append((member.name, member.offset_data, member.size))
    return members


def _scan_tar(path: str) -> TarIndex:
    members = _ustar_members(path)
    if members is None:
        members = _tarfile_members(path)
    keys: list[str] = []
    video: list[tuple[int, int]] = []
    meta: list[tuple[int, int]] = []
    extra: dict[str, dict[int, tuple[int, int]]] = {}
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
        elif field in _FIELD_MEMBERS:
            extra.setdefault(_FIELD_MEMBERS[field], {})[len(keys) - 1] = (offset, length)
    vid = np.array(video, dtype=np.int64).reshape(-1, 2)
    if len(vid) and vid[:, 0].min() < 0:
        raise ValueError(f"sample {keys[int(np.argmin(vid[:, 0]))]} has no {VIDEO_FIELD}")
    fields = {}
    for name, spans in extra.items():
        table = np.full((len(keys), 2), -1, dtype=np.int64)
        for i, span in spans.items():
            table[i] = span
        fields[name] = table
    return TarIndex(keys, vid, np.array(meta, dtype=np.int64).reshape(-1, 2), fields)


def tar_index(path: str) -> TarIndex:
    """The member index of a local tar shard, cached per process (keyed by path, size and mtime)."""
    stat = os.stat(path)
    cache_key = (path, stat.st_size, stat.st_mtime_ns)
    index = _TAR_INDEX.get(cache_key)
    if index is None:
        index = _scan_tar(path)
        _TAR_INDEX.put(cache_key, index)
    return index
