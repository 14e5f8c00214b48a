"""The public Python API of `datagen`, for code outside it (the recipes, users' scripts, notebooks).

What is here is kept stable; everything else in `datagen` is an implementation detail. The store's format
(reading and validating manifests, shard names) is `datagen.store.format`; atomic file writes are
`datagen.store.atomic`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datagen.cache import cache_dir
from datagen.errors import DatagenError
from datagen.store.format import load_manifest, validate_manifest

__all__ = [
    "DatagenError",
    "cache_dir",
    "generator_version",
    "load_digits",
    "load_manifest",
    "make_store",
    "validate_manifest",
]


def load_digits(spec: Mapping[str, Any]) -> Any:
    """The MNIST digits a descriptor names (``{"kind": "builtin", "split": "train"}``, or a store's manifest
    ``params["source"]``), checked against its sha256 when it has one: a `DigitSet` (images, labels)."""
    from datagen.sources.mnist import load_digits as load

    return load(dict(spec))


def generator_version(name: str) -> str:
    """The version a generator ("balls", "mnist") writes into its manifests: its output changes with it."""
    from datagen.generators import get_generator

    return get_generator(name).version


def make_store(
    out: str | Path,
    generator: str,
    params: Mapping[str, Any],
    *,
    n: int,
    seed: int,
    shard_size: int = 1000,
    formats: Sequence[str] = ("wds",),
    workers: int = 0,
    resume: bool = False,
) -> dict[str, Any]:
    """Generate `n` clips of `generator` (e.g. "balls", "mnist") into the store folder `out`; the manifest.

    What `datagen balls|mnist --out OUT` does, from Python: the same bytes for the same arguments, `workers`
    local Dask processes (0: in this process). An existing store of this very job is checked and reused.
    """
    from datagen.jobs import generation_job, run_store_job  # Dask and the simulators only when used

    job = generation_job(
        Path(out), generator, dict(params), seed=seed, n=n, shard_size=shard_size, formats=list(formats)
    )
    return run_store_job(job, resume=resume, workers=workers)
