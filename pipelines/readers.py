"""Read a run of consecutive samples ``[start, stop)`` of one shard, for both store formats.

- Local tar shards: the member headers are scanned once per process (an index of offsets), then a run is one
  sequential ``read`` of its byte span; each ``.npy`` is decoded without a copy by numpy's header parser.
- Streamed tar shards (``http(s)://``, ``pipe:``, ...): webdataset's ``gopen`` and tar stages
  (``tar_file_expander`` -> ``group_by_keys``) walk the stream up to the run.
- HDF5 shards: opened lazily in the process that reads (a DataLoader worker), kept open for its life, never
  reused across ``fork``; a run is one ``read_direct`` of a contiguous slice.

Nothing is unpickled: object dtypes are refused, ``np.load`` only ever runs with ``allow_pickle=False``.
Every failure is a :class:`ShardError` naming the shard.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from webdataset.gopen import gopen
from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from pipelines.errors import ShardError
from pipelines.sources import ShardRef

VIDEO_FIELD = "video.npy"
META_FIELD = "meta.json"
_CACHE_SIZE = 64


@dataclass
class RawRun:
    """Samples read from one shard in shard order: keys, uint8 videos ``(n, T, H, W, C)``, JSON meta texts."""

    keys: list[str]
    video: NDArray[np.uint8]
    meta: list[str] | None


# ---------------------------------------------------------------- .npy without pickle
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


def parse_npy_header(buf: bytes | memoryview) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """``(dtype, shape, fortran_order, data_offset)`` of .npy bytes (at least the header), parsed by numpy.

    Object dtypes are refused (they would need pickle). Results are cached by the header's bytes: every sample
    of a store shares one header, so the parse runs once per process.
    """
    view = memoryview(buf)
    if bytes(view[:6]) != b"\x93NUMPY":
        raise ValueError("not a .npy file")
    major = view[6]
    if major == 1:
        end = 10 + int.from_bytes(view[8:10], "little")
    elif major in (2, 3):
        end = 12 + int.from_bytes(view[8:12], "little")
    else:
        raise ValueError(f"unknown .npy version {major}")
    header = bytes(view[:end])
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        if len(header) != end:
            raise ValueError(".npy header is cut short")
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        if dtype.hasobject:
            raise ValueError(".npy holds Python objects (would need pickle); refused")
        parsed = (dtype, tuple(shape), fortran, end)
        if len(_NPY_HEADERS) < 256:
            _NPY_HEADERS[header] = parsed
    return parsed


def decode_npy(buf: bytes | memoryview) -> NDArray:
    """A numpy array viewing ``buf`` (.npy bytes), without a copy and without pickle."""
    view = memoryview(buf)
    dtype, shape, fortran, offset = parse_npy_header(view)
    count = int(np.prod(shape, dtype=np.int64))
    if len(view) - offset < count * dtype.itemsize:
        raise ValueError(".npy data is cut short")
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


# ---------------------------------------------------------------- local tar: header index + span reads
@dataclass(frozen=True)
class TarIndex:
    """Per sample: key, and (offset, size) of its video and meta members (-1 when a meta member is absent)."""

    keys: list[str]
    video: NDArray[np.int64]  # (n, 2)
    meta: NDArray[np.int64]  # (n, 2)


_TAR_INDEX: OrderedDict[tuple[str, int, int], TarIndex] = OrderedDict()


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
        _TAR_INDEX[cache_key] = index
        while len(_TAR_INDEX) > _CACHE_SIZE:
            _TAR_INDEX.popitem(last=False)
    return index


def _check_count(shard: ShardRef, n: int, keys_first: str | None, keys_last: str | None) -> None:
    if shard.n_samples is not None and n != shard.n_samples:
        raise ShardError(shard.url, f"holds {n} samples but the manifest says {shard.n_samples}")
    if shard.first_key is not None and keys_first is not None and keys_first != shard.first_key:
        raise ShardError(shard.url, f"first key {keys_first} but the manifest says {shard.first_key}")
    if shard.last_key is not None and keys_last is not None and keys_last != shard.last_key:
        raise ShardError(shard.url, f"last key {keys_last} but the manifest says {shard.last_key}")


def _stack(shard: ShardRef, keys: list[str], arrays: list[NDArray]) -> NDArray[np.uint8]:
    if not arrays:
        return np.empty((0,), dtype=np.uint8)
    first = arrays[0]
    for key, arr in zip(keys, arrays, strict=True):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape != first.shape:
            raise ShardError(
                shard.url, f"sample {key}: video {arr.dtype} {arr.shape}, expected uint8 (T, H, W, C)"
            )
    return np.stack(arrays)


def _read_local_tar(shard: ShardRef, path: str, start: int, stop: int | None, with_meta: bool) -> RawRun:
    index = tar_index(path)
    n = len(index.keys)
    _check_count(shard, n, index.keys[0] if n else None, index.keys[-1] if n else None)
    stop = n if stop is None else stop
    if stop > n:
        raise ShardError(shard.url, f"holds {n} samples, asked for samples up to {stop}")
    if stop <= start:
        return RawRun([], np.empty((0,), dtype=np.uint8), [] if with_meta else None)
    spans = index.video[start:stop]
    lo = int(spans[:, 0].min())
    hi = int((spans[:, 0] + spans[:, 1]).max())
    if with_meta:
        metas = index.meta[start:stop]
        present = metas[:, 0] >= 0
        if present.any():
            lo = min(lo, int(metas[present, 0].min()))
            hi = max(hi, int((metas[present, 0] + metas[present, 1]).max()))
    with open(path, "rb") as fh:
        fh.seek(lo)
        data = fh.read(hi - lo)
    if len(data) != hi - lo:
        raise ShardError(shard.url, "file ended early (truncated)")
    view = memoryview(data)
    keys = index.keys[start:stop]
    arrays = []
    for key, (off, size) in zip(keys, spans, strict=True):
        try:
            arrays.append(decode_npy(view[off - lo : off - lo + size]))
        except ValueError as exn:
            raise ShardError(shard.url, f"sample {key}: {exn}") from None
    meta = None
    if with_meta:
        meta = [
            bytes(view[off - lo : off - lo + size]).decode("utf-8") if off >= 0 else "{}"
            for off, size in index.meta[start:stop]
        ]
    return RawRun(list(keys), _stack(shard, keys, arrays), meta)


def _read_stream_tar(shard: ShardRef, start: int, stop: int | None, with_meta: bool) -> RawRun:
    stream = gopen(shard.url)
    keys: list[str] = []
    arrays: list[NDArray] = []
    metas: list[str] = []
    count = 0
    complete = False
    try:
        expanded = tar_file_expander([{"url": shard.url, "stream": stream}], handler=reraise_exception)
        for sample in group_by_keys(expanded, handler=reraise_exception):
            if stop is not None and count >= stop:
                complete = True
                break
            if count >= start:
                key = sample["__key__"]
                if VIDEO_FIELD not in sample:
                    raise ShardError(shard.url, f"sample {key} has no {VIDEO_FIELD}")
                try:
                    arrays.append(decode_npy(sample[VIDEO_FIELD]))
                except ValueError as exn:
                    raise ShardError(shard.url, f"sample {key}: {exn}") from None
                keys.append(key)
                if with_meta:
                    metas.append(sample.get(META_FIELD, b"{}").decode("utf-8"))
            count += 1
        else:
            complete = True
            _check_count(shard, count, None, keys[-1] if keys and stop is None else None)
    except ShardError:
        raise
    except Exception as exn:  # tar / transport errors from the stream
        raise ShardError(shard.url, f"cannot read: {exn}") from None
    finally:
        try:
            stream.close()
        except Exception:
            # Stopping a pipe early kills its writer (SIGPIPE); only a complete run is accepted then.
            if not complete:
                raise
    if stop is not None and count < stop:
        raise ShardError(shard.url, f"holds {count} samples, asked for samples up to {stop} (truncated?)")
    if start == 0 and keys:
        _check_count(ShardRef(shard.url, shard.fmt, None, shard.first_key), 0, keys[0], None)
    return RawRun(keys, _stack(shard, keys, arrays), metas if with_meta else None)


# ---------------------------------------------------------------- HDF5: lazily opened per process
_H5_FILES: OrderedDict[tuple[str, bool | None], object] = OrderedDict()
_H5_OWNER = os.getpid()
_H5_INHERITED: list[object] = []  # handles a forked child inherited: kept alive, never used or closed there


def _h5_file(shard: ShardRef, locking: bool | None):
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
            with gopen(shard.url) as stream:
                handle = h5py.File(io.BytesIO(stream.read()), "r", **kwargs)
        _H5_FILES[cache_key] = handle
        while len(_H5_FILES) > _CACHE_SIZE:
            _H5_FILES.popitem(last=False)[1].close()
    return handle


def close_h5_files() -> None:
    """Close the HDF5 files this process opened (call before forking workers you start yourself)."""
    if os.getpid() == _H5_OWNER:
        for handle in _H5_FILES.values():
            handle.close()
    _H5_FILES.clear()


def _read_h5(shard: ShardRef, start: int, stop: int | None, with_meta: bool, locking: bool | None) -> RawRun:
    try:
        handle = _h5_file(shard, locking)
        video_ds, key_ds = handle["video"], handle["key"]
        n = video_ds.shape[0]
        if key_ds.shape[0] != n:
            raise ShardError(shard.url, f"{n} videos but {key_ds.shape[0]} keys")
        if shard.n_samples is not None and n != shard.n_samples:
            raise ShardError(shard.url, f"holds {n} samples but the manifest says {shard.n_samples}")
        stop = n if stop is None else stop
        if stop > n:
            raise ShardError(shard.url, f"holds {n} samples, asked for samples up to {stop}")
        if video_ds.dtype != np.uint8 or video_ds.ndim != 5:
            raise ShardError(
                shard.url, f"video is {video_ds.dtype} {video_ds.shape}, expected uint8 (N,T,H,W,C)"
            )
        video = np.empty((stop - start, *video_ds.shape[1:]), dtype=np.uint8)
        if stop > start:
            video_ds.read_direct(video, np.s_[start:stop])
        keys = [str(k) for k in key_ds.asstr()[start:stop]]
        meta = (
            [str(m) for m in handle["meta"].asstr()[start:stop]] if with_meta and "meta" in handle else None
        )
        if with_meta and meta is None:
            meta = ["{}"] * len(keys)
    except ShardError:
        raise
    except Exception as exn:  # h5py raises OSError / KeyError / RuntimeError for broken files
        raise ShardError(shard.url, f"cannot read HDF5: {exn}") from None
    _check_count(
        ShardRef(shard.url, shard.fmt, None, shard.first_key, shard.last_key),
        0,
        keys[0] if keys and start == 0 else None,
        keys[-1] if keys and stop == n else None,
    )
    return RawRun(keys, video, meta)


def read_run(
    shard: ShardRef, start: int, stop: int | None, *, with_meta: bool = False, h5_locking: bool | None = None
) -> RawRun:
    """Samples ``[start, stop)`` of a shard (``stop=None``: to its end), checked against the manifest."""
    if shard.fmt == "hdf5":
        return _read_h5(shard, start, stop, with_meta, h5_locking)
    path = shard.local_path
    if path is None:
        return _read_stream_tar(shard, start, stop, with_meta)
    try:
        return _read_local_tar(shard, path, start, stop, with_meta)
    except ShardError:
        raise
    except FileNotFoundError:
        raise ShardError(shard.url, "missing") from None
    except (OSError, tarfile.TarError, ValueError) as exn:
        raise ShardError(shard.url, f"cannot read: {exn}") from None


def count_samples(shard: ShardRef, *, h5_locking: bool | None = None) -> int:
    """Samples in a shard, by reading it (for URL patterns without a manifest)."""
    if shard.fmt == "hdf5":
        try:
            return int(_h5_file(shard, h5_locking)["key"].shape[0])
        except Exception as exn:
            raise ShardError(shard.url, f"cannot read HDF5: {exn}") from None
    if shard.local_path is not None:
        try:
            return len(tar_index(shard.local_path).keys)
        except FileNotFoundError:
            raise ShardError(shard.url, "missing") from None
        except (OSError, tarfile.TarError, ValueError) as exn:
            raise ShardError(shard.url, f"cannot read: {exn}") from None
    try:
        with gopen(shard.url) as stream:
            expanded = tar_file_expander([{"url": shard.url, "stream": stream}], handler=reraise_exception)
            return sum(1 for _ in group_by_keys(expanded, handler=reraise_exception))
    except Exception as exn:
        raise ShardError(shard.url, f"cannot read: {exn}") from None


def parse_meta(texts: list[str] | None) -> list[dict] | None:
    """JSON meta texts to dicts (plain JSON: safe on untrusted data)."""
    return None if texts is None else [json.loads(text) for text in texts]


# ---------------------------------------------------------------- placing runs straight into a block's output
@dataclass(frozen=True)
class Placement:
    """Where each sample of a run goes: output ``rows`` (-1: not needed), first frame ``starts``, and the
    window (``length`` frames, ``stride`` apart). The output array is ``(rows, length, H, W, C)`` uint8."""

    rows: NDArray[np.int64]
    starts: NDArray[np.int64]
    length: int
    stride: int


_FDS: OrderedDict[str, int] = OrderedDict()
_FD_OWNER = os.getpid()


def _fd(path: str) -> int:
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


class _Gather:
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


def _check_window(shard: ShardRef, key: str, t: int, start: int, place: Placement) -> None:
    if start + (place.length - 1) * place.stride >= t:
        raise ShardError(shard.url, f"sample {key}: {t} frames, too few for the requested window")


def _check_windows(shard: ShardRef, key: str, t: int, starts: NDArray[np.int64], place: Placement) -> None:
    """All windows fit clips of ``t`` frames (``key`` names a sample of the run in the error)."""
    if len(starts):
        _check_window(shard, key, t, int(starts.max()), place)


def _fill_local_tar(
    shard: ShardRef, path: str, start: int, stop: int, out: NDArray, place: Placement
) -> list[str]:
    index = tar_index(path)
    n = len(index.keys)
    _check_count(shard, n, index.keys[0] if n else None, index.keys[-1] if n else None)
    if stop > n:
        raise ShardError(shard.url, f"holds {n} samples, asked for samples up to {stop}")
    needed = np.flatnonzero(place.rows >= 0)
    if not len(needed):
        return index.keys[start:stop]
    fd = _fd(path)
    frame_shape = out.shape[2:]
    first_offset = int(index.video[start + needed[0], 0])
    header = os.pread(fd, 256, first_offset)
    try:
        dtype, shape, fortran, header_len = parse_npy_header(header)
    except ValueError as exn:
        raise ShardError(shard.url, f"sample {index.keys[start + needed[0]]}: {exn}") from None
    if dtype != np.uint8 or fortran or len(shape) != 4 or tuple(shape[1:]) != frame_shape:
        raise ShardError(
            shard.url,
            f"sample {index.keys[start + needed[0]]}: video {dtype} {shape}, not uint8 (T, *{frame_shape})",
        )
    expected_size = header_len + int(np.prod(shape))
    # Every sample is read with its .npy header, which must equal the first one: same dtype, shape and layout.
    spans = index.video[start + needed]
    wrong = np.flatnonzero(spans[:, 1] != expected_size)
    if len(wrong):
        key = index.keys[start + int(needed[wrong[0]])]
        raise ShardError(
            shard.url, f"sample {key}: .npy of {spans[wrong[0], 1]} bytes, expected {expected_size}"
        )
    _check_windows(shard, index.keys[start + int(needed[0])], shape[0], place.starts[needed], place)
    headers = np.empty((len(needed), header_len), dtype=np.uint8)
    header_views = memoryview(headers.reshape(-1))
    gather = _Gather(shard, fd)
    bases = (spans[:, 0] + header_len).tolist()
    rows, firsts = place.rows[needed].tolist(), place.starts[needed].tolist()
    gather.add_windows(out, bases, rows, firsts, place.stride, headers=header_views)
    gather.flush()
    bad = np.flatnonzero((headers != np.frombuffer(header[:header_len], dtype=np.uint8)).any(axis=1))
    if len(bad):
        key = index.keys[start + int(needed[bad[0]])]
        raise ShardError(shard.url, f"sample {key}: .npy header differs from the shard's first (corrupt?)")
    return index.keys[start:stop]


_H5_CHUNKS: OrderedDict[tuple[str, int], NDArray[np.int64] | None] = OrderedDict()


def _h5_chunk_offsets(shard: ShardRef, handle) -> NDArray[np.int64] | None:
    """File offsets of each clip's chunk when chunks are one plain clip (no filters), else None (use h5py)."""
    cache_key = (shard.url, os.getpid())
    if cache_key in _H5_CHUNKS:
        return _H5_CHUNKS[cache_key]
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
    _H5_CHUNKS[cache_key] = offsets
    while len(_H5_CHUNKS) > _CACHE_SIZE:
        _H5_CHUNKS.popitem(last=False)
    return offsets


def _fill_h5(
    shard: ShardRef,
    start: int,
    stop: int,
    out: NDArray,
    place: Placement,
    with_meta: bool,
    locking: bool | None,
) -> tuple[list[str], list[str] | None]:
    try:
        handle = _h5_file(shard, locking)
        offsets = _h5_chunk_offsets(shard, handle)
    except Exception as exn:
        raise ShardError(shard.url, f"cannot read HDF5: {exn}") from None
    if offsets is None:
        run = _read_h5(shard, start, stop, with_meta, locking)
        copy_rows(shard, run, out, place)
        return run.keys, run.meta
    try:
        n, key_ds = handle["video"].shape[0], handle["key"]
        if shard.n_samples is not None and n != shard.n_samples:
            raise ShardError(shard.url, f"holds {n} samples but the manifest says {shard.n_samples}")
        if stop > n or key_ds.shape[0] != n:
            raise ShardError(
                shard.url, f"holds {n} videos and {key_ds.shape[0]} keys, asked for up to {stop}"
            )
        if handle["video"].shape[2:] != out.shape[2:]:
            raise ShardError(
                shard.url, f"video is {handle['video'].shape}, expected clips of {out.shape[2:]}"
            )
        keys = [str(k) for k in key_ds.asstr()[start:stop]]
        meta = None
        if with_meta:
            has_meta = "meta" in handle
            meta = [str(m) for m in handle["meta"].asstr()[start:stop]] if has_meta else ["{}"] * len(keys)
        t = handle["video"].shape[1]
    except ShardError:
        raise
    except Exception as exn:
        raise ShardError(shard.url, f"cannot read HDF5: {exn}") from None
    _check_count(
        ShardRef(shard.url, shard.fmt, None, shard.first_key, shard.last_key),
        0,
        keys[0] if keys and start == 0 else None,
        keys[-1] if keys and stop == n else None,
    )
    needed = np.flatnonzero(place.rows >= 0)
    if len(needed):
        _check_windows(shard, keys[int(needed[0])], t, place.starts[needed], place)
        gather = _Gather(shard, _fd(shard.local_path))  # type: ignore[arg-type]
        bases = offsets[start + needed].tolist()
        gather.add_windows(
            out, bases, place.rows[needed].tolist(), place.starts[needed].tolist(), place.stride
        )
        gather.flush()
    return keys, meta


def copy_rows(shard: ShardRef, run: RawRun, out: NDArray, place: Placement) -> None:
    """Copy the placed samples' windows of an already-read run into ``out`` (the generic path)."""
    for j, row in enumerate(place.rows):
        if row < 0:
            continue
        clip = run.video[j]
        if clip.shape[1:] != out.shape[2:]:
            raise ShardError(
                shard.url, f"sample {run.keys[j]}: video {clip.shape}, expected (T, *{out.shape[2:]})"
            )
        begin = int(place.starts[j])
        _check_window(shard, run.keys[j], len(clip), begin, place)
        out[row] = clip[begin : begin + (place.length - 1) * place.stride + 1 : place.stride]


def fill_run(
    shard: ShardRef,
    start: int,
    stop: int,
    out: NDArray[np.uint8],
    place: Placement,
    *,
    with_meta: bool = False,
    h5_locking: bool | None = None,
) -> tuple[list[str], list[str] | None]:
    """Read samples ``[start, stop)`` of a shard straight into their rows of ``out``; return keys and meta.

    Local tar and plain-chunked local HDF5 shards are read with one ``preadv`` per sample into the output (one
    copy from the page cache); anything else goes through :func:`read_run` and a copy.
    """
    if shard.fmt == "hdf5":
        return _fill_h5(shard, start, stop, out, place, with_meta, h5_locking)
    path = shard.local_path
    if path is None or with_meta:
        run = read_run(shard, start, stop, with_meta=with_meta, h5_locking=h5_locking)
        copy_rows(shard, run, out, place)
        return run.keys, run.meta
    try:
        return _fill_local_tar(shard, path, start, stop, out, place), None
    except ShardError:
        raise
    except FileNotFoundError:
        raise ShardError(shard.url, "missing") from None
    except (OSError, tarfile.TarError, ValueError) as exn:
        raise ShardError(shard.url, f"cannot read: {exn}") from None
