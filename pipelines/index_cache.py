"""Per-process caches of shard indexes (tar member offsets, HDF5 chunk offsets), bounded by samples indexed.

A worker visits every shard of an epoch (its blocks span the whole shuffled stream), so a cache that holds
fewer shards than the store misses on every visit: with 64 entries and 128 shards each epoch re-scanned every
tar's headers, and loader throughput fell 4-5x once a store passed 64 shards. The bound is on what an index
costs (about 100 bytes per sample: its key and offsets), so any store up to ``max_samples`` samples stays
indexed after its first epoch, however it is sharded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

# About 100 MB of indexes per process at the most.
MAX_INDEXED_SAMPLES = 1 << 20


class IndexCache(Generic[V]):
    """Least-recently-used map, entries weighed by the samples they index; the newest entry always stays."""

    def __init__(self, size_of: Callable[[V], int], max_samples: int = MAX_INDEXED_SAMPLES) -> None:
        self.size_of, self.max_samples = size_of, max_samples
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._samples = 0

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: V) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._samples -= old[1]
        weight = max(1, int(self.size_of(value)))
        self._entries[key] = (value, weight)
        self._samples += weight
        while self._samples > self.max_samples and len(self._entries) > 1:
            self._samples -= self._entries.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._samples = 0
