"""How much a dataset checks its shards against the manifest before trusting their bytes (``verify=``).

- ``"none"``: nothing up front; a missing or short shard is found when it is read.
- ``"size"`` (default): one ``stat`` per local shard when the dataset is made, before any worker starts, so
  every rank sees the same shard list and a truncated or missing shard is named at once. Remote shards are
  not checked up front.
- ``"sha256"``: as ``"size"``, and each shard is hashed the first time a process reads it (each DataLoader
  worker hashes the shards it reads; a remote shard is downloaded once more for it) and refused, naming it,
  when the digest is not the manifest's (MosaicML streaming's ``validate_hash``, on every read path). Costs
  one extra read of the store per process; for stores from places you do not control (downloaded from
  strangers, shared scratch folders), where a shard of the right size can still hold other bytes.

A failed check goes to the dataset's ``on_error`` handler like any bad shard.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

from pipelines.errors import PipelineError, ShardError
from pipelines.handlers import Handler
from pipelines.remote import hash_location
from pipelines.sources import ShardRef, SourceInfo

VERIFY_MODES = ("none", "size", "sha256")

# Per process: shard version -> None (its digest matched) or why it did not. A local shard's version is its
# path, expected digest, size and mtime, so a file changed after its check is hashed again.
_DIGESTS: dict[tuple, str | None] = {}


def check_verify_mode(verify: str, info: SourceInfo) -> None:
    if verify not in VERIFY_MODES:
        raise PipelineError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if verify == "sha256" and any(shard.sha256 is None for shard in info.shards):
        raise PipelineError(
            "verify='sha256' needs each shard's sha256 from a manifest; this source has none "
            "(read the store folder or its manifest.json instead of a shard pattern)"
        )


def _stat(shard: ShardRef, path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise ShardError(shard.url, "missing") from None
    except OSError as exn:
        raise ShardError(shard.url, f"cannot read: {exn.strerror or exn}") from None


def _check_size(shard: ShardRef) -> None:
    path = shard.local_path
    if path is None:
        return
    size = _stat(shard, path).st_size
    if shard.nbytes is not None and size != shard.nbytes:
        raise ShardError(
            shard.url, f"{size} bytes on disk but the manifest says {shard.nbytes} (truncated or changed)"
        )


def drop_bad_shards(info: SourceInfo, handler: Handler, verify: str) -> tuple[SourceInfo, int]:
    """The shards that pass the up-front check (raise or drop the others, as ``handler`` says), and the
    number of samples dropped with them (0 for a dropped shard whose count is unknown)."""
    if verify == "none":
        return info, 0
    kept, dropped = [], 0
    for shard in info.shards:
        try:
            _check_size(shard)
        except ShardError as exn:
            if handler(exn):
                dropped += shard.n_samples or 0
                continue
        kept.append(shard)
    if not kept:
        raise PipelineError("no readable shards left")
    return replace(info, shards=tuple(kept)), dropped


def _version(shard: ShardRef) -> tuple:
    path = shard.local_path
    if path is None:
        return (shard.url, shard.sha256)
    stat = _stat(shard, path)
    return (shard.url, shard.sha256, stat.st_size, stat.st_mtime_ns)


def _mismatch(shard: ShardRef) -> str | None:
    """Hash the shard; why it is refused, or None. Read failures raise (and are not remembered)."""
    digest = hashlib.sha256()
    try:
        hash_location(shard.url, digest)
    except FileNotFoundError:
        raise ShardError(shard.url, "missing") from None
    except OSError as exn:
        raise ShardError(shard.url, f"cannot read: {exn.strerror or exn}") from None
    got = digest.hexdigest()
    if got == shard.sha256:
        return None
    return f"sha256 {got[:16]}... is not the manifest's {str(shard.sha256)[:16]}... (corrupt or changed)"


def check_digest(shard: ShardRef) -> None:
    """Raise :class:`ShardError` unless the shard's bytes hash to the manifest's sha256 (once per process and
    shard version; later calls cost a ``stat`` for a local shard)."""
    version = _version(shard)
    if version in _DIGESTS:
        reason = _DIGESTS[version]
    else:
        reason = _DIGESTS[version] = _mismatch(shard)
    if reason is not None:
        raise ShardError(shard.url, reason)
