"""The store's index: what was generated, how, and which shard holds what, with hashes to verify it.

`manifest.json` is written last and atomically, so its presence means the store is complete. Its bytes are
canonical (sorted keys, no timestamps): the same job gives the same manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def check_shard(folder: Path, entry: dict) -> Problem | None:
    """Does the shard file on disk match its manifest entry (size, sha256)?"""
    p = Path(folder) / entry["path"]
    if not p.exists():
        return Problem(entry["path"], "missing")
    size = p.stat().st_size
    if size != entry["bytes"]:
        return Problem(entry["path"], f"size {size} != {entry['bytes']} in manifest")
    if file_sha256(p) != entry["sha256"]:
        return Problem(entry["path"], "sha256 mismatch (corrupt or modified)")
    return None


def verify_store(folder: Path, *, count_samples: bool = True, manifest: dict | None = None) -> list[Problem]:
    """Recompute hashes (and sample counts) of every shard; return every problem found."""
    folder = Path(folder)
    manifest = load_manifest(folder) if manifest is None else manifest
    problems = []
    for entry in manifest["shards"]:
        problem = check_shard(folder, entry)
        if problem is None and count_samples:
            try:
                n = count_shard_samples(folder / entry["path"], entry["format"])
            except Exception as e:  # any decode failure is a finding, not a crash
                problem = Problem(entry["path"], f"unreadable: {e}")
            else:
                if n != entry["n_samples"]:
                    problem = Problem(entry["path"], f"{n} samples != {entry['n_samples']} in manifest")
        if problem:
            problems.append(problem)
    if dataset_digest(manifest, manifest["shards"]) != manifest["digest"]:
        problems.append(Problem("manifest.json", "dataset digest does not match its content"))
    return problems
