"""`mix`: several stores drawn in fixed proportions, as one dataset for :func:`pipelines.loader.make_loader`.

What an epoch of a mix is (per rank; every rank the same counts, so DDP ranks step in lock-step):

- ``M`` samples (``epoch_size``; default: the sources' per-rank lengths summed), of which source ``i`` gives
  ``n_i``: ``M * w_i / sum(w)`` rounded by largest remainder (ties to the lower index), the same every epoch.
- Source ``i``'s samples are read from its own endless stream of *exact* epochs (its epoch 0, then 1, ...,
  each its own shuffled order on this rank): mix epoch ``e`` takes positions ``[e * n_i, (e + 1) * n_i)``
  of that stream. A source given more than its length (upsampled) goes through its epochs faster than the
  mix, one given less (downsampled) continues in the next mix epoch where it stopped; either way each of a
  source's epochs yields each of its samples exactly once (its padding aside), with the same windows as
  the source alone would.
- The mix epoch is cut into blocks of about ``block_size`` samples, block ``j`` taking every source's next
  share (``x * n_i // M`` at its bounds), so each block holds the sources in proportion; a block's rows are
  emitted stratified over its parts (:func:`pipelines.order.block_order`), so a batch does too.

Everything is a pure function of (mix seed, the sources' seeds, epoch, rank, world): ``set_epoch`` is the
only state, and the loader's ``state_dict`` resumes mid-epoch exactly. Each batch gets ``"source"``: an
int64 tensor of source indices (positions in the list given to :func:`mix`).

Cost: a block's parts are read into a scratch buffer and copied once into the output in the emitted order
(one more copy of each clip than a single store's fast path).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pipelines.dataset import Allocator, VideoDataset, alloc_block
from pipelines.errors import PipelineError
from pipelines.order import Block, Segment, block_order, narrowed
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


@dataclass(frozen=True)
class MixBlock:
    """Parts ``(source, narrowed source block)`` emitted together; ``position``: rank position in the mix
    epoch of its first sample; ``seed_key``: the identity its emission order is drawn from."""

    index: int
    position: int
    parts: tuple[tuple[int, Block], ...]
    seed_key: tuple[int, ...]
    shard_offsets: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(part.kept(part.known_size) for _, part in self.parts)  # type: ignore[arg-type]

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The parts' shard runs, numbered in the mix's shard list (for error messages)."""
        return tuple(
            Segment(self.shard_offsets[i] + seg.shard, seg.start, seg.stop)
            for i, part in self.parts
            for seg in part.segments
        )


class MixedDataset:
    """Sources drawn in fixed proportions; see the module docstring for what an epoch is. Made by
    :func:`mix`; iterate it through :func:`pipelines.loader.make_loader`."""

    epoch_mode = "mix"  # no elastic resumption: a state of another world size is refused
    elastic = None

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
        first = sources[0]

        def settings(src: VideoDataset) -> tuple:
            return (src.world, src.item_shape(), src.mode, src.with_meta, src.fields)

        for i, src in enumerate(sources):
            if src.epoch_mode != "exact":
                raise PipelineError(f"source {i}: mixing reads sources' exact epochs (epoch_mode='exact')")
            if settings(src) != settings(first):
                raise PipelineError(
                    f"source {i} differs from source 0 in world, sample shape, mode, with_meta or fields: "
                    f"{settings(src)} vs {settings(first)}"
                )
        if first.item_shape() is None:
            raise PipelineError("mixing needs sources with a manifest (the sample shape known up front)")
        self.sources = list(sources)
        self.world: World = first.world
        self.mode, self.with_meta = first.mode, first.with_meta
        self.fields = (*first.fields, SOURCE_FIELD)
        self.seed, self.shuffle, self.epoch = int(seed), shuffle, 0
        self.interleave = first.interleave
        self.lengths = [len(src) for src in sources]
        self.num_samples = int(sum(self.lengths) if epoch_size is None else epoch_size)
        if self.num_samples < 1:
            raise PipelineError(f"epoch_size must be >= 1, got {epoch_size}")
        self.counts = apportion(self.num_samples, weights)
        self.weights = [float(w) for w in weights]
        self.part_size = int(block_size or min(src.block_size for src in sources))
        # what the loader sizes ring slots by: a block may hold up to one more sample per source
        self.block_size = self.part_size + len(sources)
        self.shards = [shard for src in sources for shard in src.shards]
        offsets = np.cumsum([0] + [len(src.shards) for src in sources])
        self._offsets = tuple(int(o) for o in offsets[:-1])
        self._scratch: NDArray[np.uint8] | None = None

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
        return ()

    def epoch_samples(self, epoch: int | None = None) -> int:
        return self.num_samples

    def item_shape(self) -> tuple[int, ...] | None:
        return self.sources[0].item_shape()

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_scratch": None}

    # ------------------------------------------------------------ order
    def source_ranges(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        """Per source, the ``(source epoch, first, stop)`` rank-position runs mix epoch ``epoch`` reads."""
        out = []
        for n, length in zip(self.counts, self.lengths, strict=True):
            lo, hi, runs = epoch * n, (epoch + 1) * n, []
            while lo < hi:
                e, p = divmod(lo, length)
                take = min(hi - lo, length - p)
                runs.append((e, p, p + take))
                lo += take
            out.append(runs)
        return out

    def blocks(self, start: int = 0, epoch: int | None = None) -> Iterator[MixBlock]:
        """This rank's blocks of mix epoch ``epoch`` from sample ``start`` on."""
        epoch = self.epoch if epoch is None else epoch
        cache: dict[tuple[int, int], tuple[list[Block], list[int]]] = {}
        ranges = self.source_ranges(epoch)

        def source_blocks(i: int, e: int) -> tuple[list[Block], list[int]]:
            if (i, e) not in cache:
                blocks = list(self.sources[i].blocks(0, e))
                cache[(i, e)] = blocks, [b.position for b in blocks]
            return cache[(i, e)]

        def parts_of(i: int, a: int, b: int) -> list[tuple[int, Block]]:
            """Source ``i``'s samples ``[a, b)`` of its share of this mix epoch, as narrowed blocks."""
            parts, at = [], 0
            for e, p0, p1 in ranges[i]:
                lo, hi = max(p0, p0 + a - at), min(p1, p0 + b - at)
                at += p1 - p0
                if lo >= hi:
                    continue
                blocks, starts = source_blocks(i, e)
                for k in range(max(0, bisect.bisect_right(starts, lo) - 1), len(blocks)):
                    if blocks[k].position >= hi:
                        break
                    part = narrowed(blocks[k], lo, hi)
                    if part is not None:
                        parts.append((i, part))
            return parts

        total, position = self.num_samples, 0
        for index, x in enumerate(range(0, total, self.part_size)):
            y = min(x + self.part_size, total)
            parts = [
                part
                for i, n in enumerate(self.counts)
                for part in parts_of(i, x * n // total, y * n // total)
            ]
            key = (self.seed, epoch, _SALT_MIX, self.world.rank, index)
            block = MixBlock(index, position, tuple(parts), key, self._offsets)
            size = block.size
            if position + size > start:
                yield block
            position += size

    # ------------------------------------------------------------ reading
    def _scratch_rows(self, n: int, sample: tuple[int, ...]) -> NDArray[np.uint8]:
        """A per-process buffer for a block's parts (reused: fresh pages cost more than the read)."""
        shape = (n, *sample)
        if self._scratch is None or self._scratch.size < int(np.prod(shape)):
            self._scratch = np.empty(int(np.prod(shape)), dtype=np.uint8)
        return self._scratch[: int(np.prod(shape))].reshape(shape)

    def read_block(self, block: MixBlock, start: int = 0, alloc: Allocator | None = None) -> dict[str, Any]:
        """The block's parts read by their sources, emitted stratified over the parts, from ``start`` on:
        ``{"block", "key", "video", "meta", "skipped", "fields"}`` (``fields["source"]``: source indices)."""
        alloc = alloc or alloc_block
        sample = self.item_shape()
        scratch = self._scratch_rows(block.size, sample)  # type: ignore[arg-type]
        keys: list[str] = []
        metas: list[Any] = []
        fields: dict[str, list[torch.Tensor]] = {name: [] for name in self.fields[:-1]}
        counts, sources, skipped, row = [], [], 0, 0
        for i, part in block.parts:

            def into_scratch(shape: tuple[int, ...], at: int = row):
                view = scratch[at : at + shape[0]]
                return torch.from_numpy(view), view

            item = self.sources[i].read_block(part, 0, alloc=into_scratch)
            skipped += item["skipped"]
            n = len(item["key"])
            if n and item["video"] is not None:
                got = item["video"].numpy().reshape(n, *sample)
                if got.ctypes.data != scratch[row:].ctypes.data:  # a part that lost samples: compacted copy
                    scratch[row : row + n] = got
            keys += item["key"]
            metas += item["meta"] or []
            for name in fields:
                fields[name].append(item["fields"][name])
            counts.append(n)
            sources.append(i)
            row += n
        lo = max(0, start - block.position)
        order = self._order(block, counts)[lo:]
        video, out = alloc((len(order), *sample))  # type: ignore[misc]
        np.take(scratch[:row], order, axis=0, out=out)
        picked = torch.from_numpy(order)
        extra = {name: torch.cat(parts)[picked] for name, parts in fields.items() if parts}
        extra[SOURCE_FIELD] = torch.from_numpy(np.repeat(sources, counts).astype(np.int64)[order])
        if self.mode == "frame":
            video = video[:, 0]
        return {
            "block": block.index,
            "key": [keys[j] for j in order.tolist()],
            "video": video if len(order) else None,
            "meta": [metas[j] for j in order.tolist()] if self.with_meta else None,
            "skipped": skipped,
            "fields": extra,
        }

    def _order(self, block: MixBlock, counts: list[int]) -> NDArray[np.int64]:
        """Emission order of the block's rows (its parts one after another): stratified over the parts."""
        n = sum(counts)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        sizes = tuple(c for c in counts if c)
        rng = np.random.default_rng(block.seed_key)
        return block_order(Block(0, 0, (), (), pieces=sizes), n, shuffle=True, rng=rng)


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

    Sources must share world, sample shape, mode, ``with_meta`` and fields, and use exact epochs; each keeps
    its own seed and settings. ``epoch_size``: samples per rank and mix epoch (default: the sources' lengths
    summed); ``block_size``: samples per mixed block (default: the smallest source block size). What an
    epoch is: :mod:`pipelines.mix`."""
    return MixedDataset(
        sources, weights, seed=seed, epoch_size=epoch_size, block_size=block_size, shuffle=shuffle
    )
