"""Host-to-device feed: batches stay uint8 until the device, go through reused pinned buffers with
``non_blocking`` copies on a side CUDA stream, ``depth`` batches in flight; scaling to [-1, 1] runs on the
device.

On a CPU device the same code path runs without pinning or streams.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from datagen.store.format import ARRAY_FIELDS


def to_model_layout(video: torch.Tensor) -> torch.Tensor:
    """Channel-last ``(B, T, H, W, C)`` or ``(B, H, W, C)`` to channel-first (a view)."""
    return video.movedim(-1, 1)


def scale_video(video: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 channel-last batch to a contiguous model-layout tensor: uint8 kept, floats scaled to [-1, 1]."""
    return scale_model_layout(to_model_layout(video), dtype)


def scale_model_layout(moved: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`scale_video` of a batch already in model layout (the loader moves each block once)."""
    if dtype == torch.uint8:
        return moved.contiguous()
    if moved.device.type == "cpu" and dtype in _NUMPY_FLOATS:
        # numpy: single-threaded and reuses freed memory; torch's CPU path measured 10x slower on a busy host
        out = np.empty(moved.shape, dtype=_NUMPY_FLOATS[dtype])
        np.divide(moved.numpy(), out.dtype.type(127.5), out=out, casting="unsafe")
        out -= 1
        return torch.from_numpy(out)
    out = moved.to(dtype=dtype, memory_format=torch.contiguous_format)
    return out.div_(127.5).sub_(1.0)


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


FIELD_NAMES = tuple(ARRAY_FIELDS)


def field_to_device(
    tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, stream: Any
) -> torch.Tensor:
    """An extra field on the device: mask ids stay uint8; flow (pixels, float16 stored) becomes ``dtype``
    when that is a float type (values are not rescaled)."""
    if stream is not None:
        tensor.record_stream(stream)
    tensor = tensor.to(device)
    if tensor.is_floating_point() and dtype.is_floating_point:
        tensor = tensor.to(dtype)
    return tensor.contiguous()


@dataclass
class _Slot:
    buffer: torch.Tensor | None = None
    event: Any = None  # torch.cuda.Event recorded after the copy that reads this buffer


@dataclass
class PinnedRing:
    """Reusable pinned host buffers; a slot is handed out again only once its last device copy finished."""

    n_slots: int
    slots: list[_Slot] = field(default_factory=list)
    next_slot: int = 0

    def take(self, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        if not self.slots:
            self.slots = [_Slot() for _ in range(self.n_slots)]
        index = self.next_slot
        self.next_slot = (index + 1) % self.n_slots
        slot = self.slots[index]
        if slot.event is not None:
            slot.event.synchronize()
            slot.event = None
        numel = 1
        for size in shape:
            numel *= size
        if slot.buffer is None or slot.buffer.numel() < numel:
            slot.buffer = torch.empty(numel, dtype=torch.uint8).pin_memory()
        return index, slot.buffer[:numel].view(shape)


class HostBatcher:
    """Assembles uint8 batches from block pieces into fresh tensors (CPU) or pinned ring buffers (CUDA)."""

    def __init__(self, pinned: bool, depth: int) -> None:
        self.ring = PinnedRing(depth + 2) if pinned else None

    def assemble(self, pieces: list[torch.Tensor]) -> tuple[torch.Tensor, int | None]:
        """One batch from block slices (in model layout)."""
        if self.ring is None:
            # A batch inside one block is a view of it (a ring slot is not written again while viewed);
            # else one copy.
            if len(pieces) == 1:
                return pieces[0], None
            return torch.from_numpy(np.concatenate([piece.numpy() for piece in pieces])), None
        n = sum(len(p) for p in pieces)  # pieces view the workers' ring: one copy into pinned memory
        slot, out = self.ring.take((n, *pieces[0].shape[1:]))
        torch.cat(pieces, out=out)
        return out, slot


def feed_device(
    batches: Iterator[tuple[dict[str, Any], int | None]],
    *,
    device: torch.device,
    dtype: torch.dtype,
    depth: int,
    ring: PinnedRing | None,
) -> Iterator[dict[str, Any]]:
    """Yield batches on ``device`` with ``depth`` later batches already copying (``non_blocking`` on CUDA)."""
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    in_flight: deque[tuple[dict[str, Any], Any]] = deque()

    def launch(batch: dict[str, Any], slot: int | None) -> tuple[dict[str, Any], Any]:
        if not cuda:
            return batch, None
        with torch.cuda.stream(stream):
            batch["video"] = batch["video"].to(device, non_blocking=True)
            for name in FIELD_NAMES:
                if name in batch:
                    batch[name] = batch[name].to(device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        if ring is not None and slot is not None:
            ring.slots[slot].event = event
        return batch, event

    def finish(batch: dict[str, Any], event: Any) -> dict[str, Any]:
        video = batch["video"]
        if cuda:
            current = torch.cuda.current_stream(device)
            current.wait_event(event)
            video.record_stream(current)
        if video.device != device:
            video = video.to(device)
        batch["video"] = scale_model_layout(video, dtype)
        for name in FIELD_NAMES:
            if name in batch:
                batch[name] = field_to_device(batch[name], device, dtype, current if cuda else None)
        return batch

    for batch, slot in batches:
        in_flight.append(launch(batch, slot))
        if len(in_flight) > depth:
            yield finish(*in_flight.popleft())
    while in_flight:
        yield finish(*in_flight.popleft())
