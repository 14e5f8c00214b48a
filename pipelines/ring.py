"""Shared-memory block ring between DataLoader workers and the loader's main process.

The main process hands out views of the slots (no copy); a slot is written again only once every tensor and
array that views it has been freed.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import numpy as np
import torch

from pipelines.dataset import alloc_block
from pipelines.errors import PipelineError


class BlockRing:
    """Shared-memory slots (per worker) that workers write blocks into, made once and reused.

    A fresh shared-memory segment per block costs a page fault per 4 KiB on both sides (measured 5x the
    read itself), and copying a block out of a slot was the main process's largest cost: slots are faulted
    in once and the main process hands out views of them.

    Who may write where, in shared memory (each flag has one writer):

    - ``held[w, s]`` (main): 1 from the moment the main process takes the block in slot ``s`` until the last
      tensor/array viewing it is freed (a ``weakref.finalize`` on the array the views hang from).
    - ``received[w]`` (main): 1 + the number of worker ``w``'s last block taken this epoch (set after
      ``held``). The worker's blocks numbered at or above it may still be queued, so their slots are busy.
    - ``stamp[w, s]`` (worker): 0 while being written, then a number unique to that write.
    - ``fallbacks[w]`` (worker): blocks worker ``w`` wrote to fresh shared memory (no free slot, or too big).

    A worker writes into a slot that is neither held nor behind a queued block, and falls back to a fresh
    shared-memory block when there is none (correct, only slower). The main process checks the stamps of
    the slots it holds on every take and on every release: a broken assumption raises instead of handing out
    overwritten data.
    """

    def __init__(self, workers: int, slots: int, capacity: int) -> None:
        self.slots, self.capacity = slots, capacity
        # made in shared memory directly (share_memory_ would fill private pages, then copy them over)
        storage = torch.UntypedStorage._new_shared(max(1, workers * slots * capacity))
        self.data = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (workers, slots, capacity))
        self.stamp = torch.zeros((workers, slots), dtype=torch.int64).share_memory_()
        self.held = torch.zeros((workers, slots), dtype=torch.int64).share_memory_()
        self.received = torch.zeros(workers, dtype=torch.int64).share_memory_()
        self.fallbacks = torch.zeros(workers, dtype=torch.int64).share_memory_()
        self._local()

    def _local(self) -> None:
        """Per-process state (not shared, not pickled); numpy views of the shared tensors (fast scalars)."""
        self._data_np, self._stamp_np = self.data.numpy(), self.stamp.numpy()
        self._held_np, self._received_np = self.held.numpy(), self.received.numpy()
        self._fallbacks_np = self.fallbacks.numpy()
        self._queued: dict[int, int] = {}  # worker side: block number -> slot, not yet known taken
        self._serial = 0
        self._in_use: dict[tuple[int, int], int] = {}  # main side: (worker, slot) -> stamp, while held
        self._broken: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"slots": self.slots, "capacity": self.capacity, "data": self.data, "stamp": self.stamp,
                "held": self.held, "received": self.received, "fallbacks": self.fallbacks}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local()

    # ------------------------------------------------------------ worker side
    def start_epoch(self) -> None:
        """Forget queued blocks of an earlier epoch (the DataLoader discarded those it did not hand back)."""
        self._queued.clear()

    def _free_slot(self, worker: int) -> int | None:
        received = int(self._received_np[worker])
        for number in [n for n in self._queued if n < received]:
            del self._queued[number]
        busy = set(self._queued.values())
        held = self._held_np[worker]
        for slot in range(self.slots):
            if slot not in busy and not held[slot]:
                return slot
        return None

    def writer(self, worker: int, number: int):
        """An allocator for read_block: a free slot of ``worker`` (when one is free and the block fits)."""

        def alloc(shape: tuple[int, ...]):
            nbytes = int(np.prod(shape))
            slot = self._free_slot(worker) if nbytes <= self.capacity else None
            if slot is None:
                self._fallbacks_np[worker] += 1
                return alloc_block(shape)
            self._stamp_np[worker, slot] = 0
            self._queued[number] = slot
            array = self._data_np[worker, slot, :nbytes].reshape(shape)
            return torch.from_numpy(array), array

        return alloc

    def publish(self, item: dict[str, Any], worker: int, number: int) -> dict[str, Any]:
        """Replace a block that lives in the ring by a reference to its slot (stamped as complete)."""
        slot = self._queued.get(number)
        if slot is None:
            return item
        video = item["video"]
        region = self.data.data_ptr() + (worker * self.slots + slot) * self.capacity
        if video is not None and video.is_contiguous() and video.data_ptr() == region:
            self._serial += 1
            stamp = (os.getpid() << 32) | self._serial
            self._stamp_np[worker, slot] = stamp
            item["video"], item["ring"] = None, (worker, slot, stamp, tuple(video.shape), number)
        else:
            del self._queued[number]  # the block was copied elsewhere (skipped samples): the slot is free
        return item

    # ------------------------------------------------------------ main side
    def start_reading(self) -> None:
        """Before a new epoch's DataLoader iterator: no block of it has been taken yet."""
        self._received_np[:] = 0

    def check(self) -> None:
        """Raise if a slot changed while the main process (or its caller) still viewed it."""
        if self._broken is None:
            for (worker, slot), stamp in list(self._in_use.items()):  # a release may run meanwhile
                if self._stamp_np[worker, slot] != stamp:
                    self._broken = f"worker {worker} overwrote block slot {slot} while it was in use"
                    break
        if self._broken is not None:
            raise PipelineError(f"{self._broken} (loader bug)")

    def take(self, ref: tuple[int, int, int, tuple[int, ...], int]) -> torch.Tensor:
        """A view of a published block; the slot stays held until the view and all views of it are freed."""
        worker, slot, stamp, shape, number = ref
        self.check()
        if self._stamp_np[worker, slot] != stamp or (worker, slot) in self._in_use:
            raise PipelineError(
                f"worker {worker} overwrote block slot {slot} before it was read (loader bug)"
            )
        self._held_np[worker, slot] = 1
        self._received_np[worker] = number + 1
        self._in_use[(worker, slot)] = stamp
        array = self._data_np[worker, slot, : int(np.prod(shape))].reshape(shape)  # a new array object
        weakref.finalize(array, self._release, worker, slot, stamp, os.getpid())
        return torch.from_numpy(array)  # its storage keeps `array` alive

    def _release(self, worker: int, slot: int, stamp: int, pid: int) -> None:
        if os.getpid() != pid:
            return  # a forked worker's copy of the caller's arrays: the slot is the main process's business
        if self._stamp_np[worker, slot] != stamp and self._broken is None:
            self._broken = f"worker {worker} overwrote block slot {slot} while it was in use"
        self._in_use.pop((worker, slot), None)
        self._held_np[worker, slot] = 0
