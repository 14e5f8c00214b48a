"""Shared-memory block ring between DataLoader workers and the loader's main process.

The main process hands out views of the slots (no copy); a slot is written again only once every tensor and
array that views it has been freed.

Public APIs only: one :mod:`multiprocessing.shared_memory` segment holds the flags and the slots, seen through
numpy (``torch.from_numpy`` for the tensors handed out). Forked workers inherit its mapping; spawned or
forkserver workers attach to it by name. Its pages are faulted in on first touch, so slots a run never needs
cost no memory.
"""

from __future__ import annotations

import os
import weakref
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import torch

from pipelines.dataset import alloc_block
from pipelines.errors import PipelineError

_FLAG = np.dtype(np.int64)
_PAGE = 4096


class _Mapping:
    """Keeps a shared-memory segment mapped while any array made from it lives.

    Arrays made with ``np.asarray(mapping)`` end their ``base`` chain here, and this holds the segment; arrays
    made straight from ``SharedMemory.buf`` would make the segment's ``close()`` (run when it is collected)
    fail while they live, leaving its descriptor open.
    """

    def __init__(self, shm: SharedMemory) -> None:
        self.shm = shm
        address = np.frombuffer(shm.buf, dtype=np.uint8).__array_interface__["data"][0]
        self.__array_interface__ = {
            "version": 3,
            "shape": (shm.size,),
            "typestr": "|u1",
            "data": (address, False),
        }


def _unlink(shm: SharedMemory, owner: int) -> None:
    """Remove the segment's name once the ring that made it is gone (never from a forked copy)."""
    if os.getpid() == owner:
        shm.unlink()


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
        self.workers, self.slots, self.capacity = workers, slots, capacity
        shm = SharedMemory(create=True, size=self._layout(workers, slots, capacity)[-1])
        weakref.finalize(self, _unlink, shm, os.getpid())
        self._attach(shm)

    @staticmethod
    def _layout(workers: int, slots: int, capacity: int) -> tuple[int, int, int, int, int, int]:
        """Byte offsets of stamp, held, received, fallbacks and the (page-aligned) slots; total size."""
        stamp, held = 0, workers * slots * _FLAG.itemsize
        received = 2 * held
        fallbacks = received + workers * _FLAG.itemsize
        data = -(-(fallbacks + workers * _FLAG.itemsize) // _PAGE) * _PAGE
        return stamp, held, received, fallbacks, data, max(1, data + workers * slots * capacity)

    def _attach(self, shm: SharedMemory) -> None:
        """Views of the segment (shared) plus per-process state (not shared, not pickled)."""
        self._shm = shm
        workers, slots = self.workers, self.slots
        stamp, held, received, fallbacks, data, _ = self._layout(workers, slots, self.capacity)
        flat = np.asarray(_Mapping(shm))
        self.stamp = flat[stamp:held].view(_FLAG).reshape(workers, slots)
        self.held = flat[held:received].view(_FLAG).reshape(workers, slots)
        self.received = flat[received:fallbacks].view(_FLAG)
        self.fallbacks = flat[fallbacks : fallbacks + workers * _FLAG.itemsize].view(_FLAG)
        self.data = flat[data : data + workers * slots * self.capacity].reshape(workers, slots, self.capacity)
        self._address = self.data.__array_interface__["data"][0]
        self._queued: dict[int, int] = {}  # worker side: block number -> slot, not yet known taken
        self._serial = 0
        self._in_use: dict[tuple[int, int], int] = {}  # main side: (worker, slot) -> stamp, while held
        self._broken: str | None = None
        self._fallbacks_told = 0

    def __getstate__(self) -> dict[str, Any]:
        """Spawned workers attach to the segment by name."""
        return {
            "name": self._shm.name,
            "workers": self.workers,
            "slots": self.slots,
            "capacity": self.capacity,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.workers, self.slots, self.capacity = state["workers"], state["slots"], state["capacity"]
        self._attach(SharedMemory(name=state["name"]))

    # ------------------------------------------------------------ worker side
    def start_epoch(self) -> None:
        """Forget queued blocks of an earlier epoch (the DataLoader discarded those it did not hand back)."""
        self._queued.clear()

    def _free_slot(self, worker: int) -> int | None:
        received = int(self.received[worker])
        for number in [n for n in self._queued if n < received]:
            del self._queued[number]
        busy = set(self._queued.values())
        held = self.held[worker]
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
                self.fallbacks[worker] += 1
                return alloc_block(shape)
            self.stamp[worker, slot] = 0
            self._queued[number] = slot
            array = self.data[worker, slot, :nbytes].reshape(shape)
            return torch.from_numpy(array), array

        return alloc

    def publish(self, item: dict[str, Any], worker: int, number: int) -> dict[str, Any]:
        """Replace a block that lives in the ring by a reference to its slot (stamped as complete)."""
        slot = self._queued.get(number)
        if slot is None:
            return item
        video = item["video"]
        region = self._address + (worker * self.slots + slot) * self.capacity
        if video is not None and video.is_contiguous() and video.data_ptr() == region:
            self._serial += 1
            stamp = (os.getpid() << 32) | self._serial
            self.stamp[worker, slot] = stamp
            item["video"], item["ring"] = None, (worker, slot, stamp, tuple(video.shape), number)
        else:
            del self._queued[number]  # the block was copied elsewhere (skipped samples): the slot is free
        return item

    # ------------------------------------------------------------ main side
    def start_reading(self) -> None:
        """Before a new epoch's DataLoader iterator: no block of it has been taken yet."""
        self.received[:] = 0

    def check(self) -> None:
        """Raise if a slot changed while the main process (or its caller) still viewed it."""
        if self._broken is None:
            for (worker, slot), stamp in list(self._in_use.items()):  # a release may run meanwhile
                if self.stamp[worker, slot] != stamp:
                    self._broken = f"worker {worker} overwrote block slot {slot} while it was in use"
                    break
        if self._broken is not None:
            raise PipelineError(f"{self._broken} (loader bug)")

    def new_fallbacks(self) -> int:
        """Blocks the workers wrote to fresh memory since the last call (the caller held every slot)."""
        total = int(self.fallbacks.sum())
        new, self._fallbacks_told = total - self._fallbacks_told, total
        return new

    def take(self, ref: tuple[int, int, int, tuple[int, ...], int]) -> torch.Tensor:
        """A view of a published block; the slot stays held until the view and all views of it are freed."""
        worker, slot, stamp, shape, number = ref
        self.check()
        if self.stamp[worker, slot] != stamp or (worker, slot) in self._in_use:
            raise PipelineError(
                f"worker {worker} overwrote block slot {slot} before it was read (loader bug)"
            )
        self.held[worker, slot] = 1
        self.received[worker] = number + 1
        self._in_use[(worker, slot)] = stamp
        array = self.data[worker, slot, : int(np.prod(shape))].reshape(shape)  # a new array object
        weakref.finalize(array, self._release, worker, slot, stamp, os.getpid())
        return torch.from_numpy(array)  # its storage keeps `array` alive

    def _release(self, worker: int, slot: int, stamp: int, pid: int) -> None:
        if os.getpid() != pid:
            return  # a forked worker's copy of the caller's arrays: the slot is the main process's business
        if self.stamp[worker, slot] != stamp and self._broken is None:
            self._broken = f"worker {worker} overwrote block slot {slot} while it was in use"
        self._in_use.pop((worker, slot), None)
        self.held[worker, slot] = 0
