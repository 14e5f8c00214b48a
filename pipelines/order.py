"""Which sample each rank and worker reads, in which order: pure functions of (seed, epoch, rank, world).

The model (MosaicML's "pure order function" idea, with webdataset's streaming reads):

1. The shards are permuted with ``default_rng((seed, epoch))`` and their samples concatenated into one
   *stream* (sequential within a shard, so reads stay sequential).
2. Exact mode: the stream is padded by repeating its first samples to a multiple of the world size, and rank
   ``r`` takes the slice ``[r * n, (r + 1) * n)`` (every rank the same ``n``, disjoint unless padded).
   Resampled mode: every rank draws shards with replacement from ``default_rng((seed, epoch, rank))`` forever.
3. A rank's stream is cut into *blocks* of ``block_size`` consecutive samples; a block is shuffled as a whole
   with a generator seeded by ``(seed, epoch, salt, global position of the block)``. A block is also the unit
   a DataLoader worker reads and ships: block ``k`` goes to worker ``(k - first) % num_workers``, and the
   loader takes blocks back round-robin, so the sequence a rank sees never depends on ``num_workers``.
4. Resuming at sample ``s`` of the epoch skips the blocks before ``s // block_size`` and drops the first
   ``s % block_size`` samples of that block (after its shuffle): ``drop_first`` resumption.

Nothing here keeps state: iterating twice gives the same order; ``set_epoch`` is the only way to change it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import PipelineError
from pipelines.world import World

# Salts keep the generators of different decisions apart (seed + epoch style mixing collides: (1,0) == (0,1)).
_SALT_SHARDS = 0
_SALT_BLOCK = 1
_SALT_RESAMPLE = 2


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of shard number ``shard``; ``stop=None``: "to its end" (count unknown)."""

    shard: int
    start: int
    stop: int | None


@dataclass(frozen=True)
class Block:
    """A run of consecutive stream samples that is shuffled, read and shipped as one unit.

    ``index`` numbers blocks within the rank's epoch, ``position`` is the rank-local index of its first
    sample, ``seed_key`` is the global identity its random draws (shuffle, window offsets) are seeded from.
    """

    index: int
    position: int
    segments: tuple[Segment, ...]
    seed_key: tuple[int, ...]

    @property
    def known_size(self) -> int | None:
        """Samples in the block, or None when a segment runs to the end of a shard of unknown size."""
        if any(seg.stop is None for seg in self.segments):
            return None
        return sum(seg.stop - seg.start for seg in self.segments)  # type: ignore[operator]


def shard_order(n_shards: int, *, seed: int, epoch: int, shuffle: bool) -> NDArray[np.int64]:
    """Order in which the shards are streamed in this epoch (identity without shuffle)."""
    if not shuffle:
        return np.arange(n_shards, dtype=np.int64)
    return np.random.default_rng((seed, epoch, _SALT_SHARDS)).permutation(n_shards).astype(np.int64)


def rank_share(n_total: int, world: World) -> tuple[int, int, int]:
    """``(start, count, pad)``: rank's slice of the padded epoch stream, and the padding of the whole epoch.

    Every rank gets ``ceil(n_total / world_size)`` samples; the ``pad`` extra positions repeat the first
    samples of the stream (so nothing is dropped and DDP ranks step in lock-step).
    """
    if n_total <= 0:
        raise PipelineError("the source has no samples")
    per_rank = -(-n_total // world.world_size)
    pad = per_rank * world.world_size - n_total
    return world.rank * per_rank, per_rank, pad


def _segments_of_range(
    sizes: NDArray[np.int64], ends: NDArray[np.int64], start: int, stop: int
) -> list[Segment]:
    """Segments covering stream positions ``[start, stop)``, wrapping around; ``sizes`` are the shard sizes in
    stream order, ``ends`` their cumulative sum (made once per epoch, not per block), and a segment's shard
    is a position in ``sizes``."""
    total = int(ends[-1])
    segments: list[Segment] = []
    pos = start
    while pos < stop:
        wrapped = pos % total
        slot = int(np.searchsorted(ends, wrapped, side="right"))
        offset = wrapped - int(ends[slot] - sizes[slot])
        take = min(int(sizes[slot]) - offset, stop - pos)
        segments.append(Segment(slot, offset, offset + take))
        pos += take
    return segments


def exact_blocks(
    shard_sizes: Sequence[int],
    *,
    seed: int,
    epoch: int,
    world: World,
    shuffle: bool,
    block_size: int,
    start: int = 0,
) -> list[Block]:
    """Blocks of this rank's exact epoch from sample ``start`` on (the first may begin before ``start``)."""
    if block_size < 1:
        raise PipelineError(f"block size must be >= 1, got {block_size}")
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    order = shard_order(len(sizes), seed=seed, epoch=epoch, shuffle=shuffle)
    rank_start, count, _ = rank_share(int(sizes.sum()), world)
    streamed = sizes[order]
    ends = np.cumsum(streamed)
    blocks = []
    for index in range(start // block_size, -(-count // block_size)):
        lo = index * block_size
        hi = min(lo + block_size, count)
        segs = [
            Segment(int(order[seg.shard]), seg.start, seg.stop)
            for seg in _segments_of_range(streamed, ends, rank_start + lo, rank_start + hi)
        ]
        blocks.append(Block(index, lo, tuple(segs), (seed, epoch, _SALT_BLOCK, rank_start + lo)))
    return blocks


def resampled_blocks(
    shard_sizes: Sequence[int | None],
    *,
    seed: int,
    epoch: int,
    world: World,
    block_size: int,
    start: int = 0,
) -> Iterator[Block]:
    """Endless blocks of this rank's resampled stream (shards drawn with replacement) from ``start`` on.

    With known shard sizes the stream is cut into ``block_size`` blocks like an exact epoch. With unknown
    sizes (a URL pattern without manifest) every drawn shard is one block, positioned by draw number.
    """
    if block_size < 1:
        raise PipelineError(f"block size must be >= 1, got {block_size}")
    n_shards = len(shard_sizes)
    if n_shards == 0:
        raise PipelineError("the source has no shards")
    rng = np.random.default_rng((seed, epoch, _SALT_RESAMPLE, world.rank))
    base_key = (seed, epoch, _SALT_RESAMPLE, world.rank)
    if any(size is None for size in shard_sizes):
        if start:
            raise PipelineError("resuming mid-stream needs per-shard sample counts (a manifest)")
        draw = 0
        while True:
            shard = int(rng.integers(n_shards))
            yield Block(draw, -1, (Segment(shard, 0, None),), (*base_key, draw))
            draw += 1
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    if sizes.min() <= 0:
        raise PipelineError("resampled mode needs every shard to hold at least one sample")
    pending: list[Segment] = []  # drawn samples not yet put in a block
    pending_n = 0
    index = 0
    while True:
        while pending_n < block_size:
            shard = int(rng.integers(n_shards))
            pending.append(Segment(shard, 0, int(sizes[shard])))
            pending_n += int(sizes[shard])
        segs: list[Segment] = []
        need = block_size
        while need:
            seg = pending[0]
            take = min(need, seg.stop - seg.start)  # type: ignore[operator]
            segs.append(Segment(seg.shard, seg.start, seg.start + take))
            if seg.start + take == seg.stop:
                pending.pop(0)
            else:
                pending[0] = Segment(seg.shard, seg.start + take, seg.stop)
            need -= take
        pending_n -= block_size
        lo = index * block_size
        if lo + block_size > start:
            yield Block(index, lo, tuple(segs), (*base_key, lo))
        index += 1


def block_rng(block: Block) -> np.random.Generator:
    """The generator for a block's shuffle and window draws: depends on the block's identity only."""
    return np.random.default_rng(block.seed_key)


def block_order(block: Block, n: int, *, shuffle: bool, rng: np.random.Generator) -> NDArray[np.int64]:
    """Emission order of a block's ``n`` samples (indices into its read order)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return rng.permutation(n).astype(np.int64)


def worker_blocks(
    blocks: Iterator[Block] | Sequence[Block], worker: int, num_workers: int
) -> Iterator[Block]:
    """The blocks worker ``worker`` of ``num_workers`` reads: every ``num_workers``-th from the first one."""
    for i, block in enumerate(blocks):
        if i % num_workers == worker:
            yield block
