"""Extra per-sample arrays (``mask``, ``flow``, ``sensed``; :data:`datagen.store.format.ARRAY_FIELDS`).

The video goes through the fast gather path into the block's (ring) buffer; the extra fields are read here
on a plain path, one run of a shard at a time, and cut to the same windows: a mask window is the video's
frames, a flow window the ``length - 1`` transitions between them (stride 1 only: flow from frame t to
t + stride is not stored). Field names come from the manifest's checked schema (a fixed set), never from a
shard: a member or dataset of another name is never looked up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from datagen.store.format import ARRAY_FIELDS, field_shape, schema_fields
from pipelines.errors import PipelineError, ShardError
from pipelines.gather import fd_for
from pipelines.hdf5_files import h5_file
from pipelines.npy import decode_npy
from pipelines.sources import ShardRef
from pipelines.tar_index import tar_index


def check_fields(
    fields: Sequence[str], manifest: dict | None, mode: str, stride: int, frames: int | None = None
) -> tuple[tuple[str, ...], dict[str, tuple[np.dtype, tuple[int, ...]]]]:
    """The requested extra array fields and their (dtype, per-sample shape), checked against the store."""
    fields = tuple(fields)
    if "video" not in fields:
        raise PipelineError(f"fields must include 'video', got {fields!r}")
    wanted = tuple(f for f in fields if f != "video")
    if not wanted:
        return (), {}
    unknown = [f for f in wanted if f not in ARRAY_FIELDS]
    if unknown:
        raise PipelineError(
            f"unknown array field(s) {', '.join(unknown)}; known: video, {', '.join(ARRAY_FIELDS)}"
        )
    if manifest is None:
        raise PipelineError("extra fields need a store with a manifest (its sample schema lists them)")
    stored = schema_fields(manifest["sample"])
    missing = [f for f in wanted if f not in stored]
    if missing:
        raise PipelineError(f"the store has no field(s) {', '.join(missing)} (it has {', '.join(stored)})")
    if "flow" in wanted and (mode != "clip" or stride != 1):
        raise PipelineError("flow is read in clip mode with stride 1 only (flow over a stride is not stored)")
    video_shape = manifest["sample"]["video"]["shape"]
    if "sensed" in wanted and (mode != "clip" or stride != 1 or frames not in (None, video_shape[0])):
        raise PipelineError("sensed images are of whole clips: read them in clip mode, all frames, stride 1")
    specs = {f: (np.dtype(ARRAY_FIELDS[f][0]), _stored_shape(f, manifest["sample"])) for f in wanted}
    return wanted, specs


def _stored_shape(name: str, sample: dict) -> tuple[int, ...]:
    """One sample's shape of field `name`: the (checked) manifest's for `sensed`, else what the clip fixes."""
    if name == "sensed":
        return tuple(sample["sensed"]["shape"])
    return tuple(field_shape(name, sample["video"]["shape"]))


def read_field_run(
    shard: ShardRef, name: str, start: int, stop: int, spec: tuple[np.dtype, tuple[int, ...]], h5_locking
) -> NDArray:
    """Field ``name`` of samples ``[start, stop)`` of a local shard, ``(n, *shape)``; ShardError if bad."""
    dtype, shape = spec
    try:
        if shard.fmt == "hdf5":
            handle = h5_file(shard, h5_locking)
            if name not in handle:
                raise ShardError(shard.url, f"has no {name} dataset")
            data = handle[name]
            if data.dtype != dtype or tuple(data.shape[1:]) != shape:
                raise ShardError(
                    shard.url, f"{name} is {data.dtype} {data.shape[1:]}, expected {dtype} {shape}"
                )
            return data[start:stop]
        path = shard.local_path
        if path is None:
            raise ShardError(shard.url, f"{name}: extra fields are read from local shards only")
        spans = tar_index(path).fields.get(name)
        if spans is None or (spans[start:stop, 0] < 0).any():
            raise ShardError(shard.url, f"a sample has no {name} member")
        out = np.empty((stop - start, *shape), dtype=dtype)
        fd = fd_for(path)
        for i, (offset, size) in enumerate(spans[start:stop].tolist()):
            array = decode_npy(os.pread(fd, size, offset))
            if array.dtype != dtype or array.shape != shape:
                raise ShardError(shard.url, f"{name} of sample {start + i} is {array.dtype} {array.shape}")
            out[i] = array
        return out
    except ShardError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exn:
        raise ShardError(shard.url, f"cannot read {name}: {exn}") from None


def window(name: str, run: NDArray, starts: NDArray[np.int64], length: int, stride: int) -> NDArray:
    """A window per sample: mask frames like the video's, flow the ``length - 1`` steps between them; a
    sensed image is of the whole clip (the window is the clip)."""
    if name == "sensed":
        return run
    if name == "flow":
        length -= 1
    picks = starts[:, None] + stride * np.arange(length)
    return run[np.arange(len(run))[:, None], picks]


class FieldBlock:
    """A block's extra fields, filled run by run next to the video's fast path: ``(rows, window, ...)``."""

    def __init__(self, specs: dict[str, tuple[np.dtype, tuple[int, ...]]], rows: int, length: int) -> None:
        self.specs = specs
        self.out = {
            name: np.zeros((rows, *_window_shape(name, shape, length)), dtype=dtype)
            for name, (dtype, shape) in specs.items()
        }

    def add(self, shard: ShardRef, start: int, stop: int, place, h5_locking) -> None:
        """Read the fields of samples ``[start, stop)`` and put the needed ones in their rows (``place``:
        the video's :class:`pipelines.readers.Placement`)."""
        picked = np.flatnonzero(place.rows >= 0)
        for name, spec in self.specs.items():
            run = read_field_run(shard, name, start, stop, spec, h5_locking)
            self.out[name][place.rows[picked]] = window(
                name, run[picked], place.starts[picked], place.length, place.stride
            )

    def tensors(self, kept: NDArray[np.int64] | None, frame: bool) -> dict[str, torch.Tensor]:
        """Per field ``(n, window, ...)`` (frame mode: ``(n, ...)``) as tensors; ``kept``: rows to keep."""
        result = {}
        for name, array in self.out.items():
            if kept is not None:
                array = array[kept]
            result[name] = torch.from_numpy(array[:, 0] if frame else array)
        return result


def _window_shape(name: str, shape: tuple[int, ...], length: int) -> tuple[int, ...]:
    if name == "sensed":
        return shape
    return (length - (name == "flow"), *shape[1:])


def to_model_layout(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A batch's field as models take it: flow channel-first ``(B, 2, T - 1, H, W)``; mask, sensed (uint16
    ``(B, V, H', W)``) as stored."""
    return tensor.movedim(-1, 1) if name == "flow" else tensor
