"""HDF5 shards: one file per shard, one clip per chunk, ground truth as JSON strings.

Readable by plain h5py: `f["video"][i]` is clip i as uint8 (T, H, W, C), `f["key"][i]` its key and
`json.loads(f["meta"][i])` its ground truth. No compression: clips are small and reads stay cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np

from datagen.store.sample import Sample
from datagen.store.wds import meta_bytes

STR = h5py.string_dtype("utf-8")


def write_hdf5(path: Path, samples: Iterable[Sample], attrs: dict | None = None) -> list[str]:
    """Write `samples` to `path`; `attrs` (JSON-able) become file attributes. Returns the keys written."""
    samples = list(samples)
    keys = [s.key for s in samples]
    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        if samples:
            shape = samples[0].video.shape
            video = f.create_dataset(
                "video", shape=(len(samples), *shape), dtype=np.uint8, chunks=(1, *shape), track_times=False
            )
            for s in samples:
                if s.video.shape != shape:
                    raise ValueError(f"sample {s.key}: shape {s.video.shape} differs from {shape}")
            video[...] = np.stack([s.video for s in samples])
        else:
            f.create_dataset("video", shape=(0,), dtype=np.uint8, track_times=False)
        f.create_dataset("key", data=np.array(keys, dtype=object), dtype=STR, track_times=False)
        metas = [meta_bytes(s.meta).decode() for s in samples]
        f.create_dataset("meta", data=np.array(metas, dtype=object), dtype=STR, track_times=False)
        for name, value in (attrs or {}).items():
            plain = isinstance(value, (int, float, str))
            f.attrs[name] = value if plain else json.dumps(value, sort_keys=True)
    return keys


def read_hdf5(path: Path) -> Iterator[Sample]:
    with h5py.File(path, "r") as f:
        keys = f["key"].asstr()[:]
        metas = f["meta"].asstr()[:]
        for i, key in enumerate(keys):
            yield Sample(str(key), f["video"][i], json.loads(metas[i]))
