"""Turn a ``source`` (store folder, manifest.json, shard URL pattern) into the list of shards to read.

Only the manifest's generic fields are used (shards, counts, keys, bytes, sample shape): the loader never
needs to know which simulator made a store.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls

from pipelines.errors import PipelineError, ShardError
from pipelines.handlers import Handler

FORMAT_OF_SUFFIX = {".tar": "wds", ".h5": "hdf5", ".hdf5": "hdf5"}
FORMATS = ("wds", "hdf5")


@dataclass(frozen=True)
class ShardRef:
    """One shard: what to open (``url``: local path or anything webdataset's ``gopen`` opens), its record."""

    url: str
    fmt: str
    n_samples: int | None = None
    first_key: str | None = None
    last_key: str | None = None
    nbytes: int | None = None

    @property
    def local_path(self) -> str | None:
        """The file path when the shard is a local file (random access possible), else None."""
        if self.url.startswith("file:"):
            return urlparse(self.url).path
        if "://" in self.url or self.url.startswith("pipe:"):
            return None
        return self.url


@dataclass(frozen=True)
class SourceInfo:
    """The shards of one format to read, and the sample shape (T, H, W, C) when the manifest gives it."""

    shards: tuple[ShardRef, ...]
    sample_shape: tuple[int, ...] | None
    manifest: dict | None


def _is_url(text: str) -> bool:
    return "://" in text or text.startswith("pipe:")


def _read_manifest(location: str) -> dict:
    try:
        with gopen(location) as stream:
            return json.loads(stream.read().decode("utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"no manifest at {location}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise PipelineError(f"cannot read manifest {location}: {exn}") from None


def _format_of_url(url: str) -> str | None:
    last = url.split()[-1] if url.startswith("pipe:") else urlparse(url).path or url
    return FORMAT_OF_SUFFIX.get(posixpath.splitext(last)[1].lower())


def _pick_format(available: Sequence[str], fmt: str, where: str) -> str:
    if fmt == "auto":
        if not available:
            raise PipelineError(f"{where}: no shards of a known format (.tar or .h5)")
        return "wds" if "wds" in available else available[0]
    if fmt not in FORMATS:
        raise PipelineError(f"format must be 'auto', 'wds' or 'hdf5', got {fmt!r}")
    if fmt not in available:
        raise PipelineError(
            f"{where}: no {fmt} shards (it has {', '.join(sorted(set(available))) or 'none'})"
        )
    return fmt


def _from_manifest(location: str, fmt: str) -> SourceInfo:
    manifest = _read_manifest(location)
    base = location.rsplit("/", 1)[0] if "/" in location else "."
    try:
        entries = manifest["shards"]
        available = [entry["format"] for entry in entries]
        chosen = _pick_format(available, fmt, location)
        shards = tuple(
            ShardRef(
                url=f"{base}/{entry['path']}",
                fmt=chosen,
                n_samples=int(entry["n_samples"]),
                first_key=entry.get("first_key"),
                last_key=entry.get("last_key"),
                nbytes=entry.get("bytes"),
            )
            for entry in entries
            if entry["format"] == chosen
        )
        shape = manifest.get("sample", {}).get("video", {}).get("shape")
    except (KeyError, TypeError, ValueError) as exn:
        raise PipelineError(f"manifest {location} lacks a field the loader needs: {exn}") from None
    return SourceInfo(shards, tuple(int(s) for s in shape) if shape else None, manifest)


def _from_urls(urls: Sequence[str], fmt: str) -> SourceInfo:
    if not urls:
        raise PipelineError("the shard URL pattern expands to no shards")
    formats = [_format_of_url(url) for url in urls]
    if fmt == "auto":
        if None in formats or len(set(formats)) != 1:
            raise PipelineError("cannot tell the shard format from the URLs; pass format='wds' or 'hdf5'")
        fmt = formats[0]  # type: ignore[assignment]
    elif fmt not in FORMATS:
        raise PipelineError(f"format must be 'auto', 'wds' or 'hdf5', got {fmt!r}")
    return SourceInfo(tuple(ShardRef(url=url, fmt=fmt) for url in urls), None, None)


def resolve_source(source: str | os.PathLike | Sequence[str], *, fmt: str = "auto") -> SourceInfo:
    """Shards (of one format) and sample shape for a store folder, a manifest.json or a shard URL pattern."""
    if isinstance(source, (list, tuple)):
        return _from_urls([str(url) for url in source], fmt)
    text = os.fspath(source)  # type: ignore[arg-type]
    if not _is_url(text) and Path(text).is_dir():
        location = str(Path(text).resolve() / "manifest.json")
        if not Path(location).exists():
            raise PipelineError(
                f"{text}: no manifest.json (pass a shard URL pattern to read shards without one)"
            )
        return _from_manifest(location, fmt)
    if text.endswith("manifest.json"):
        return _from_manifest(text if _is_url(text) else str(Path(text).resolve()), fmt)
    return _from_urls(expand_urls(text), fmt)


def check_local_shards(info: SourceInfo, handler: Handler) -> SourceInfo:
    """Drop-or-raise for local shards that are missing or whose size disagrees with the manifest.

    Cheap (one ``stat`` per shard) and done before any worker starts, so every rank sees the same shard list
    and a truncated shard is named at once instead of deep inside a worker.
    """
    kept = []
    for shard in info.shards:
        path = shard.local_path
        try:
            if path is not None:
                if not os.path.exists(path):
                    raise ShardError(shard.url, "missing")
                size = os.path.getsize(path)
                if shard.nbytes is not None and size != shard.nbytes:
                    raise ShardError(
                        shard.url,
                        f"{size} bytes on disk but the manifest says {shard.nbytes} (truncated or changed)",
                    )
        except ShardError as exn:
            if handler(exn):
                continue
        kept.append(shard)
    if not kept:
        raise PipelineError("no readable shards left")
    return replace(info, shards=tuple(kept))
