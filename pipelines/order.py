"""Which sample each rank and worker reads, in which order: pure functions of (seed, epoch, rank, world).

The model (MosaicML's "pure order function" idea, with webdataset's streaming reads):

1. The shards are permuted with ``default_rng((seed, epoch))`` and their samples concatenated into one
   *stream* (sequential within a shard, so reads stay sequential).
2. Exact mode: the stream is padded by repeating its first samples to a multiple of the world size, and rank
   ``r`` takes the slice ``[r * n, (r + 1) * n)`` (every rank the same ``n``, disjoint unless padded).
   Resampled mode: every rank draws shards with replacement from ``default_rng((seed, epoch, rank))`` forever.
3. A rank's samples are grouped into *blocks* of at most ``block_size`` samples; a block is shuffled as a
   whole with a generator seeded by ``(seed, epoch, salt, global position of the block)``. With
   ``interleave=k > 1`` (shuffled epochs; 12 by default in :class:`~pipelines.dataset.VideoDataset`) a block
   is ``k`` *pieces* of ``block_size // k`` consecutive samples: in exact mode the rank's slice is cut into
   pieces, the pieces are permuted (``default_rng((seed, epoch, salt, rank start))``) and each block takes
   the next ``k``; in resampled mode ``k`` lanes draw shards each from their own generator and each block
   takes the next piece of every lane. A block's samples are emitted stratified over its pieces
   (:func:`block_order`), so a batch mixes ``k`` places of the epoch (``k`` shards where the store has
   them) while every piece is still one sequential read. ``interleave=1`` is the block-local order: a
   block is ``block_size`` consecutive stream samples. A block is also the unit a DataLoader worker reads
   and ships: block ``k`` goes to worker ``(k - first) % num_workers``, and the loader takes blocks back
   round-robin, so the sequence a rank sees never depends on ``num_workers``. Streamed shards (HTTP,
   ``pipe:``, no local file) are read from their start for every run, so interleaving reads them many
   times over: use ``interleave=1`` for them.
4. Resuming at sample ``s`` of the epoch skips the blocks that end before ``s`` and drops the first samples
   of the block holding ``s`` (after its shuffle): ``drop_first`` resumption.
5. Elastic resumption (:func:`elastic_blocks`): an epoch begun on ``W`` ranks that each read ``s`` samples
   continues on ``W'`` ranks. The samples the ``W`` ranks had left (old rank 0's, then rank 1's, ...; each
   old block keeps its shuffle and window draws) are one sequence, split like an exact epoch: new rank
   ``r'`` takes ``[r' * m, (r' + 1) * m)``, ``m = ceil(left / W')``, padded by repeating its first samples.
   A ``history`` of such ``(world_size, samples read)`` steps says how an epoch got where it is; the next
   epoch is the plain order of the new world. (MosaicML streaming fixes a number of "canonical nodes" so
   that one global order serves every world size; here each world size keeps its own order, and only the
   epoch in flight is carried over, which needs nothing fixed in advance.)

Nothing here keeps state: iterating twice gives the same order; ``set_epoch`` is the only way to change it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import PipelineError
from pipelines.world import World

# Salts keep the generators of different decisions apart (seed + epoch style mixing collides: (1,0) == (0,1)).
_SALT_SHARDS = 0
_SALT_BLOCK = 1
_SALT_RESAMPLE = 2
_SALT_PIECES = 3
DEFAULT_INTERLEAVE = 12  # pieces per block: a batch of 32 holds (nearly) all 12 (see block_order)


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of shard number ``shard``; ``stop=None``: "to its end" (count unknown)."""

    shard: int
    start: int
    stop: int | None


@dataclass(frozen=True)
class Block:
    """Stream samples (one run, or interleaved pieces) shuffled, read and shipped as one unit.

    ``index`` numbers blocks within the rank's epoch, ``position`` is the rank-local index of its first
    (kept) sample, ``seed_key`` is the global identity its random draws (shuffle, window offsets) are
    seeded from. ``keep`` narrows what it yields (elastic resumption, mixing) without changing those draws.
    """

    index: int
    position: int
    segments: tuple[Segment, ...]
    seed_key: tuple[int, ...]
    keep: tuple[int, int] | None = None  # output positions kept (after the shuffle); None: all of them
    pieces: tuple[int, ...] = ()  # sizes of the interleaved pieces, in read order (see block_order)

    @property
    def known_size(self) -> int | None:
        """Samples in the block, or None when a segment runs to the end of a shard of unknown size."""
        if any(seg.stop is None for seg in self.segments):
            return None
        return sum(seg.stop - seg.start for seg in self.segments)  # type: ignore[operator]

    def kept(self, size: int) -> int:
        """How many samples the block yields (of ``size`` read)."""
        lo, hi = self.keep if self.keep is not None else (0, size)
        return hi - lo


def kept_range(block: Block, size: int, start: int = 0, limit: int | None = None) -> tuple[int, int]:
    """Output positions ``[lo, hi)`` of a block of ``size`` samples to yield: its ``keep`` range less those
    before rank position ``start`` (resumption) or at and past ``limit`` (an epoch length).

    A block's ``position`` is the rank position of its first kept sample; blocks of unknown position
    (``-1``: unknown shard sizes) keep all."""
    lo, hi = block.keep if block.keep is not None else (0, size)
    if block.position < 0:
        return lo, hi
    base = lo
    lo += max(0, start - block.position)
    if limit is not None:
        hi = min(hi, base + limit - block.position)
    return lo, max(lo, hi)


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


def segments_of_range(
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


def _rank_pieces(
    count: int, block_size: int, interleave: int, key: tuple[int, ...]
) -> list[list[tuple[int, int]]]:
    """Per block, its pieces ``[lo, hi)`` of rank positions: one of ``block_size`` consecutive ones
    (``interleave`` <= 1), or ``interleave`` pieces of ``block_size // interleave`` drawn from a permutation
    of all of them (in position order within the block: reads go forward, the block is shuffled anyway)."""
    if interleave <= 1:
        return [[(lo, min(lo + block_size, count))] for lo in range(0, count, block_size)]
    piece = max(1, block_size // interleave)
    per_block = block_size // piece
    perm = piece_order(-(-count // piece), key)
    return [
        [(p * piece, min((p + 1) * piece, count)) for p in np.sort(perm[first : first + per_block]).tolist()]
        for first in range(0, len(perm), per_block)
    ]


def piece_order(n_pieces: int, key: tuple[int, ...]) -> NDArray[np.int64]:
    """The permutation of a rank's pieces in an exact epoch; ``key``: :func:`piece_key`."""
    return np.random.default_rng(key).permutation(n_pieces).astype(np.int64)


def piece_key(seed: int, epoch: int, rank_start: int) -> tuple[int, ...]:
    """What the pieces of the rank whose slice begins at ``rank_start`` are permuted by."""
    return (seed, epoch, _SALT_PIECES, rank_start)


def _merged(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent pieces as one run (one read)."""
    runs: list[tuple[int, int]] = []
    for lo, hi in pieces:
        if runs and runs[-1][1] == lo:
            runs[-1] = (runs[-1][0], hi)
        else:
            runs.append((lo, hi))
    return runs


def _plain_blocks(
    sizes: NDArray[np.int64],
    *,
    seed: int,
    epoch: int,
    world: World,
    shuffle: bool,
    block_size: int,
    interleave: int,
) -> list[Block]:
    """Every block of this rank's exact epoch (no resumption, no history)."""
    order = shard_order(len(sizes), seed=seed, epoch=epoch, shuffle=shuffle)
    rank_start, count, _ = rank_share(int(sizes.sum()), world)
    streamed = sizes[order]
    ends = np.cumsum(streamed)
    k = interleave if shuffle else 1
    blocks, position = [], 0
    for index, pieces in enumerate(_rank_pieces(count, block_size, k, piece_key(seed, epoch, rank_start))):
        segs = [
            Segment(int(order[seg.shard]), seg.start, seg.stop)
            for lo, hi in _merged(pieces)
            for seg in segments_of_range(streamed, ends, rank_start + lo, rank_start + hi)
        ]
        piece_sizes = tuple(hi - lo for lo, hi in pieces) if len(pieces) > 1 else ()
        seed_key = (seed, epoch, _SALT_BLOCK, rank_start + position)
        blocks.append(Block(index, position, tuple(segs), seed_key, pieces=piece_sizes))
        position += sum(piece_sizes) if piece_sizes else pieces[0][1] - pieces[0][0]
    return blocks


def narrowed(block: Block, lo: int, hi: int | None = None) -> Block | None:
    """The block cut to the samples it yields at rank positions ``[lo, hi)`` (None when none are left):
    same reads, shuffle and windows, a narrower ``keep``."""
    first, last = kept_range(block, block.known_size, lo, hi)  # type: ignore[arg-type]
    if last <= first:
        return None
    position = max(block.position, lo)
    return Block(block.index, position, block.segments, block.seed_key, (first, last), block.pieces)


def _left_after(blocks: Sequence[Block], read: int) -> list[Block]:
    """The blocks of a rank that had yielded ``read`` samples, narrowed to what they had left to yield."""
    return [part for part in (narrowed(block, read) for block in blocks) if part is not None]


def _split(units: Sequence[Block], world: World) -> list[Block]:
    """Rank ``world.rank``'s share of the samples ``units`` yield, one after another (an exact epoch's
    split: equal shares, the last padded by repeating the first samples)."""
    sizes = np.asarray([u.kept(u.known_size) for u in units], dtype=np.int64)  # type: ignore[arg-type]
    rank_start, count, _ = rank_share(int(sizes.sum()), world)
    blocks: list[Block] = []
    for seg in segments_of_range(sizes, np.cumsum(sizes), rank_start, rank_start + count):
        unit = units[seg.shard]
        first = unit.keep[0]  # type: ignore[index]
        keep = (first + seg.start, first + seg.stop)  # type: ignore[operator]
        position = blocks[-1].position + blocks[-1].kept(0) if blocks else 0
        blocks.append(Block(len(blocks), position, unit.segments, unit.seed_key, keep, unit.pieces))
    return blocks


def exact_blocks(
    shard_sizes: Sequence[int],
    *,
    seed: int,
    epoch: int,
    world: World,
    shuffle: bool,
    block_size: int,
    start: int = 0,
    interleave: int = 1,
    history: Sequence[tuple[int, int]] = (),
) -> list[Block]:
    """Blocks of this rank's exact epoch from sample ``start`` on (the first may begin before ``start``).

    ``interleave``: pieces per block (1: block-local order). ``history``: ``(world_size, samples read per
    rank)`` steps this epoch went through on other worlds before this one (elastic resumption)."""
    if block_size < 1:
        raise PipelineError(f"block size must be >= 1, got {block_size}")
    if interleave < 1:
        raise PipelineError(f"interleave must be >= 1, got {interleave}")
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    settings = dict(seed=seed, epoch=epoch, shuffle=shuffle, block_size=block_size, interleave=interleave)
    if not history:
        blocks = _plain_blocks(sizes, world=world, **settings)
    else:
        blocks = elastic_blocks(sizes, world=world, history=history, **settings)
    return [b for b in blocks if b.position + b.kept(b.known_size) > start]  # type: ignore[arg-type]


def elastic_blocks(
    shard_sizes: Sequence[int] | NDArray[np.int64],
    *,
    world: World,
    history: Sequence[tuple[int, int]],
    **settings,
) -> list[Block]:
    """Rank ``world.rank``'s blocks of the rest of an epoch that ran on other worlds first (see step 5)."""
    sizes = np.asarray(shard_sizes, dtype=np.int64)

    def plain(old: World) -> list[Block]:
        return _plain_blocks(sizes, world=old, **settings)

    return elastic_split(plain, world=world, history=history)


def elastic_split(
    blocks_of: Callable[[World], Sequence[Block]], *, world: World, history: Sequence[tuple[int, int]]
) -> list[Block]:
    """Rank ``world.rank``'s share of what the ranks of ``history``'s first world had left, carried through
    its steps (step 5); ``blocks_of(old_rank)`` gives an old rank's blocks of the epoch from its start."""
    old_world = int(history[0][0])
    ranks = [list(blocks_of(World(r, old_world))) for r in range(old_world)]
    for step, (size, read) in enumerate(history):
        size, read = int(size), int(read)
        if size != len(ranks):
            raise PipelineError(f"elastic history step {step} has world size {size}, expected {len(ranks)}")
        units = [unit for blocks in ranks for unit in _left_after(blocks, read)]
        if not units:
            return []  # the epoch was read to its end
        following = int(history[step + 1][0]) if step + 1 < len(history) else world.world_size
        ranks = [_split(units, World(r, following)) for r in range(following)]
    return ranks[world.rank]


def elastic_count(total: int, world_size: int, history: Sequence[tuple[int, int]]) -> int:
    """Samples per rank of an epoch of ``total`` samples on ``world_size`` ranks after the elastic
    ``history`` (without one: the plain exact share)."""
    left = total
    for step_world, read in history:
        per_rank = rank_share(left, World(0, int(step_world)))[1]
        if not 0 <= int(read) <= per_rank:
            raise PipelineError(f"elastic history: {read} samples read of a rank's {per_rank}")
        left = int(step_world) * (per_rank - int(read))
        if not left:
            return 0
    return rank_share(left, World(0, world_size))[1]


class _Draws:
    """An endless run of shards drawn with replacement (by ``rng``), read in order: ``take(n)`` gives the
    segments of its next ``n`` samples."""

    def __init__(self, rng: np.random.Generator, sizes: NDArray[np.int64]) -> None:
        self.rng, self.sizes = rng, sizes
        self.pending: list[Segment] = []  # drawn samples not yet taken
        self.pending_n = 0

    def take(self, n: int) -> list[Segment]:
        while self.pending_n < n:
            shard = int(self.rng.integers(len(self.sizes)))
            self.pending.append(Segment(shard, 0, int(self.sizes[shard])))
            self.pending_n += int(self.sizes[shard])
        segs: list[Segment] = []
        need = n
        while need:
            seg = self.pending[0]
            take = min(need, seg.stop - seg.start)  # type: ignore[operator]
            segs.append(Segment(seg.shard, seg.start, seg.start + take))
            if seg.start + take == seg.stop:
                self.pending.pop(0)
            else:
                self.pending[0] = Segment(seg.shard, seg.start + take, seg.stop)
            need -= take
        self.pending_n -= n
        return segs


def resampled_blocks(
    shard_sizes: Sequence[int | None],
    *,
    seed: int,
    epoch: int,
    world: World,
    block_size: int,
    start: int = 0,
    interleave: int = 1,
) -> Iterator[Block]:
    """Endless blocks of this rank's resampled stream (shards drawn with replacement) from ``start`` on.

    With known shard sizes the stream is cut into ``block_size`` blocks like an exact epoch; with
    ``interleave=k > 1``, ``k`` *lanes* draw shards each from their own generator and every block takes a
    piece of ``block_size // k`` samples from each lane (``k`` shards in flight, each read in order). With
    unknown sizes (a URL pattern without manifest) every drawn shard is one block, positioned by draw number.
    """
    if block_size < 1:
        raise PipelineError(f"block size must be >= 1, got {block_size}")
    n_shards = len(shard_sizes)
    if n_shards == 0:
        raise PipelineError("the source has no shards")
    base_key = (seed, epoch, _SALT_RESAMPLE, world.rank)
    rng = np.random.default_rng(base_key)
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
    if interleave <= 1:
        lanes, piece = [_Draws(rng, sizes)], block_size
    else:
        piece = max(1, block_size // interleave)
        count = block_size // piece
        lanes = [
            _Draws(np.random.default_rng((*base_key, _SALT_PIECES, lane)), sizes) for lane in range(count)
        ]
    size = piece * len(lanes)
    pieces = (piece,) * len(lanes) if len(lanes) > 1 else ()
    index = 0
    while True:
        segs = [seg for lane in lanes for seg in lane.take(piece)]
        lo = index * size
        if lo + size > start:
            yield Block(index, lo, tuple(segs), (*base_key, lo), pieces=pieces)
        index += 1


def block_rng(block: Block) -> np.random.Generator:
    """The generator for a block's shuffle and window draws: depends on the block's identity only."""
    return np.random.default_rng(block.seed_key)


def block_order(block: Block, n: int, *, shuffle: bool, rng: np.random.Generator) -> NDArray[np.int64]:
    """Emission order of a block's ``n`` samples (indices into its read order).

    A block of interleaved pieces is emitted *stratified*: each piece shuffled, and its ``j``-th sample
    (of ``s``) placed at ``(j + u) / s`` on a common clock (``u`` uniform per sample), so every piece is
    spread evenly over the block: any ``b`` consecutive samples hold about ``b / s`` of each piece, i.e. a
    batch holds every piece once it spans a few rounds (``b >= 2k`` for ``k`` equal pieces), not only the
    ones a uniform shuffle happens to draw. Other blocks (or one that lost samples to ``on_error``) get a
    uniform permutation."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    if len(block.pieces) < 2 or sum(block.pieces) != n:
        return rng.permutation(n).astype(np.int64)
    sizes = np.asarray(block.pieces, dtype=np.int64)
    piece_of = np.repeat(np.arange(len(sizes)), sizes)
    grouped = np.lexsort((rng.random(n), piece_of))  # read indices, piece by piece, shuffled within each
    within = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    clock = (within + rng.random(n)) / np.repeat(sizes, sizes)
    return grouped[np.argsort(clock, kind="stable")].astype(np.int64)


def worker_blocks(
    blocks: Iterator[Block] | Sequence[Block], worker: int, num_workers: int
) -> Iterator[Block]:
    """The blocks worker ``worker`` of ``num_workers`` reads: every ``num_workers``-th from the first one."""
    for i, block in enumerate(blocks):
        if i % num_workers == worker:
            yield block
