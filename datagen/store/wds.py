"""WebDataset tar shards with reproducible bytes.

Members per sample, in key order: `<key>.video.npy` (numpy format, no pickle), then each extra array field
in the canonical order (`<key>.mask.npy`, `<key>.flow.npy`; only in stores made with them) and
`<key>.meta.json`.
Every header field that could vary between runs (mtime, owner, mode) is fixed, so the same samples give
the same sha256 on any machine.

Headers are packed here rather than through `tarfile.addfile`: profiling `datagen balls` showed tarfile's
per-member overhead (TarInfo objects, generic header encoding) costing as much as simulating the clip. The
bytes are exactly what `tarfile` writes in USTAR format for the same members (a test pins this), and the
sha256 is computed while writing instead of re-reading the file.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import orjson

from datagen.errors import DatagenError
from datagen.store.atomic import HashingWriter, write_error
from datagen.store.format import ARRAY_FIELDS, META_FIELD, VIDEO_FIELD, field_member
from datagen.store.sample import Sample

MTIME = 0
MODE = 0o444
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


META_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_SORT_KEYS


def meta_bytes(meta: dict) -> bytes:
    """A sample's ground truth as canonical JSON: orjson, sorted keys, no spaces, numpy arrays and scalars
    as JSON lists and numbers (floats as their shortest round-trip text, NaN and infinities as null)."""
    return orjson.dumps(meta, default=_plain, option=META_OPTIONS)


def _plain(value):
    """What orjson leaves to us: numpy arrays it does not take natively (non-contiguous, other dtypes)."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"ground truth must be JSON data or numpy arrays, got {type(value).__name__}")


_NPY_HEADERS: dict[tuple, bytes] = {}


def npy_header(array: np.ndarray) -> bytes:
    """The .npy header numpy writes for this dtype and shape (cached: one per shard in practice)."""
    key = (array.dtype.str, array.shape)
    header = _NPY_HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(array))
        header = _NPY_HEADERS[key] = buf.getvalue()
    return header


def npy_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    return npy_header(array) + array.tobytes()


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


_HEADER_TAILS: dict[int, tuple[bytes, bytes, int]] = {}


def ustar_header(name: str, size: int) -> bytes:
    """A USTAR header for a regular file with the fixed owner, mode and mtime (as tarfile writes it).

    Everything after the name depends only on `size`, so that part and its byte sum are cached.
    """
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"member name too long for USTAR: {name!r}")
    cached = _HEADER_TAILS.get(size)
    if cached is None:
        fields = b"".join(
            (
                _octal(MODE, 8),
                _octal(0, 8),  # uid
                _octal(0, 8),  # gid
                _octal(size, 12),
                _octal(MTIME, 12),
            )
        )
        rest = b"".join(
            (
                b"0",  # regular file
                b"\0" * 100,  # linkname
                b"ustar\x0000",
                b"\0" * 64,  # uname, gname
                b"\0" * 16,  # devmajor, devminor: empty for regular files
                b"\0" * 155,  # prefix
            )
        ).ljust(BLOCK - 156, b"\0")
        cached = _HEADER_TAILS[size] = (fields, rest, sum(fields) + sum(rest) + 8 * ord(" "))
    fields, rest, partial_sum = cached
    checksum = b"%06o\0 " % (partial_sum + sum(raw))
    return raw.ljust(100, b"\0") + fields + checksum + rest


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def write_wds(path: Path, samples: Iterable[Sample]) -> tuple[list[str], str]:
    """Write `samples` into the tar at `path`; returns (keys in order, sha256 of the file).

    A sample is three writes (headers, clip bytes, the rest) into a buffered file that hashes them on the way
    (:class:`~datagen.store.atomic.HashingWriter`).
    A failed write (full disk, I/O error) raises :class:`~datagen.store.atomic.WriteError` naming the
    folder and the space the file needs; the caller (an atomic temporary) removes the partial file.
    """
    try:
        return _write_wds(path, samples)
    except OSError as e:
        needed = tar_size(samples) if isinstance(samples, Sequence) else None
        raise write_error(e, path, needed) from None


def _write_wds(path: Path, samples: Iterable[Sample]) -> tuple[list[str], str]:
    keys: list[str] = []
    with HashingWriter(path) as out:
        for s in samples:
            video = np.ascontiguousarray(s.video)
            header = npy_header(video)
            meta = meta_bytes(s.meta)
            n_video = len(header) + video.nbytes
            out.write(ustar_header(f"{s.key}.{VIDEO_FIELD}", n_video) + header)
            out.write(video)
            if s.fields:
                out.write(_padding(n_video))
                n_video = 0  # its padding is written
                for name in _field_order(s):
                    array = np.ascontiguousarray(s.fields[name])
                    data = npy_header(array)
                    size = len(data) + array.nbytes
                    out.write(ustar_header(f"{s.key}.{field_member(name)}", size) + data)
                    out.write(array)
                    out.write(_padding(size))
            out.write(
                b"".join(
                    (
                        _padding(n_video),
                        ustar_header(f"{s.key}.{META_FIELD}", len(meta)),
                        meta,
                        _padding(len(meta)),
                    )
                )
            )
            keys.append(s.key)
        out.write(b"\0" * _end_padding(out.size))
        sha256 = out.close()
    return keys, sha256


def _field_order(s: Sample) -> list[str]:
    return [name for name in ARRAY_FIELDS if name in s.fields]


def _end_padding(size: int) -> int:
    """Two zero blocks, then padding to a whole record, as tarfile ends an archive."""
    end = 2 * BLOCK
    return end + -(size + end) % RECORD


def _member_size(size: int) -> int:
    return BLOCK + size + len(_padding(size))


def tar_size(samples: Sequence[Sample]) -> int:
    """The size of the tar :func:`write_wds` makes from `samples` (for a disk-full message)."""
    size = 0
    for s in samples:
        size += _member_size(len(npy_header(s.video)) + s.video.nbytes)
        for name in _field_order(s):
            size += _member_size(len(npy_header(s.fields[name])) + s.fields[name].nbytes)
        size += _member_size(len(meta_bytes(s.meta)))
    return size + _end_padding(size)


NPY_HEADER_MAX = 1 << 16
"""A .npy header numpy writes is far shorter (format 1.0 caps it at 65535 bytes)."""
MAX_META_BYTES = 16 << 20
"""Largest ground-truth member a bounded read accepts."""
FIELD_SUFFIXES = {field_member(name): name for name in ARRAY_FIELDS}
MAX_FIELD_FACTOR = 4
"""An array field is at most this many times a clip's bytes (flow: 2 float16 per pixel of a gray clip)."""


def read_wds(path: Path, *, max_clip_bytes: int | None = None) -> Iterator[Sample]:
    """Read a shard back without webdataset (used by verify, preview and tests).

    With `max_clip_bytes`, a member larger than a clip of that many bytes (or a ground-truth member over
    MAX_META_BYTES) raises DatagenError before it is read: its size comes from the tar header.
    """
    with tarfile.open(path, mode="r") as tar:
        pending: dict[str, dict] = {}
        for member in tar:
            key, _, field = member.name.partition(".")
            if max_clip_bytes is not None:
                limit = MAX_META_BYTES
                if field == VIDEO_FIELD:
                    limit = max_clip_bytes + NPY_HEADER_MAX
                elif field in FIELD_SUFFIXES:
                    limit = MAX_FIELD_FACTOR * max_clip_bytes + NPY_HEADER_MAX
                if member.size > limit:
                    raise DatagenError(
                        f"{path}: member {member.name!r:.80} is {member.size} bytes, over {limit}"
                    )
            data = tar.extractfile(member).read()
            entry = pending.setdefault(key, {})
            if field == VIDEO_FIELD:
                entry["video"] = np.load(io.BytesIO(data), allow_pickle=False)
            elif field in FIELD_SUFFIXES:
                entry.setdefault("fields", {})[FIELD_SUFFIXES[field]] = np.load(
                    io.BytesIO(data), allow_pickle=False
                )
            elif field == META_FIELD:
                entry["meta"] = json.loads(data)
            if "video" in entry and "meta" in entry:
                yield Sample(key, entry["video"], entry["meta"], entry.get("fields", {}))
                del pending[key]
        if pending:
            raise ValueError(f"{path}: incomplete samples {sorted(pending)[:3]}")
