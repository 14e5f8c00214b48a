"""`make_loader`: batches from a :class:`VideoDataset` on a device, worker-count independent and resumable.

DataLoader workers read whole blocks (worker ``w`` of ``W`` reads blocks ``w, w + W, ...``); with
``in_order=True`` the DataLoader hands them back round-robin, i.e. in block order, so the batches are the
same for any ``num_workers``. Persistent workers stream on past the end of an epoch into the next one (the
order ``set_epoch(n + 1)`` asks for), so that epoch's first blocks are read while the caller finishes this
one; any other next epoch or start position restarts the stream (the blocks read ahead are dropped).

Workers write blocks into a shared-memory ring (:mod:`pipelines.ring`); the main process cuts batches
straight from the ring slots: on the CPU a batch within one block is a view of its slot (held until freed),
on CUDA it is copied once into a pinned buffer, and :mod:`pipelines.device` moves it (uint8) to the device
and scales it there.

Public torch APIs only (tested with torch 2.13.0): the ring is :mod:`multiprocessing.shared_memory` seen
through ``torch.from_numpy``, other blocks reach the main process through the DataLoader's queues (which move
tensors to shared memory), and workers stop when the last reference to the DataLoader's iterator goes
(:class:`_Workers`), as the DataLoader documents.

An error in a worker reaches the caller as the same :class:`PipelineError` / :class:`ShardError`, the shard
named on its first line (the worker's traceback follows); any other exception while reading a block becomes
one naming the block's shards.

Checkpoint state is a few JSON ints, taken after the batches the caller has received::

    {"epoch": 3, "sample_in_epoch": 4096, "seed": 0, "rank": 0, "world_size": 8, "block_size": 256,
     "interleave": 16, "history": []}

A state taken on another world size resumes elastically (exact epochs): the samples every old rank had left
are split over the new ranks, none lost or repeated (:func:`pipelines.order.elastic_blocks`); ``history``
lists the ``[world_size, sample_in_epoch]`` steps of such an epoch, and the epochs after it are those of a
run started on the new world size. Every rank must have read as many samples (DDP's lock-step), so any
rank's state will do.
"""

from __future__ import annotations

import inspect
import logging
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipelines.dataset import VideoDataset
from pipelines.device import HostBatcher, feed_device, to_model_layout
from pipelines.errors import PipelineError, ShardError
from pipelines.fields import to_model_layout as field_layout
from pipelines.order import Block, worker_blocks
from pipelines.ring import BlockRing

log = logging.getLogger("pipelines")

PREFETCH_FACTOR = 2
# Ring slots per worker: PREFETCH_FACTOR queued + 1 being written + 3 held by the main process and its caller
# (the block being cut, blocks under the batches in flight and the caller's last batch); past that a worker
# falls back to fresh shared memory.
RING_SLOTS = PREFETCH_FACTOR + 4
# Ring slot size for sources without a manifest (clip shape unknown until read): pages are only used as far as
# blocks fill them, and a larger block goes through fresh memory (correct, only slower).
UNKNOWN_SHAPE_SLOT_BYTES = 64 << 20
# Blocks must come back round-robin (torch < 2.6 always does so and has no `in_order` argument).
_IN_ORDER = {"in_order": True} if "in_order" in inspect.signature(DataLoader).parameters else {}
STATE_KEYS = ("epoch", "sample_in_epoch", "seed", "rank", "world_size", "block_size")


class _BlockStream(IterableDataset):
    """What the DataLoader workers run: this worker's blocks of one epoch from one start position, then (when
    following) of the epochs after it, each item tagged with its epoch.

    Epoch, start and "follow" are read at every ``iter`` from a small shared tensor, so persistent workers
    (which keep their open files, tar indexes and ring mappings) follow ``set_epoch`` and
    ``load_state_dict``. The epoch boundary is fetched across like any block: a worker's round-robin turn
    runs on over the concatenated epochs, as the DataLoader's hand-back does.
    """

    def __init__(self, dataset: VideoDataset, control: torch.Tensor, ring: BlockRing | None = None) -> None:
        super().__init__()
        self.dataset, self.control, self.ring = dataset, control, ring

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, start, follow = (int(v) for v in self.control)
        blocks = worker_blocks(self._epochs(epoch, start, bool(follow)), worker, num_workers)
        if self.ring is not None:
            self.ring.start_epoch()
        # Exactly one item per block, even an empty one, keeps the round-robin hand-back in block order.
        for number, (block_epoch, block_start, block) in enumerate(blocks):
            try:
                if self.ring is None or info is None:
                    item = self.dataset.read_block(block, block_start)
                else:
                    item = self.dataset.read_block(block, block_start, alloc=self.ring.writer(worker, number))
                    item = self.ring.publish(item, worker, number)
            except PipelineError:
                raise  # names its shard; torch re-raises it in the caller as the same type and message
            except Exception as exn:
                raise self._block_error(block, exn) from exn
            item["epoch"] = block_epoch
            yield item

    def _block_error(self, block: Block, exn: Exception) -> PipelineError:
        """Any other failure while reading a block, as our error type naming the block's shards."""
        names = sorted({self.dataset.shards[seg.shard].url for seg in block.segments})
        reason = f"reading failed: {type(exn).__name__}: {exn}"
        if len(names) == 1:
            return ShardError(names[0], reason)
        return PipelineError(f"shards {', '.join(names)}: {reason}")

    def _epochs(self, epoch: int, start: int, follow: bool) -> Iterator[tuple[int, int, Block]]:
        """(epoch, start, block) of this epoch from ``start``, then of every later epoch when following."""
        while True:
            for block in self.dataset.blocks(start, epoch):
                yield epoch, start, block
            if not follow:
                return
            epoch, start = epoch + 1, 0


def _passthrough(item: dict[str, Any]) -> dict[str, Any]:
    return item


class _Workers:
    """The DataLoader and its iterator, which the worker processes run under; ``shut()`` drops both.

    Workers stop when the last reference to the iterator goes (torch's documented shutdown), so only this
    object holds it: the loader's generators fetch each block through :meth:`next_item` and keep none, and
    ``close()`` (or the loader's collection, through a ``weakref.finalize``) stops the workers at once. Left
    to the garbage collector, an iterator that dies in a reference cycle (a trainer holding the loader, say)
    stalls the collection 5 s per worker: its queues may be finalized before it, and the sentinel that stops
    a worker never reaches it.
    """

    def __init__(self) -> None:
        self.dataloader: DataLoader | None = None
        self.iterator: Iterator[dict[str, Any]] | None = None

    def next_item(self) -> dict[str, Any] | None:
        """The next block item of the live stream, None at its end."""
        if self.iterator is None:
            raise PipelineError("the loader was closed during iteration")
        return next(self.iterator, None)

    def shut(self) -> None:
        self.dataloader = self.iterator = None


class VideoLoader:
    """Iterable of ``{"key": list[str], "video": tensor, "meta": list[dict]}`` batches; see make_loader."""

    def __init__(
        self,
        dataset: VideoDataset,
        batch_size: int,
        *,
        num_workers: int,
        device: torch.device,
        dtype: torch.dtype,
        drop_last: bool,
        prefetch: int,
        timeout: float,
        multiprocessing_context: str | None,
        persistent_workers: bool,
        split: tuple[int, int] | None = None,
    ) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.split = split
        self.device, self.dtype, self.drop_last, self.prefetch = device, dtype, drop_last, prefetch
        self.timeout, self.multiprocessing_context = timeout, multiprocessing_context
        self.persistent_workers = persistent_workers
        self._position = 0  # samples of the current epoch handed to the caller
        self._epoch = dataset.epoch
        self._resume: tuple[int, int] | None = None
        self._block_ring: BlockRing | None = None
        # epoch, start and "follow into later epochs" for the workers
        self._control = torch.zeros(3, dtype=torch.int64).share_memory_()
        # Where the workers' live block stream stands (None: unknown, restart it) and an item of a later
        # epoch already taken from it.
        self._stream_at: tuple[int, int] | None = None
        self._pending: dict[str, Any] | None = None
        self._workers = _Workers()
        weakref.finalize(self, self._workers.shut)

    @property
    def skipped(self) -> int:
        """Samples skipped under ``on_error="skip"``: the dataset's one count (:attr:`VideoDataset.skipped`),
        shards dropped when it was made plus samples skipped while reading."""
        return self.dataset.skipped

    # ------------------------------------------------------------ epochs and checkpoints
    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch``."""
        self.dataset.set_epoch(epoch)
        self._resume = None

    def state_dict(self) -> dict[str, int]:
        """Where the caller is: resuming from this yields exactly the batches an uninterrupted run would."""
        return {
            "epoch": self._epoch,
            "sample_in_epoch": self._position,
            "seed": self.dataset.seed,
            "rank": self.dataset.world.rank,
            "world_size": self.dataset.world.world_size,
            "block_size": self.dataset.block_size,
            "interleave": self.dataset.interleave,
            "history": [list(step) for step in self.dataset.history(self._epoch)],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` taken with the same seed, block size and interleave; one
        taken on another world size (exact epochs) resumes elastically (see the module docstring)."""
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise PipelineError(f"loader state lacks {', '.join(missing)}")
        # states from before interleaving had none: they follow the block-local order (interleave=1)
        checks = [("seed", self.dataset.seed), ("block_size", self.dataset.block_size)]
        checks.append(("interleave", self.dataset.interleave))
        if self.dataset.epoch_mode != "exact":
            checks.append(("world_size", self.dataset.world.world_size))
        for key, mine in checks:
            if int(state.get(key, 1)) != mine:
                hint = ""
                if key in ("block_size", "interleave"):  # e.g. saved before interleaving was the default
                    hint = (
                        f": make the VideoDataset with block_size={state.get('block_size')}, "
                        f"interleave={state.get('interleave', 1)} to resume it"
                    )
                raise PipelineError(
                    f"loader state has {key}={state.get(key, 1)} but this loader uses {mine}{hint}"
                )
        epoch, position = int(state["epoch"]), int(state["sample_in_epoch"])
        history = tuple((int(w), int(s)) for w, s in state.get("history", ()))
        if int(state["world_size"]) != self.dataset.world.world_size:
            history, position = (*history, (int(state["world_size"]), position)), 0
        elif int(state["rank"]) != self.dataset.world.rank:
            warnings.warn(
                f"resuming rank {self.dataset.world.rank} from rank {state['rank']}'s state", stacklevel=2
            )
        elastic = (epoch, history) if history else None
        if elastic != self.dataset.elastic:
            self.dataset.elastic = elastic
            self.close()  # persistent workers hold the dataset as it was: new ones get the new plan
        self.dataset.set_epoch(epoch)
        self._epoch = epoch
        self._position = position
        self._resume = (self._epoch, self._position)

    # ------------------------------------------------------------ iteration
    def _ring(self) -> BlockRing | None:
        """The shared-memory block ring for the workers (made on first use, kept for later epochs); slots of
        a block's size, or of :data:`UNKNOWN_SHAPE_SLOT_BYTES` when the clip shape is unknown."""
        if not self.num_workers:
            return None
        shape = self.dataset.item_shape()
        capacity = (
            UNKNOWN_SHAPE_SLOT_BYTES if shape is None else self.dataset.block_size * int(np.prod(shape))
        )
        if self._block_ring is None or self._block_ring.capacity != capacity:
            self._block_ring = BlockRing(self.num_workers, RING_SLOTS, capacity)
        return self._block_ring

    def _limit(self, epoch: int | None = None) -> int | None:
        return self.dataset.epoch_samples(epoch)

    def __len__(self) -> int:
        """Batches in a full epoch (from its start)."""
        total = self._limit()
        if total is None:
            raise TypeError("an endless resampled loader has no length")
        return total // self.batch_size if self.drop_last else -(-total // self.batch_size)

    def _follows(self) -> bool:
        """Whether workers stream on into later epochs: only persistent workers with epochs that end."""
        return bool(self.num_workers) and self.persistent_workers and self._limit() is not None

    def _restart(self, epoch: int, start: int) -> None:
        """A fresh worker stream from ``(epoch, start)`` (persistent workers are reset, not restarted)."""
        self._control[0], self._control[1], self._control[2] = epoch, start, int(self._follows())
        self._pending = None
        if self._block_ring is not None:
            self._block_ring.start_reading()
        if self._workers.dataloader is None:
            workers = self.num_workers
            self._workers.dataloader = DataLoader(
                _BlockStream(self.dataset, self._control, self._ring()),
                batch_size=None,
                num_workers=workers,
                collate_fn=_passthrough,
                prefetch_factor=PREFETCH_FACTOR if workers else None,
                persistent_workers=self.persistent_workers and workers > 0,
                timeout=self.timeout if workers else 0,
                multiprocessing_context=self.multiprocessing_context if workers else None,
                **_IN_ORDER,
            )
        self._workers.iterator = None  # not persistent: the old iterator goes, and its workers with it
        self._workers.iterator = iter(self._workers.dataloader)  # persistent: torch resets the one it keeps
        if not self.persistent_workers:
            self._workers.dataloader = None

    def close(self) -> None:
        """Stop the worker processes now (iterating again starts new ones); also done on collection."""
        self._workers.shut()
        self._stream_at, self._pending = None, None

    def _blocks(self, epoch: int, start: int) -> Iterator[dict[str, Any]]:
        """The block items of ``epoch`` from rank position ``start``: from the live stream when it stands
        there (the previous epoch was read to its end), else from a restarted one."""
        if self._workers.iterator is None or self._stream_at != (epoch, start):
            self._restart(epoch, start)
        self._stream_at = None  # unknown until the caller has read this epoch to its end
        item, self._pending = self._pending, None
        if item is None:
            item = self._workers.next_item()
        while item is not None:
            if item["epoch"] > epoch:
                self._pending = item
                return
            if item["epoch"] == epoch:  # (earlier: empty blocks left at the end of the previous epoch)
                yield item
            item = self._workers.next_item()

    def _epoch_done(self, epoch: int) -> None:
        """The caller read ``epoch`` to its end: a following stream (endless) now stands at the next epoch's
        start; one that does not follow has ended."""
        self._stream_at = (epoch + 1, 0) if self._follows() else None

    def _host_batches(self, epoch: int, start: int, batcher: HostBatcher):
        """uint8 host batches (and their pinned slot) cut from the blocks, from rank position ``start``."""
        limit = self._limit(epoch)
        left = None if limit is None else max(0, limit - start)
        pieces: list[torch.Tensor] = []
        keys: list[str] = []
        metas: list[dict] = []
        extras: dict[str, list[torch.Tensor]] = {name: [] for name in self.dataset.fields}

        def emit():
            video, slot = batcher.assemble(pieces)
            batch = {"key": list(keys), "video": video}
            if self.dataset.with_meta:
                batch["meta"] = list(metas)
            for name, parts in extras.items():  # extra fields: plain tensors, off the video's pinned ring
                batch[name] = parts[0] if len(parts) == 1 else torch.cat(parts)
                parts.clear()
            pieces.clear(), keys.clear(), metas.clear()
            return batch, slot

        for item in self._blocks(epoch, start):
            self.dataset.skipped += item["skipped"]
            if "ring" in item:
                item["video"] = self._block_ring.take(item["ring"])  # type: ignore[union-attr]
            if item["video"] is None:
                continue
            video, n = to_model_layout(item["video"]), len(item["key"])  # once per block, not per batch
            fields = {name: field_layout(name, t) for name, t in item.get("fields", {}).items()}
            if left is not None:
                n = min(n, left)
                left -= n
            i = 0
            while i < n:
                take = min(self.batch_size - len(keys), n - i)
                pieces.append(video[i : i + take])
                for name, values in fields.items():
                    extras[name].append(values[i : i + take])
                keys.extend(item["key"][i : i + take])
                if self.dataset.with_meta:
                    metas.extend(item["meta"][i : i + take])
                i += take
                if len(keys) == self.batch_size:
                    yield emit()
            if left == 0:
                break
        if keys and not self.drop_last:
            yield emit()
        if self._block_ring is not None:
            self._block_ring.check()  # the epoch's last blocks, too, must not have been overwritten in use
            missed = self._block_ring.new_fallbacks()
            if missed:
                log.info(
                    "%d blocks missed the shared-memory ring (slower): the caller held every slot (kept "
                    "batches or views of them), or a block outgrew a slot",
                    missed,
                )
        self._epoch_done(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.dataset.epoch
        start = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        self._epoch, self._position = epoch, start
        batcher = HostBatcher(pinned=self.device.type == "cuda", depth=self.prefetch)
        batches = feed_device(
            self._host_batches(epoch, start, batcher),
            device=self.device,
            dtype=self.dtype,
            depth=self.prefetch,
            ring=batcher.ring,
        )
        for batch in batches:
            self._position += len(batch["key"])
            if self.split is not None:  # views of the clip, no copy
                batch["context"], batch["target"] = batch["video"].split(self.split, dim=2)
            yield batch


def make_loader(
    dataset: VideoDataset,
    batch_size: int,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    drop_last: bool = False,
    prefetch: int = 2,
    timeout: float = 0,
    multiprocessing_context: str | None = None,
    persistent_workers: bool = True,
    context: int | None = None,
    target: int | None = None,
) -> VideoLoader:
    """Batches of ``dataset`` on ``device``: ``"video"`` float in [-1, 1] (uint8 with ``dtype=torch.uint8``).

    ``dataset``: a :class:`VideoDataset`, or a :func:`pipelines.mix` of several (batches then also carry
    ``"source"``, each sample's source index).

    ``(B, C, T, H, W)`` in clip mode, ``(B, C, H, W)`` in frame mode; ``"key"`` a list of str. The same
    batches come out for any ``num_workers``; ``prefetch`` batches are in flight to the device (at least 2);
    ``state_dict()`` / ``load_state_dict()`` resume mid-epoch exactly; ``timeout`` (s) bounds a worker's
    silence. ``context`` / ``target``: the video-prediction split (Moving MNIST's standard 10 -> 10: clips
    of 20 frames, ``context=10, target=10``): batches also carry ``"context"`` (B, C, context, H, W), the
    first frames, and ``"target"`` (B, C, target, H, W), the rest (views of ``"video"``; clip mode, and the
    clips must be exactly ``context + target`` frames long).
    Workers persist across epochs (open files and indexes stay warm; the dataset object they hold
    is the one of the first epoch: change settings by making a new loader). uint8 CPU batches may be views
    of shared memory that is reused only once they are freed: keeping many of them is safe, only slower.
    """
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise PipelineError(f"num_workers must be >= 0, got {num_workers}")
    if prefetch < 2:
        raise PipelineError(f"prefetch must be >= 2 batches in flight, got {prefetch}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device is CUDA but torch.cuda is not available")
    if not (dtype == torch.uint8 or dtype.is_floating_point):
        raise PipelineError(f"dtype must be torch.uint8 or a float type, got {dtype}")
    split = _prediction_split(dataset, context, target)
    return VideoLoader(
        dataset,
        batch_size,
        num_workers=num_workers,
        device=device,
        dtype=dtype,
        drop_last=drop_last,
        prefetch=prefetch,
        timeout=timeout,
        multiprocessing_context=multiprocessing_context,
        persistent_workers=persistent_workers,
        split=split,
    )


def _prediction_split(dataset: Any, context: int | None, target: int | None) -> tuple[int, int] | None:
    """(context, target) frame counts, checked against the dataset's clips; None without a split."""
    if context is None and target is None:
        return None
    if context is None or target is None:
        raise PipelineError("give both context and target (e.g. context=10, target=10), or neither")
    for name, value in (("context", context), ("target", target)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PipelineError(f"{name} must be an integer >= 1, got {value!r}")
    if dataset.mode != "clip":
        raise PipelineError("context/target split the clips of mode='clip'; this dataset yields frames")
    shape = dataset.item_shape()
    if shape is None or shape[0] != context + target:
        frames = "unknown" if shape is None else shape[0]
        raise PipelineError(
            f"context + target = {context + target} frames, but the dataset's clips are {frames} frames "
            f"long: make it with frames={context + target}"
        )
    return (context, target)
