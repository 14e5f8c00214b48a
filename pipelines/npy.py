"""Decode .npy bytes without pickle: numpy parses the header (cached), the data is viewed, not copied."""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.typing import NDArray

_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


def _numpy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's parse of a whole header; any failure is a ValueError (numpy lets tokenize's TokenError and
    others through on some corrupt headers)."""
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        return np.lib.format.read_array_header_2_0(stream)
    except ValueError:
        raise
    except Exception as exn:
        raise ValueError(f"cannot parse the .npy header: {type(exn).__name__}: {exn}") from None


def parse_npy_header(buf: bytes | memoryview) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """``(dtype, shape, fortran_order, data_offset)`` of .npy bytes (at least the header), parsed by numpy.

    Object dtypes are refused (they would need pickle). Results are cached by the header's bytes: every sample
    of a store shares one header, so the parse runs once per process.
    """
    view = memoryview(buf)
    if bytes(view[:6]) != b"\x93NUMPY":
        raise ValueError("not a .npy file")
    if len(view) < 12:
        raise ValueError(".npy header is cut short")
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
        shape, fortran, dtype = _numpy_header(header)
        if dtype.hasobject:
            raise ValueError(".npy holds Python objects (would need pickle); refused")
        if any(d < 0 for d in shape):
            raise ValueError(f".npy shape {tuple(shape)} has a negative dimension")
        if dtype.itemsize == 0:
            raise ValueError(f".npy dtype {dtype} has items of 0 bytes")
        parsed = (dtype, tuple(shape), fortran, end)
        if len(_NPY_HEADERS) < 256:
            _NPY_HEADERS[header] = parsed
    return parsed


def decode_npy(buf: bytes | memoryview) -> NDArray:
    """A numpy array viewing ``buf`` (.npy bytes), without a copy and without pickle."""
    view = memoryview(buf)
    dtype, shape, fortran, offset = parse_npy_header(view)
    count = math.prod(shape)  # Python ints: a huge shape must not wrap around to a small count
    if len(view) - offset < count * dtype.itemsize:
        raise ValueError(f".npy data is cut short ({len(view) - offset} bytes for {shape} {dtype})")
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")
