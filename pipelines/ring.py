"""Shared-memory block ring between DataLoader workers and the loader's main process."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipelines.dataset import alloc_block
from pipelines.errors import PipelineError


class BlockRing:
    """Shared-memory slots (per worker) that workers write blocks into, made once and reused.

    A fresh shared-memory segment per block costs a page fault per 4 KiB on both sides (measured 5x the
    read itself); slots are faulted in once. Worker ``w`` writes its ``m``-th block into slot ``m % slots``:
    the DataLoader sends worker ``w`` its task ``m`` only once the main process has taken its block
    ``m - prefetch_factor``, and the main process copies a block out before asking for more, so
    ``prefetch_factor + 2`` slots are never overwritten while read. Each slot carries a stamp (0 while being
    written, then the block's number), checked before and after the copy: a broken assumption raises instead
    of corrupting data.
    """

    def __init__(self, workers: int, slots: int, capacity: int) -> None:
        self.slots, self.capacity = slots, capacity
        self.data = torch.empty((workers, slots, capacity), dtype=torch.uint8).share_memory_()
        self.stamp = torch.zeros((workers, slots), dtype=torch.int64).share_memory_()

    def writer(self, worker: int, number: int):
        """An allocator for read_block that hands out slot ``number % slots`` of ``worker`` (when it fits)."""
        slot = number % self.slots
        self.stamp[worker, slot] = 0

        def alloc(shape: tuple[int, ...]):
            nbytes = int(np.prod(shape))
            if nbytes > self.capacity:
                return alloc_block(shape)
            tensor = self.data[worker, slot, :nbytes].view(shape)
            return tensor, tensor.numpy()

        return alloc

    def publish(self, item: dict[str, Any], worker: int, number: int) -> dict[str, Any]:
        """Replace a block that lives in the ring by a reference to its slot (stamped as complete)."""
        video, slot = item["video"], number % self.slots
        region = self.data[worker, slot]
        if video is not None and video.is_contiguous() and video.data_ptr() == region.data_ptr():
            self.stamp[worker, slot] = number + 1
            item["video"], item["ring"] = None, (worker, slot, number + 1, tuple(video.shape))
        return item

    def take(self, ref: tuple[int, int, int, tuple[int, ...]]) -> torch.Tensor:
        """A private copy of a published block."""
        worker, slot, stamp, shape = ref
        nbytes = int(np.prod(shape))
        if int(self.stamp[worker, slot]) == stamp:
            copy = self.data[worker, slot, :nbytes].numpy().copy()
            if int(self.stamp[worker, slot]) == stamp:
                return torch.from_numpy(copy.reshape(shape))
        raise PipelineError(f"worker {worker} overwrote block slot {slot} while it was read (loader bug)")
