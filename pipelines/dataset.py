"""`VideoDataset`: stream clips or single frames out of a store's shards (WebDataset tars or HDF5).

Per block of consecutive stream samples (see :mod:`pipelines.order`): read shard runs -> shuffle the block ->
pick temporal windows or frames -> ship. Every random draw comes from the block's own generator, seeded by
``(seed, epoch, global position)``, so which worker reads a block never changes what it yields.

The per-sample ``__iter__`` serves any DataLoader; :func:`pipelines.loader.make_loader` reads whole blocks
(``iter_blocks``) and re-interleaves workers so the sequence does not depend on ``num_workers``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import IterableDataset, get_worker_info

from pipelines.cache import ShardCache, is_remote
from pipelines.errors import PipelineError, ShardError
from pipelines.fields import FieldBlock, check_fields, to_model_layout
from pipelines.handlers import Handler, resolve_handler
from pipelines.hdf5_files import close_h5_files
from pipelines.integrity import check_digest, check_verify_mode, drop_bad_shards
from pipelines.order import (
    DEFAULT_INTERLEAVE,
    Block,
    block_order,
    block_rng,
    elastic_count,
    exact_blocks,
    kept_range,
    rank_share,
    resampled_blocks,
    worker_blocks,
)
from pipelines.readers import Placement, count_samples, fill_run, parse_meta, read_run
from pipelines.sources import ShardRef, resolve_source
from pipelines.world import World

log = logging.getLogger("pipelines")

MODES = ("clip", "frame")
EPOCH_MODES = ("exact", "resampled")
DEFAULT_BLOCK_BYTES = 16 << 20
MAX_BLOCK = 256
MAX_INTERLEAVED_BLOCK = 1024  # a read per piece: longer pieces keep interleaving cheap (same 16 MiB cap)
FALLBACK_BLOCK = 64
PREFETCH_BLOCKS = 4  # blocks whose remote shards are fetched ahead of the one being read (with a cache)


def _draw_windows(
    rng: np.random.Generator, n: int, t: int, mode: str, frames: int | None, stride: int, offset: int | str
) -> tuple[NDArray[np.int64], int]:
    """First frame of each output sample's window, and the window length (frame mode: a random frame, 1)."""
    if mode == "frame":
        return rng.integers(0, t, size=n), 1
    length = t if frames is None else frames
    span = (length - 1) * stride + 1
    if span > t:
        raise PipelineError(
            f"window of {length} frames with stride {stride} needs {span} frames, clips have {t}"
        )
    if offset == "random":
        return rng.integers(0, t - span + 1, size=n), length
    if not 0 <= int(offset) <= t - span:
        raise PipelineError(f"offset {offset} out of range [0, {t - span}] for clips of {t} frames")
    return np.full(n, int(offset), dtype=np.int64), length


Allocator = Callable[[tuple[int, ...]], tuple[torch.Tensor, NDArray[np.uint8]]]


def alloc_block(shape: tuple[int, ...]) -> tuple[torch.Tensor, NDArray[np.uint8]]:
    """A fresh uint8 block and its numpy view (a DataLoader worker's queue moves it to shared memory)."""
    tensor = torch.empty(shape, dtype=torch.uint8)
    return tensor, tensor.numpy()


class VideoDataset(IterableDataset):
    """Clips ``(C, T, H, W)`` or frames ``(C, H, W)`` (uint8) from a store, manifest or shard URL pattern.

    What to read:
        source: store folder, ``manifest.json`` (path or URL), or shard URL pattern / list (``{000..007}``
            braces, ``http(s)://``, ``pipe:cmd``, ``file:``); no manifest: counts unknown (``count_scan``).
        format: "auto" (WebDataset when a store has both), "wds" or "hdf5".
        mode: "clip" (a temporal window of ``frames`` frames, ``stride`` apart, at ``offset``: "random" or a
            fixed first frame) or "frame" (one random frame per clip).
        with_meta: add each sample's JSON ground truth as ``"meta"``.
        fields: what to read per sample: ``("video",)`` or with the store's extra arrays, e.g.
            ``("video", "mask", "flow")``: items and batches get ``"mask"`` uint8 ``(T, H, W)`` and ``"flow"``
            float16 ``(2, T - 1, H, W)`` (the window's steps; clip mode, stride 1), cut to the video's window.

    How to iterate:
        shuffle, seed: shard permutation and block shuffle, a pure function of (seed, epoch, rank, world);
            ``set_epoch(n)`` changes the epoch, iterating never does.
        epoch_mode: "exact" (each sample once per epoch; ranks get equal counts, padded by repeating the first
            samples: ``pad_count`` says how many) or "resampled" (shards drawn with replacement, endless
            unless ``epoch_length`` samples per rank is given).
        block_size: samples shuffled together and shipped per worker step (default: <= 16 MiB and <= 1024
            samples, <= 256 with ``interleave=1``).
        interleave: shuffled epochs: a block is ``interleave`` pieces of ``block_size // interleave``
            consecutive samples from places all over the rank's epoch (resampled: from as many shards drawn
            side by side; default 12: a batch of 32 holds nearly all 12 pieces, so as many shards where the
            store has them); 1: the block-local order (a block is ``block_size`` consecutive samples, one or
            two shards). Streamed shards (HTTP, ``pipe:``) are read from their start for every piece: pass
            1 for them (see :mod:`pipelines.order`).
        world: a :class:`World`; default ``World.detect()`` (torch.distributed, then RANK / WORLD_SIZE).
        on_error: "raise" (default: a clear error naming the shard), "skip" (warn, skip, count in ``skipped``)
            or a handler callable ``(exception) -> bool``. Remote shards (HTTP 404, a reset connection)
            follow it like local ones.
        verify: how far shards are checked against the manifest (:mod:`pipelines.integrity`): "size"
            (default, one ``stat`` per local shard up front), "none", or "sha256": each shard hashed the
            first time a process reads it and refused on a mismatch. Turn sha256 on for stores from places
            you do not control (downloaded, shared folders): a shard of the right size may hold other bytes.
        count_scan: for exact epochs over a URL pattern without manifest, count each shard's samples first.
        h5_locking: passed to ``h5py.File(locking=...)``; False for NFS/Lustre (None keeps HDF5's default).
        cache_dir, cache_limit: remote shards (``s3://``, ``gs://``, ``http(s)://``, any fsspec URL) are
            fetched whole into this folder, shared by every worker and rank on the node, verified (size, and
            sha256 with ``verify="sha256"``), evicted least-recently-used past ``cache_limit`` ("20GB",
            "512MiB" or bytes) and prefetched ahead of the order (:mod:`pipelines.cache`). Without it,
            remote shards are streamed.

    Items: ``{"key": str, "video": uint8 tensor, "meta": dict}`` (``meta`` only with ``with_meta``).

    ``skipped``: samples skipped under ``on_error``, in one count: those of shards dropped when the dataset
    is made (missing, wrong size; counted once, as they are absent from every epoch; 0 for a shard of unknown
    count) plus those skipped while reading (counted each time, by :func:`pipelines.loader.make_loader`'s
    loader, or by iterating the dataset in this process; a plain DataLoader's workers count in their copies).

    With :func:`pipelines.loader.make_loader` the sequence never depends on ``num_workers``; a plain
    DataLoader over these items gets the same samples, interleaved per worker. Ranks and workers split
    sample ranges, not whole shards, so no setting needs ranks x workers shards (workers without a block
    idle).
    Build the dataset after ``torch.distributed.init_process_group`` (the world is read then).
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str],
        mode: str = "clip",
        frames: int | None = None,
        stride: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        epoch_mode: str = "exact",
        with_meta: bool = False,
        *,
        offset: int | str = "random",
        format: str = "auto",  # noqa: A002 - the user-facing name of the store format
        block_size: int | None = None,
        world: World | None = None,
        epoch_length: int | None = None,
        on_error: str | Handler = "raise",
        count_scan: bool = False,
        h5_locking: bool | None = None,
        verify: str = "size",
        fields: Sequence[str] = ("video",),
        interleave: int = DEFAULT_INTERLEAVE,
        cache_dir: str | os.PathLike | None = None,
        cache_limit: str | int = "20GB",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise PipelineError(f"mode must be one of {MODES}, got {mode!r}")
        if epoch_mode not in EPOCH_MODES:
            raise PipelineError(f"epoch_mode must be one of {EPOCH_MODES}, got {epoch_mode!r}")
        if frames is not None and frames < 1:
            raise PipelineError(f"frames must be >= 1, got {frames}")
        if stride < 1:
            raise PipelineError(f"stride must be >= 1, got {stride}")
        if offset != "random" and not isinstance(offset, int):
            raise PipelineError(f"offset must be 'random' or an int, got {offset!r}")
        if epoch_length is not None and (epoch_mode != "resampled" or epoch_length < 1):
            raise PipelineError("epoch_length is a positive sample count for epoch_mode='resampled'")
        self.mode, self.frames, self.stride, self.offset = mode, frames, stride, offset
        self.shuffle, self.seed, self.epoch_mode, self.with_meta = shuffle, int(seed), epoch_mode, with_meta
        self.epoch_length = epoch_length
        self.handler = resolve_handler(on_error)
        self.h5_locking = h5_locking
        self.world = World.detect() if world is None else world
        self.epoch = 0

        info = resolve_source(source, fmt=format)
        self.fields, self.field_specs = check_fields(fields, info.manifest, mode, stride, frames)
        check_verify_mode(verify, info)
        self.verify = verify
        info, self.skipped = drop_bad_shards(info, self.handler, verify)
        self.shards = info.shards
        self.cache: ShardCache | None = None
        if cache_dir is not None:
            self.cache = ShardCache(cache_dir, cache_limit, verify=verify)
        self.format = self.shards[0].fmt
        self.sample_shape = info.sample_shape
        sizes: list[int | None] = [shard.n_samples for shard in self.shards]
        if epoch_mode == "exact" and None in sizes:
            if not count_scan:
                raise PipelineError(
                    "exact epochs need per-shard sample counts: read a store folder / manifest.json, pass "
                    "count_scan=True to count them by reading every shard once, or use epoch_mode='resampled'"
                )
            sizes = [count_samples(shard, h5_locking=h5_locking) for shard in self.shards]
            close_h5_files()  # never carry open HDF5 handles into forked workers
        self.shard_sizes = sizes
        if self.sample_shape is not None and mode == "clip":
            length = self.sample_shape[0] if frames is None else frames
            if (length - 1) * stride + 1 > self.sample_shape[0]:
                raise PipelineError(
                    f"window of {length} frames with stride {stride} does not fit clips of "
                    f"{self.sample_shape[0]} frames"
                )
        if block_size is None:
            if self.sample_shape is None:
                block_size = FALLBACK_BLOCK
            else:
                most = MAX_BLOCK if interleave == 1 else MAX_INTERLEAVED_BLOCK
                block_size = max(1, min(most, DEFAULT_BLOCK_BYTES // int(np.prod(self.sample_shape))))
        self.block_size = int(block_size)
        if interleave < 1:
            raise PipelineError(f"interleave must be >= 1, got {interleave}")
        self.interleave = int(interleave)
        # elastic resumption: (epoch, ((world_size, samples read per rank), ...)) of an epoch begun elsewhere
        self.elastic: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self.pad_count = 0
        self.num_samples: int | None = epoch_length
        if epoch_mode == "exact":
            _, self.num_samples, self.pad_count = rank_share(sum(sizes), self.world)  # type: ignore[arg-type]
            if self.pad_count:
                message = (
                    f"{sum(sizes)} samples do not split evenly over {self.world.world_size} ranks: "
                    f"padding the epoch with {self.pad_count} repeated samples; "
                    f"each rank gets {self.num_samples}"
                )
                log.info(message)  # for run logs; the warning is what a user sees by default
                warnings.warn(message, stacklevel=2)

    # ------------------------------------------------------------ order
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration follows (like DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Samples per rank and epoch (exact mode, or resampled with ``epoch_length``)."""
        if self.num_samples is None:
            raise TypeError("an endless resampled VideoDataset has no length (pass epoch_length)")
        return self.num_samples

    def history(self, epoch: int) -> tuple[tuple[int, int], ...]:
        """The elastic steps ``((world_size, samples read per rank), ...)`` epoch ``epoch`` went through
        on other worlds before this one (none unless resumed from another world size)."""
        return self.elastic[1] if self.elastic is not None and self.elastic[0] == epoch else ()

    def epoch_samples(self, epoch: int | None = None) -> int | None:
        """Samples this rank yields in ``epoch`` (None: endless): ``len(self)``, or fewer after an elastic
        resumption."""
        epoch = self.epoch if epoch is None else epoch
        history = self.history(epoch)
        if not history:
            return self.num_samples
        return elastic_count(sum(self.shard_sizes), self.world.world_size, history)  # type: ignore[arg-type]

    def blocks(self, start: int = 0, epoch: int | None = None) -> Iterator[Block]:
        """This rank's blocks of the epoch from sample ``start`` on (a pure function of the settings)."""
        return self._prefetching(self._blocks(start, epoch))

    def _blocks(self, start: int = 0, epoch: int | None = None) -> Iterator[Block]:
        """:meth:`blocks` without prefetching."""
        epoch = self.epoch if epoch is None else epoch
        if self.epoch_mode == "exact":
            yield from exact_blocks(
                self.shard_sizes,  # type: ignore[arg-type]
                seed=self.seed,
                epoch=epoch,
                world=self.world,
                shuffle=self.shuffle,
                block_size=self.block_size,
                start=start,
                interleave=self.interleave,
                history=self.history(epoch),
            )
            return
        for block in resampled_blocks(
            self.shard_sizes,
            seed=self.seed,
            epoch=epoch,
            world=self.world,
            block_size=self.block_size,
            start=start,
            interleave=self.interleave if self.shuffle else 1,
        ):
            if self.epoch_length is not None and 0 <= self.epoch_length <= block.position:
                return
            yield block

    def _prefetching(self, blocks: Iterator[Block]) -> Iterator[Block]:
        """``blocks``, with the remote shards of the next ``PREFETCH_BLOCKS`` queued for download."""
        if self.cache is None:
            yield from blocks
            return
        ahead: deque[Block] = deque()
        for block in blocks:
            ahead.append(block)
            self.cache.prefetch(self._remote_shards(block))
            if len(ahead) > PREFETCH_BLOCKS:
                yield ahead.popleft()
        yield from ahead

    def _remote_shards(self, block: Block) -> list[ShardRef]:
        return [self.shards[seg.shard] for seg in block.segments if is_remote(self.shards[seg.shard])]

    def item_shape(self) -> tuple[int, ...] | None:
        """Shape ``(T', H, W, C)`` of one output sample as read (frame mode: T' = 1); None if unknown."""
        if self.sample_shape is None:
            return None
        t, *frame = self.sample_shape
        if self.mode == "frame":
            return (1, *frame)
        return (t if self.frames is None else self.frames, *frame)

    # ------------------------------------------------------------ reading
    def _checked(self, shard: ShardRef) -> ShardRef:
        """The shard to read, once its digest is known good in this process (``verify="sha256"``): a remote
        shard's cached copy when caching (pinned until the block is read)."""
        if self.cache is not None and is_remote(shard):
            return self.cache.acquire(shard)  # checked by the cache (size; sha256 with verify="sha256")
        if self.verify == "sha256":
            check_digest(shard)
        return shard

    def _kept(self, block: Block, size: int, start: int) -> tuple[int, int]:
        """Output positions ``[lo, hi)`` of a block to keep: none before ``start`` or past epoch_length."""
        return kept_range(block, size, start, self.epoch_length)

    def _result(
        self, block: Block, video, keys, metas, skipped: int, extra: FieldBlock | None = None, kept=None
    ) -> dict[str, Any]:
        if self.mode == "frame" and video is not None:
            video = video[:, 0]
        return {
            "block": block.index,
            "key": keys,
            "video": video,
            "meta": parse_meta(metas) if self.with_meta else None,
            "skipped": skipped,
            "fields": extra.tensors(kept, self.mode == "frame") if extra is not None else {},
        }

    def read_block(self, block: Block, start: int = 0, alloc: Allocator | None = None) -> dict[str, Any]:
        """:meth:`_read_block`, then the block's cached shards unpinned."""
        try:
            return self._read_block(block, start, alloc)
        finally:
            if self.cache is not None:
                self.cache.release_all()

    def _read_block(self, block: Block, start: int = 0, alloc: Allocator | None = None) -> dict[str, Any]:
        """One block, shuffled and windowed: ``{"block", "key", "video" (n, T, H, W, C), "meta", "skipped"}``.

        Samples before rank position ``start`` are dropped (resumption), as are those past ``epoch_length``.
        With known sizes each sample is read straight into its output row (and only if it is kept).
        ``alloc(shape)`` may provide the output (the loader's shared-memory ring); default: a fresh block.
        """
        alloc = alloc or alloc_block
        size = block.known_size
        if size is None or self.sample_shape is None:
            return self._read_block_generic(block, start, alloc)
        rng = block_rng(block)
        order = block_order(block, size, shuffle=self.shuffle, rng=rng)
        starts, length = _draw_windows(
            rng, size, self.sample_shape[0], self.mode, self.frames, self.stride, self.offset
        )
        lo, hi = self._kept(block, size, start)
        position = np.empty(size, dtype=np.int64)  # read order -> output position
        position[order] = np.arange(size)
        rows = np.where((position >= lo) & (position < hi), position - lo, -1)
        window_starts = starts[position]
        video, out = alloc((hi - lo, length, *self.sample_shape[1:]))
        keys: list[str | None] = [None] * (hi - lo)
        metas: list[str | None] = [None] * (hi - lo)
        filled = np.zeros(hi - lo, dtype=bool)
        extra = FieldBlock(self.field_specs, hi - lo, length) if self.fields else None
        skipped, first = 0, 0
        for seg in block.segments:
            count = seg.stop - seg.start  # type: ignore[operator]
            place = Placement(
                rows[first : first + count], window_starts[first : first + count], length, self.stride
            )
            first += count
            if not (place.rows >= 0).any():
                continue
            try:
                shard = self._checked(self.shards[seg.shard])
                run_keys, run_meta = fill_run(
                    shard,
                    seg.start,
                    seg.stop,  # type: ignore[arg-type]
                    out,
                    place,
                    with_meta=self.with_meta,
                    h5_locking=self.h5_locking,
                )
                if extra is not None:
                    extra.add(shard, seg.start, seg.stop, place, self.h5_locking)  # type: ignore[arg-type]
            except ShardError as exn:
                if self.handler(exn):
                    skipped += int((place.rows >= 0).sum())
                    continue
                raise
            picked = np.flatnonzero(place.rows >= 0)
            picked_rows = place.rows[picked]
            filled[picked_rows] = True
            pairs = list(zip(picked_rows.tolist(), picked.tolist(), strict=True))
            for row, j in pairs:
                keys[row] = run_keys[j]
            if run_meta is not None:
                for row, j in pairs:
                    metas[row] = run_meta[j]
        kept = None
        if skipped:
            kept = np.flatnonzero(filled)
            video = video[torch.from_numpy(kept)]
            keys, metas = [keys[i] for i in kept], [metas[i] for i in kept]
        return self._result(block, video if len(keys) else None, keys, metas, skipped, extra, kept)

    def _read_block_generic(self, block: Block, start: int, alloc: Allocator) -> dict[str, Any]:
        """Blocks of unknown size or sample shape: read every run, then shuffle and cut windows."""
        if self.fields:
            raise PipelineError("extra fields are read from stores with known shard sizes (a manifest)")
        keys: list[str] = []
        videos: list[NDArray[np.uint8]] = []
        metas: list[str] = []
        skipped = 0
        for seg in block.segments:
            try:
                run = read_run(
                    self._checked(self.shards[seg.shard]),
                    seg.start,
                    seg.stop,
                    with_meta=self.with_meta,
                    h5_locking=self.h5_locking,
                )
            except ShardError as exn:
                if self.handler(exn):
                    skipped += 0 if seg.stop is None else seg.stop - seg.start
                    continue
                raise
            if len(run.keys):
                keys.extend(run.keys)
                videos.append(run.video)
                metas.extend(run.meta or [])
        if not videos:
            return self._result(block, None, [], [], skipped)
        video = videos[0] if len(videos) == 1 else np.concatenate(videos)
        rng = block_rng(block)
        order = block_order(block, len(keys), shuffle=self.shuffle, rng=rng)
        starts, length = _draw_windows(
            rng, len(keys), video.shape[1], self.mode, self.frames, self.stride, self.offset
        )
        lo, hi = self._kept(block, len(keys), start)
        picks = starts[lo:hi, None] + self.stride * np.arange(length)
        out_tensor, out = alloc((hi - lo, length, *video.shape[2:]))
        out[...] = video[order[lo:hi, None], picks]
        order = order[lo:hi]
        return self._result(
            block, out_tensor, [keys[i] for i in order], [metas[i] for i in order] if metas else [], skipped
        )

    def iter_blocks(self, start: int = 0, worker: int = 0, num_workers: int = 1, epoch: int | None = None):
        """Blocks worker ``worker`` of ``num_workers`` reads from rank position ``start`` (as dicts)."""
        for block in worker_blocks(self.blocks(start, epoch), worker, num_workers):
            yield self.read_block(block, start)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """This rank and worker's samples: ``{"key", "video" (C, T, H, W) / (C, H, W), "meta"}``."""
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for item in self.iter_blocks(0, worker, num_workers):
            self.skipped += item["skipped"]
            if item["video"] is None:
                continue
            video = item["video"].movedim(-1, 1)
            for i, key in enumerate(item["key"]):
                sample = {"key": key, "video": video[i]}
                for name, values in item["fields"].items():
                    sample[name] = to_model_layout(name, values[i : i + 1])[0]
                if self.with_meta:
                    sample["meta"] = item["meta"][i]
                yield sample
