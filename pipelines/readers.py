"""Read a run of consecutive samples ``[start, stop)`` of one shard, for both store formats.

- ``fill_run`` (the fast path, sizes and shapes known): each needed sample's window goes straight into its
  row of the block's output through :class:`pipelines.gather.Gather` (local tars via their member index,
  plainly chunked local HDF5 via its chunk offsets): one copy from the page cache.
- ``read_run`` (everything else: streamed tars, filtered HDF5, meta): local tars with one sequential read of
  the run's byte span; streamed tars (``http(s)://``, ``pipe:``, ...) opened by :mod:`pipelines.remote` and
  read by webdataset's tar stages (``tar_file_expander`` -> ``group_by_keys``); HDF5 with one
  ``read_direct`` of the slice.

Nothing is unpickled: object dtypes are refused, ``np.load`` only ever runs with ``allow_pickle=False``.
Every failure is a :class:`ShardError` naming the shard, checked against the manifest's record.
"""

from __future__ import annotations

import json
import math
import os
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipelines.errors import ShardError
from pipelines.gather import Gather, fd_for
from pipelines.hdf5_files import h5_file, h5_layout
from pipelines.npy import decode_npy, parse_npy_header
from pipelines.remote import open_location
from pipelines.sources import ShardRef
from pipelines.tar_index import META_FIELD, VIDEO_FIELD, TarIndex, tar_index


@dataclass
class RawRun:
    """Samples read from one shard in shard order: keys, uint8 videos ``(n, T, H, W, C)``, JSON meta texts."""

    keys: list[str]
    video: NDArray[np.uint8]
    meta: list[str] | None


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


def _decode(shard: ShardRef, key: str, data) -> NDArray:
    """A sample's .npy member as an array; a malformed one is a ShardError naming the sample."""
    try:
        return decode_npy(data)
    except ValueError as exn:
        raise ShardError(shard.url, f"sample {key}: {exn}") from None


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
    arrays = [
        _decode(shard, key, view[off - lo : off - lo + size])
        for key, (off, size) in zip(keys, spans, strict=True)
    ]
    meta = None
    if with_meta:
        meta = [
            bytes(view[off - lo : off - lo + size]).decode("utf-8") if off >= 0 else "{}"
            for off, size in index.meta[start:stop]
        ]
    return RawRun(list(keys), _stack(shard, keys, arrays), meta)


def _reason(exn: BaseException) -> str:
    """A stream failure's cause in a few words (webdataset appends the stream and URL to the args)."""
    if isinstance(exn, FileNotFoundError):
        return "missing"
    if isinstance(exn, OSError) and exn.strerror:
        return exn.strerror
    return (str(exn.args[0]) if exn.args else type(exn).__name__).split(" @ <", 1)[0]


def _local_reason(exn: Exception) -> str:
    return "missing" if isinstance(exn, FileNotFoundError) else f"cannot read: {exn}"


def _stream_reason(exn: Exception) -> str:
    return f"cannot read: {_reason(exn)}"


def _h5_reason(exn: Exception) -> str:
    return f"cannot read HDF5: {exn}"  # h5py raises OSError, KeyError, RuntimeError... for broken files


# What a broken local tar raises (an OS error, a bad header or .npy); anything else is a bug, not the shard's.
_LOCAL_TAR_ERRORS = (OSError, tarfile.TarError, ValueError)


class _shard_errors:  # noqa: N801  (used as a context manager, like contextlib's)
    """A ``caught`` failure inside the block as one :class:`ShardError` naming the shard, ``reason(exn)``
    saying why (a ShardError raised inside passes unchanged). A class, not a generator: a run of a shard is
    short, and ``@contextmanager`` cost about 1 us of it (this, about 0.3 us)."""

    __slots__ = ("shard", "reason", "caught")

    def __init__(
        self,
        shard: ShardRef,
        reason: Callable[[Exception], str],
        caught: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        self.shard, self.reason, self.caught = shard, reason, caught

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exn, tb) -> bool:
        if kind is None or issubclass(kind, ShardError) or not issubclass(kind, self.caught):
            return False
        raise ShardError(self.shard.url, self.reason(exn)) from None


class _EndOfStream:
    """A tar stream that fails when read on past its end: tarfile's stream mode skips a member it does not
    handle by reading and dropping its declared size, block by block, even past the end (a forged 2**40-byte
    member kept it busy for hours)."""

    def __init__(self, stream, reads_past_end: int = 8) -> None:
        self.stream, self.left = stream, reads_past_end

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if not data and size:
            self.left -= 1
            if self.left < 0:
                raise OSError("the tar stream ended inside a member (a member larger than the file)")
        return data

    def close(self) -> None:
        self.stream.close()


def _open_tar_stream(shard: ShardRef) -> _EndOfStream:
    return _EndOfStream(open_location(shard.url, shard.nbytes))


def _read_stream_tar(shard: ShardRef, start: int, stop: int | None, with_meta: bool) -> RawRun:
    with _shard_errors(shard, _stream_reason):  # HTTP status, refused connection, a missing file
        stream = _open_tar_stream(shard)
    keys: list[str] = []
    arrays: list[NDArray] = []
    metas: list[str] = []
    count = 0
    complete = failed = False
    try:
        with _shard_errors(shard, _stream_reason):  # tar / transport errors from the stream
            expanded = tar_file_expander([{"url": shard.url, "stream": stream}], handler=reraise_exception)
            for sample in group_by_keys(expanded, handler=reraise_exception):
                if stop is not None and count >= stop:
                    complete = True
                    break
                if count >= start:
                    key = sample["__key__"]
                    if VIDEO_FIELD not in sample:
                        raise ShardError(shard.url, f"sample {key} has no {VIDEO_FIELD}")
                    arrays.append(_decode(shard, key, sample[VIDEO_FIELD]))
                    keys.append(key)
                    if with_meta:
                        metas.append(sample.get(META_FIELD, b"{}").decode("utf-8"))
                count += 1
            else:
                complete = True
                _check_count(shard, count, None, keys[-1] if keys and stop is None else None)
    except ShardError:
        failed = True
        raise
    finally:
        try:
            stream.close()
        except Exception as exn:
            # Stopping a pipe early kills its writer (SIGPIPE); only a complete run is accepted then. A
            # failed read keeps its own error (the command's exit status is a consequence).
            if not (complete or failed):
                raise ShardError(shard.url, _stream_reason(exn)) from None
    if stop is not None and count < stop:
        raise ShardError(shard.url, f"holds {count} samples, asked for samples up to {stop} (truncated?)")
    if start == 0 and keys:
        _check_count(ShardRef(shard.url, shard.fmt, None, shard.first_key), 0, keys[0], None)
    return RawRun(keys, _stack(shard, keys, arrays), metas if with_meta else None)


def _read_h5(shard: ShardRef, start: int, stop: int | None, with_meta: bool, locking: bool | None) -> RawRun:
    with _shard_errors(shard, _h5_reason):
        handle = h5_file(shard, locking)
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
    with _shard_errors(shard, _local_reason, _LOCAL_TAR_ERRORS):
        return _read_local_tar(shard, path, start, stop, with_meta)


def count_samples(shard: ShardRef, *, h5_locking: bool | None = None) -> int:
    """Samples in a shard, by reading it (for URL patterns without a manifest)."""
    if shard.fmt == "hdf5":
        with _shard_errors(shard, _h5_reason):
            return int(h5_file(shard, h5_locking)["key"].shape[0])
    if shard.local_path is not None:
        with _shard_errors(shard, _local_reason, _LOCAL_TAR_ERRORS):
            return len(tar_index(shard.local_path).keys)
    with _shard_errors(shard, _stream_reason):
        stream = _open_tar_stream(shard)
        try:
            expanded = tar_file_expander([{"url": shard.url, "stream": stream}], handler=reraise_exception)
            return sum(1 for _ in group_by_keys(expanded, handler=reraise_exception))
        finally:
            stream.close()


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


def _check_window(shard: ShardRef, key: str, t: int, start: int, place: Placement) -> None:
    if start + (place.length - 1) * place.stride >= t:
        raise ShardError(shard.url, f"sample {key}: {t} frames, too few for the requested window")


def _check_windows(shard: ShardRef, key: str, t: int, starts: NDArray[np.int64], place: Placement) -> None:
    """All windows fit clips of ``t`` frames (``key`` names a sample of the run in the error)."""
    if len(starts):
        _check_window(shard, key, t, int(starts.max()), place)


_HEADERS = threading.local()


def _header_scratch(n: int, header_len: int) -> tuple[NDArray[np.uint8], list[memoryview]]:
    """Where a run's ``n`` .npy headers are read to be checked, and a view per header: made once per thread
    (and when it must grow), as cutting the views per block was a noticeable part of a worker's time."""
    array, views = getattr(_HEADERS, "scratch", None) or (np.empty((0, 0), dtype=np.uint8), [])
    if array.shape[1] != header_len or array.shape[0] < n:
        array = np.empty((max(n, 2 * array.shape[0]), header_len), dtype=np.uint8)
        flat = memoryview(array.reshape(-1))
        views = [flat[k : k + header_len] for k in range(0, flat.nbytes, header_len)]
        _HEADERS.scratch = array, views
    return array[:n], views[:n]


@dataclass(frozen=True)
class _NpyRef:
    """A shard's .npy video header, validated for clips of ``frame_shape``: every clip read must carry
    exactly these bytes. Learned from a run that read and checked it the full way (:func:`_fill_tar_checked`),
    so later runs skip the header's own read and parse."""

    header: NDArray[np.uint8]  # (header_len,)
    frames: int  # T of every clip
    size: int  # bytes of each video member: header + clip
    sizes_ok: bool  # every video member of the shard has ``size`` bytes


def _fill_local_tar(
    shard: ShardRef, path: str, start: int, stop: int, out: NDArray, place: Placement
) -> list[str]:
    index = tar_index(path)
    keys = index.keys
    n = len(keys)
    _check_count(shard, n, keys[0] if n else None, keys[-1] if n else None)
    if stop > n:
        raise ShardError(shard.url, f"holds {n} samples, asked for samples up to {stop}")
    ref = index.notes.get(("npy", out.shape[2:]))
    if ref is None or not len(place.rows) or not _fill_tar_known(shard, path, index, ref, start, out, place):
        _fill_tar_checked(shard, path, index, start, out, place)
    return keys[start:stop]


def _fill_tar_known(
    shard: ShardRef, path: str, index: TarIndex, ref: _NpyRef, start: int, out: NDArray, place: Placement
) -> bool:
    """The fast path of a run whose shard's header is known: read every needed clip with its header and
    check each header equals ``ref``'s. False (nothing concluded) where anything differs: the caller then
    reads the run the full way, which finds the same result or error as it always did."""
    rows, firsts = place.rows, place.starts
    if rows.min() >= 0:  # every sample of the run is kept (the usual case)
        spans = index.video[start : start + len(rows)]
    else:
        needed = np.flatnonzero(rows >= 0)
        if not len(needed):
            return True
        spans, rows, firsts = index.video[start + needed], rows[needed], firsts[needed]
    if not ref.sizes_ok and (spans[:, 1] != ref.size).any():
        return False
    if int(firsts.max()) + (place.length - 1) * place.stride >= ref.frames:
        return False
    header_len = len(ref.header)
    headers, header_views = _header_scratch(len(rows), header_len)
    gather = Gather(shard, fd_for(path))
    gather.add_windows(out, spans[:, 0] + header_len, rows, firsts, place.stride, headers=header_views)
    try:
        gather.flush()
    except ShardError:
        return False
    return not (headers != ref.header).any()


def _fill_tar_checked(
    shard: ShardRef, path: str, index: TarIndex, start: int, out: NDArray, place: Placement
) -> None:
    """A run read the full way: the first needed clip's header read, parsed and checked, every needed clip's
    size checked, then the clips read with their headers, each of which must equal the first. Notes the
    checked header on the index for :func:`_fill_tar_known`."""
    needed = np.flatnonzero(place.rows >= 0)
    if not len(needed):
        return
    fd = fd_for(path)
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
    expected_size = header_len + math.prod(shape)  # Python ints: a forged shape cannot wrap around
    # Every sample is read with its .npy header, which must equal the first one: same dtype, shape and layout.
    spans = index.video[start + needed]
    wrong = np.flatnonzero(spans[:, 1] != expected_size)
    if len(wrong):
        key = index.keys[start + int(needed[wrong[0]])]
        raise ShardError(
            shard.url, f"sample {key}: .npy of {spans[wrong[0], 1]} bytes, expected {expected_size}"
        )
    _check_windows(shard, index.keys[start + int(needed[0])], shape[0], place.starts[needed], place)
    headers, header_views = _header_scratch(len(needed), header_len)
    gather = Gather(shard, fd)
    bases = spans[:, 0] + header_len
    gather.add_windows(
        out, bases, place.rows[needed], place.starts[needed], place.stride, headers=header_views
    )
    gather.flush()
    first = np.frombuffer(header[:header_len], dtype=np.uint8)
    bad = np.flatnonzero((headers != first).any(axis=1))
    if len(bad):
        key = index.keys[start + int(needed[bad[0]])]
        raise ShardError(shard.url, f"sample {key}: .npy header differs from the shard's first (corrupt?)")
    sizes_ok = bool((index.video[:, 1] == expected_size).all())
    index.notes[("npy", frame_shape)] = _NpyRef(first.copy(), shape[0], expected_size, sizes_ok)


def _fill_h5(
    shard: ShardRef,
    start: int,
    stop: int,
    out: NDArray,
    place: Placement,
    with_meta: bool,
    locking: bool | None,
) -> tuple[list[str], list[str] | None]:
    with _shard_errors(shard, _h5_reason):
        layout = h5_layout(shard, locking)
    offsets = layout.offsets
    if offsets is None:
        run = _read_h5(shard, start, stop, with_meta, locking)
        copy_rows(shard, run, out, place)
        return run.keys, run.meta
    n, t = layout.video_shape[0], layout.video_shape[1]
    if shard.n_samples is not None and n != shard.n_samples:
        raise ShardError(shard.url, f"holds {n} samples but the manifest says {shard.n_samples}")
    if stop > n or len(layout.keys) != n:
        raise ShardError(shard.url, f"holds {n} videos and {len(layout.keys)} keys, asked for up to {stop}")
    if layout.video_shape[2:] != out.shape[2:]:
        raise ShardError(shard.url, f"video is {layout.video_shape}, expected clips of {out.shape[2:]}")
    keys = layout.keys[start:stop]
    meta = None
    if with_meta:
        with _shard_errors(shard, _h5_reason):
            handle = h5_file(shard, locking)
            has_meta = "meta" in handle
            meta = [str(m) for m in handle["meta"].asstr()[start:stop]] if has_meta else ["{}"] * len(keys)
    if keys and (start == 0 or stop == n):
        _check_count(
            ShardRef(shard.url, shard.fmt, None, shard.first_key, shard.last_key),
            0,
            keys[0] if start == 0 else None,
            keys[-1] if stop == n else None,
        )
    rows, firsts = place.rows, place.starts
    if len(rows) and rows.min() >= 0:  # every sample of the run is kept (the usual case)
        first, bases = 0, offsets[start : start + len(rows)]
    else:
        needed = np.flatnonzero(rows >= 0)
        if not len(needed):
            return keys, meta
        first, bases = int(needed[0]), offsets[start + needed]
        rows, firsts = rows[needed], firsts[needed]
    _check_windows(shard, keys[first], t, firsts, place)
    gather = Gather(shard, fd_for(shard.local_path))  # type: ignore[arg-type]
    gather.add_windows(out, bases, rows, firsts, place.stride)
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
    with _shard_errors(shard, _local_reason, _LOCAL_TAR_ERRORS):
        return _fill_local_tar(shard, path, start, stop, out, place), None
