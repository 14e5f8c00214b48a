"""Format-dispatched reading for verify, info and preview (training reads through `pipelines`)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import h5py

from datagen.store.hdf5 import read_hdf5
from datagen.store.sample import Sample
from datagen.store.wds import VIDEO_FIELD, read_wds


def iter_samples(path: Path, fmt: str) -> Iterator[Sample]:
    return read_wds(path) if fmt == "wds" else read_hdf5(path)


def count_samples(path: Path, fmt: str) -> int:
    if fmt == "wds":
        with tarfile.open(path, mode="r") as tar:
            return sum(1 for m in tar if m.name.endswith("." + VIDEO_FIELD))
    with h5py.File(path, "r") as f:
        return len(f["key"])
