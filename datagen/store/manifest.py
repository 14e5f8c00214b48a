"""The store's index: what was generated, how, and which shard holds what, with hashes to verify it.

`manifest.json` is written last and atomically, so its presence means the store is complete. Its bytes are
canonical (sorted keys, no timestamps): the same job gives the same manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from datagen.store.atomic import atomic_path, file_sha256, write_json_atomic
from datagen.store.format import (
    MANIFEST,
    RECORD_KEYS,
    SCHEMA_VERSION,
    SEEDING,
    dataset_digest,
    load_manifest,
    shard_name,
    validate_manifest,
)
from datagen.store.hdf5 import write_hdf5
from datagen.store.readers import count_samples as count_shard_samples
from datagen.store.sample import Sample
from datagen.store.wds import write_wds

__all__ = ["MANIFEST", "load_manifest", "shard_name", "validate_manifest", "write_shard", "verify_store"]


def write_shard(folder: Path, name: str, fmt: str, samples: list[Sample], attrs: dict | None = None) -> dict:
    """Write one shard under a temporary name, fsync, rename; return its manifest entry."""
    final = Path(folder) / name
    with atomic_path(final) as tmp:
        if fmt == "wds":
            keys, sha256 = write_wds(tmp, samples)
        else:
            keys, sha256 = write_hdf5(tmp, samples, attrs)
    return shard_entry(name, fmt, keys, final.stat().st_size, sha256)


def shard_entry(name: str, fmt: str, keys: list[str], size: int, sha256: str) -> dict:
    """A shard's manifest entry."""
    return {
        "path": name,
        "format": fmt,
        "n_samples": len(keys),
        "first_key": keys[0] if keys else None,
        "last_key": keys[-1] if keys else None,
        "bytes": size,
        "sha256": sha256,
    }


def build_manifest(record: dict[str, Any], shards: list[dict], extra: dict | None = None) -> dict:
    """`record` holds RECORD_KEYS (what defines the content); `extra` adds summaries outside the digest."""
    shards = sorted(shards, key=lambda s: (s["format"], s["path"]))
    totals: dict[str, dict[str, int]] = {}
    for s in shards:
        t = totals.setdefault(s["format"], {"n_shards": 0, "n_samples": 0, "bytes": 0})
        t["n_shards"] += 1
        t["n_samples"] += s["n_samples"]
        t["bytes"] += s["bytes"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        **{k: record[k] for k in RECORD_KEYS},
        "seeding": SEEDING,
        "shards": shards,
        "totals": totals,
        "digest": dataset_digest(record, shards),
    }
    if extra:
        manifest.update(extra)
    return validate_manifest(manifest, "new manifest")  # what we write must pass what we read


def write_manifest(folder: Path, manifest: dict) -> None:
    write_json_atomic(Path(folder) / MANIFEST, manifest)


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def shard_mismatch(entry: dict, size: int | None, sha256: Callable[[], str]) -> str | None:
    """Why a shard of `size` bytes (None: missing) does not match its manifest entry, or None; `sha256()`
    (the shard's digest, the expensive part) is only asked for when the size matches. Folders and object
    stores check alike."""
    if size is None:
        return "missing"
    if size != entry["bytes"]:
        return f"size {size} != {entry['bytes']} in manifest"
    if sha256() != entry["sha256"]:
        return "sha256 mismatch (corrupt or modified)"
    return None


def file_mismatch(folder: Path, entry: dict) -> str | None:
    """Why the shard file in `folder` does not match its manifest entry (missing, size, sha256), or None."""
    p = Path(folder) / entry["path"]
    size = p.stat().st_size if p.exists() else None
    return shard_mismatch(entry, size, lambda: file_sha256(p))


def check_shard(folder: Path, entry: dict) -> Problem | None:
    """Does the shard file on disk match its manifest entry (size, sha256)?"""
    reason = file_mismatch(folder, entry)
    return None if reason is None else Problem(entry["path"], reason)


def verify_shards(
    manifest: dict, check: Callable[[dict], str | None], count: Callable[[dict], int] | None
) -> list[Problem]:
    """Every problem of a store: each shard's `check(entry)` (why it does not match, or None), then, where
    it matches and `count` is given, its sample count; and the dataset digest."""
    problems = []
    for entry in manifest["shards"]:
        reason = check(entry)
        if reason is None and count is not None:
            try:
                n = count(entry)
            except Exception as e:  # any decode failure is a finding, not a crash
                reason = f"unreadable: {e}"
            else:
                if n != entry["n_samples"]:
                    reason = f"{n} samples != {entry['n_samples']} in manifest"
        if reason:
            problems.append(Problem(entry["path"], reason))
    if dataset_digest(manifest, manifest["shards"]) != manifest["digest"]:
        problems.append(Problem(MANIFEST, "dataset digest does not match its content"))
    return problems


def verify_store(folder: Path, *, count_samples: bool = True, manifest: dict | None = None) -> list[Problem]:
    """Recompute hashes (and sample counts) of every shard; return every problem found."""
    folder = Path(folder)
    manifest = load_manifest(folder) if manifest is None else manifest

    def count(entry: dict) -> int:
        return count_shard_samples(folder / entry["path"], entry["format"])

    return verify_shards(manifest, partial(file_mismatch, folder), count if count_samples else None)
