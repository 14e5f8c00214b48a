"""`mix`: several stores drawn in fixed proportions, as one dataset for :func:`pipelines.loader.make_loader`.

A mix is one more order over the union of the stores' shards, read by the single-store fast path (the
gather reads and the shared-memory ring; no extra copy). What an epoch of a mix is (per rank; every rank
the same counts, so DDP ranks step in lock-step):

- ``M`` samples (``epoch_size``; default: the sources' per-rank lengths summed), of which source ``i`` gives
  ``n_i``: ``M * w_i / sum(w)`` rounded by largest remainder (ties to the lower index), the same every epoch.
- Source ``i``'s samples come from its own endless stream of *exact* epochs on this rank: its epoch ``E``
  is its rank slice (shards permuted by its seed and ``E``, split over the ranks like a single store) cut
  into pieces of ``block_size // interleave`` consecutive samples, the pieces permuted. Mix epoch ``e``
  takes positions ``[e * n_i, (e + 1) * n_i)`` of that stream: a source given more than its length
  (upsampled) goes through its epochs faster than the mix, one given less (downsampled) continues in the
  next mix epoch where it stopped; either way each of a source's epochs yields each of its samples exactly
  once (its padding aside).
- The mix epoch is cut into blocks of about ``block_size`` samples, block ``j`` taking every source's next
  share (``x * n_i // M`` at its bounds): a block holds the sources in proportion and about ``interleave``
  pieces, and its samples are emitted stratified over the pieces (:func:`pipelines.order.block_order`), so
  a batch holds the sources in proportion too, from many shards.

Everything is a pure function of (the mix's seed, the sources' seeds, epoch, rank, world): ``set_epoch`` is
the only state, and the loader's ``state_dict`` resumes mid-epoch exactly, also on another world size: as for
a single store (:func:`pipelines.order.elastic_split`), the samples every old rank had left of its mix epoch
(its blocks, each keeping its shuffle and sources) are split evenly over the new ranks, and the next epochs
are those of a mix made on the new world.
Each batch gets ``"source"``: an int64 tensor of source indices (positions in the list given to
:func:`mix`; -1 in a block that lost samples to ``on_error="skip"``). The sources must agree on how a
sample is read (world, sample shape, mode, frames, stride, offset, with_meta, fields); errors, ``verify``
and HDF5 locking follow the first source's settings; each source's remote shards go through its own cache
(``cache_dir``), or stream as that source alone would.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pipelines.dataset import Allocator, VideoDataset
from pipelines.errors import PipelineError
from pipelines.integrity import check_digest
from pipelines.order import (
    Block,
    Segment,
    block_order,
    block_rng,
    elastic_count,
    elastic_split,
    kept_range,
    piece_key,
    piece_order,
    rank_share,
    segments_of_range,
    shard_order,
)
from pipelines.sources import ShardRef
from pipelines.world import World

SOURCE_FIELD = "source"
_SALT_MIX = 4


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not len(w) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise PipelineError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]
    counts[rest] += 1
    return counts.tolist()


class _SourceEpoch:
    """One exact epoch of a source on this rank as permuted pieces: ``runs(lo, hi)`` gives the pieces of
    positions ``[lo, hi)`` of that piece sequence, each as segments numbered in the mix's shard list."""

    def __init__(self, src: VideoDataset, epoch: int, piece: int, shard_offset: int) -> None:
        sizes = np.asarray(src.shard_sizes, dtype=np.int64)
        self.order = shard_order(len(sizes), seed=src.seed, epoch=epoch, shuffle=src.shuffle)
        self.rank_start, count, _ = rank_share(int(sizes.sum()), src.world)
        self.streamed = sizes[self.order]
        self.ends = np.cumsum(self.streamed)
        n_pieces = -(-count // piece)
        perm = np.arange(n_pieces)
        if src.shuffle:
            perm = piece_order(n_pieces, piece_key(src.seed, epoch, self.rank_start))
        self.first = perm * piece  # rank position of each piece, in the permuted order
        self.size = np.minimum(self.first + piece, count) - self.first
        self.at = np.concatenate([[0], np.cumsum(self.size)])  # where each piece starts in the sequence
        self.offset = shard_offset

    def runs(self, lo: int, hi: int) -> list[tuple[int, list[Segment]]]:
        """``(samples, segments)`` per piece (or part of one) covering ``[lo, hi)`` of the sequence."""
        out = []
        k = int(np.searchsorted(self.at, lo, side="right")) - 1
        while lo < hi:
            take = min(hi, int(self.at[k + 1])) - lo
            start = self.rank_start + int(self.first[k]) + lo - int(self.at[k])
            segs = [
                Segment(self.offset + int(self.order[seg.shard]), seg.start, seg.stop)
                for seg in segments_of_range(self.streamed, self.ends, start, start + take)
            ]
            out.append((take, segs))
            lo += take
            k += 1
        return out


class MixedDataset:
    """Sources drawn in fixed proportions; see the module docstring for what an epoch is. Made by
    :func:`mix`; iterate it through :func:`pipelines.loader.make_loader`."""

    epoch_mode = "exact"  # every rank the same fixed number of samples per epoch; resumes elastically

    def __init__(
        self,
        sources: Sequence[VideoDataset],
        weights: Sequence[float],
        *,
        seed: int = 0,
        epoch_size: int | None = None,
        block_size: int | None = None,
        shuffle: bool = True,
    ) -> None:
        if not sources or len(sources) != len(weights):
            raise PipelineError(
                f"mix needs one weight per source, got {len(sources)} sources, {len(weights)}"
            )
        _check_alike(sources)
        first = sources[0]
        self.sources = list(sources)
        self.world: World = first.world
        self.with_meta, self.mode = first.with_meta, first.mode  # the sources read alike
        self.fields = (*first.fields, SOURCE_FIELD)
        self.seed, self.shuffle, self.epoch = int(seed), shuffle, 0
        self._settings = dict(seed=seed, epoch_size=epoch_size, block_size=block_size, shuffle=shuffle)
        self._weights = list(weights)
        # elastic resumption, set by the loader: (epoch, ((world_size, samples read per rank), ...))
        self.elastic: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self.interleave = first.interleave
        self.lengths = [len(src) for src in sources]
        self.num_samples = self._rank_samples(self.world)
        if self.num_samples < 1:
            raise PipelineError(f"epoch_size must be >= 1, got {epoch_size}")
        self.counts = apportion(self.num_samples, weights)
        self.step = int(block_size or min(src.block_size for src in sources))
        self.piece = max(1, self.step // self.interleave)
        self.block_size = self.step + len(sources) - 1  # the most a block holds (rounding): ring slots' size
        offsets = np.cumsum([0] + [len(src.shards) for src in sources])
        self._offsets = [int(o) for o in offsets[:-1]]
        self._source_of_shard = np.repeat(np.arange(len(sources)), np.diff(offsets))
        # the reader: the first source's read settings over every source's shards, each source's remote
        # shards through that source's own cache (or streamed, as that source alone would)
        self._reader = copy.copy(first)
        self._reader.shards = [shard for src in sources for shard in src.shards]
        self._reader.shuffle = shuffle
        if any(src.cache is not None for src in sources):
            self._reader.cache = SourceCaches(sources)  # type: ignore[assignment]
        self.shards = self._reader.shards

    # ------------------------------------------------------------ the loader's dataset protocol
    @property
    def skipped(self) -> int:
        return sum(src.skipped for src in self.sources) + self._skipped_here

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._skipped_here = value - sum(src.skipped for src in self.sources)

    _skipped_here = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def history(self, epoch: int) -> tuple[tuple[int, int], ...]:
        return self.elastic[1] if self.elastic is not None and self.elastic[0] == epoch else ()

    def epoch_samples(self, epoch: int | None = None) -> int:
        history = self.history(self.epoch if epoch is None else epoch)
        if not history:
            return self.num_samples
        first = int(history[0][0])
        total = first * self._rank_samples(World(0, first))  # every old rank had the same count
        return elastic_count(total, self.world.world_size, history)

    def _rank_samples(self, world: World) -> int:
        """Samples per rank of a mix epoch on ``world`` (``num_samples`` on this one)."""
        if self._settings["epoch_size"] is not None:
            return int(self._settings["epoch_size"])
        return sum(rank_share(sum(src.shard_sizes), world)[1] for src in self.sources)

    def on_world(self, world: World) -> MixedDataset:
        """The same mix as seen by rank ``world.rank`` of ``world`` (for the blocks old ranks had)."""
        sources = [_on_world(src, world) for src in self.sources]
        return MixedDataset(sources, self._weights, **self._settings)  # type: ignore[arg-type]

    def item_shape(self) -> tuple[int, ...] | None:
        return self.sources[0].item_shape()

    # ------------------------------------------------------------ order
    def share_runs(
        self, source: int, epoch: int, lo: int, hi: int, cache: dict
    ) -> list[tuple[int, list[Segment]]]:
        """Pieces of samples ``[lo, hi)`` of source ``source``'s share of mix epoch ``epoch``."""
        n, length = self.counts[source], self.lengths[source]
        lo, hi = epoch * n + lo, epoch * n + hi  # positions in the source's endless stream of epochs
        out = []
        while lo < hi:
            e, p = divmod(lo, length)
            take = min(hi - lo, length - p)
            if (source, e) not in cache:
                cache[(source, e)] = _SourceEpoch(self.sources[source], e, self.piece, self._offsets[source])
            out += cache[(source, e)].runs(p, p + take)
            lo += take
        return out

    def blocks(self, start: int = 0, epoch: int | None = None) -> Iterator[Block]:
        """This rank's blocks of mix epoch ``epoch`` from sample ``start`` on (remote shards prefetched
        into their sources' caches ahead of the order)."""
        return self._reader._prefetching(self._blocks(start, epoch))

    def _blocks(self, start: int = 0, epoch: int | None = None) -> Iterator[Block]:
        epoch = self.epoch if epoch is None else epoch
        history = self.history(epoch)
        if history:
            split = elastic_split(
                lambda old: list(self.on_world(old)._blocks(0, epoch)), world=self.world, history=history
            )
            yield from (b for b in split if b.position + b.kept(b.known_size) > start)  # type: ignore[arg-type]
            return
        cache: dict = {}
        total, position = self.num_samples, 0
        for index, x in enumerate(range(0, total, self.step)):
            y = min(x + self.step, total)
            runs = [
                run
                for i, n in enumerate(self.counts)
                for run in self.share_runs(i, epoch, x * n // total, y * n // total, cache)
            ]
            size = sum(n for n, _ in runs)
            if position + size > start:
                segments = tuple(seg for _, segs in runs for seg in segs)
                pieces = tuple(n for n, _ in runs) if len(runs) > 1 else ()
                key = (self.seed, epoch, _SALT_MIX, self.world.rank, index)
                yield Block(index, position, segments, key, pieces=pieces)
            position += size

    # ------------------------------------------------------------ reading
    def read_block(self, block: Block, start: int = 0, alloc: Allocator | None = None) -> dict[str, Any]:
        """The block read like a single store's, plus ``fields["source"]``: each sample's source index."""
        item = self._reader.read_block(block, start, alloc)
        item.setdefault("fields", {})[SOURCE_FIELD] = torch.from_numpy(self._sources_of(block, start, item))
        return item

    def _sources_of(self, block: Block, start: int, item: dict[str, Any]) -> NDArray[np.int64]:
        """Source index of each yielded sample (the read block's emission order, recomputed)."""
        if item["skipped"]:
            return np.full(len(item["key"]), -1, dtype=np.int64)
        counts = [seg.stop - seg.start for seg in block.segments]  # type: ignore[operator]
        read = np.repeat(self._source_of_shard[[seg.shard for seg in block.segments]], counts)
        order = block_order(block, len(read), shuffle=self.shuffle, rng=block_rng(block))
        lo, hi = kept_range(block, len(read), start)
        return read[order[lo:hi]].astype(np.int64)


class SourceCaches:
    """The shard cache interface over a mix's sources: each remote shard goes through its own source's
    cache (prefetch, pin, release), or, for a source made without one, is read as that source would read
    it alone (streamed; its sha256 checked first with that source's ``verify="sha256"``)."""

    def __init__(self, sources: Sequence[VideoDataset]) -> None:
        self._owner: dict[str, VideoDataset] = {}
        for src in sources:
            for shard in src.shards:
                self._owner.setdefault(shard.url, src)
        self._caches = list({id(src.cache): src.cache for src in sources if src.cache is not None}.values())

    def acquire(self, shard: ShardRef) -> ShardRef:
        src = self._owner[shard.url]
        if src.cache is not None:
            return src.cache.acquire(shard)
        if src.verify == "sha256":
            check_digest(shard)
        return shard

    def prefetch(self, shards: Sequence[ShardRef]) -> None:
        for cache in self._caches:
            cache.prefetch([shard for shard in shards if self._owner[shard.url].cache is cache])

    def release_all(self) -> None:
        for cache in self._caches:
            cache.release_all()


def _on_world(src: VideoDataset, world: World) -> VideoDataset:
    """``src`` as rank ``world.rank`` of ``world`` reads it (an exact epoch's share), with no elastic plan."""
    view = copy.copy(src)
    view.world, view.elastic = world, None
    _, view.num_samples, view.pad_count = rank_share(sum(src.shard_sizes), world)
    return view


def _check_alike(sources: Sequence[VideoDataset]) -> None:
    """Sources must read samples alike (the mix reads them all with the first one's settings)."""

    def how(src: VideoDataset) -> tuple:
        reading = (src.mode, src.frames, src.stride, src.offset, src.with_meta, src.fields)
        return (src.world, src.sample_shape, *reading)

    for i, src in enumerate(sources):
        if src.epoch_mode != "exact":
            raise PipelineError(f"source {i}: mixing reads sources' exact epochs (epoch_mode='exact')")
        if src.sample_shape is None:
            raise PipelineError(f"source {i}: mixing needs a manifest (the sample shape known up front)")
        if how(src) != how(sources[0]):
            raise PipelineError(
                f"source {i} differs from source 0 in world, sample shape, mode, frames, stride, offset, "
                f"with_meta or fields: {how(src)} vs {how(sources[0])}"
            )


def mix(
    sources: Sequence[VideoDataset],
    weights: Sequence[float],
    *,
    seed: int = 0,
    epoch_size: int | None = None,
    block_size: int | None = None,
    shuffle: bool = True,
) -> MixedDataset:
    """Draw from ``sources`` in proportion to ``weights``: ``make_loader(mix([a, b], [3, 1]), 32)``.

    Each source keeps its own seed (its shard order) and must use exact epochs; ``epoch_size``: samples per
    rank and mix epoch (default: the sources' lengths summed); ``block_size``: samples per block (default:
    the smallest source block size). What an epoch is: :mod:`pipelines.mix`."""
    return MixedDataset(
        sources, weights, seed=seed, epoch_size=epoch_size, block_size=block_size, shuffle=shuffle
    )
