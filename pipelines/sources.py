"""Turn a ``source`` (store folder, manifest.json, shard URL pattern) into the list of shards to read.

Only the manifest's generic fields are used (shards, counts, keys, bytes, sha256, sample shape): the loader
never needs to know which simulator made a store.

A manifest is data from wherever the store came from, never instructions. It is read (local file, ``file:``,
``http(s)://`` or an fsspec URL; see :mod:`pipelines.remote`, none of them a shell) and checked by the store
format's one validator (:func:`datagen.store.format.read_manifest_text`) before anything in it is used; an
invalid one is a :class:`PipelineError` of one line naming the manifest. A shard's location is always
``<the manifest's folder>/<plain shard file name>``: a path, URL, ``pipe:`` or shell text in a manifest
never becomes something to open. A ``pipe:`` manifest source is refused: its shards would be shell
commands built from the manifest's text. ``pipe:`` shard patterns (the user's own commands) stay.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse
from urllib.request import url2pathname

from webdataset.shardlists import expand_urls

from datagen.store.format import MANIFEST, ManifestError, is_shard_name, read_manifest_text
from pipelines.errors import PipelineError
from pipelines.remote import read_location, scheme_of

FORMAT_OF_SUFFIX = {".tar": "wds", ".h5": "hdf5", ".hdf5": "hdf5"}
FORMATS = ("wds", "hdf5")
# A manifest lists ~250 bytes per shard: 1 GiB is four million shards; past it a source is not a manifest.
MAX_MANIFEST_BYTES = 1 << 30


@dataclass(frozen=True)
class ShardRef:
    """One shard: what to open (``url``: local path or URL, see :mod:`pipelines.remote`), its record."""

    url: str
    fmt: str
    n_samples: int | None = None
    first_key: str | None = None
    last_key: str | None = None
    nbytes: int | None = None
    sha256: str | None = None

    @property
    def local_path(self) -> str | None:
        """The file path when the shard is a local file (random access possible), else None."""
        scheme = scheme_of(self.url)
        if scheme == "file":
            return url2pathname(urlparse(self.url).path)
        return self.url if scheme == "" else None


@dataclass(frozen=True)
class SourceInfo:
    """The shards of one format to read, and the sample shape (T, H, W, C) when the manifest gives it."""

    shards: tuple[ShardRef, ...]
    sample_shape: tuple[int, ...] | None
    manifest: dict | None


def _read_manifest(location: str) -> dict:
    """The validated manifest at ``location``, or a one-line PipelineError naming it."""
    try:
        data = read_location(location, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise PipelineError(f"no manifest at {location}") from None
    except OSError as exn:
        raise PipelineError(f"cannot read manifest {location}: {exn.strerror or exn}") from None
    try:
        return read_manifest_text(data, location)
    except ManifestError as exn:
        raise PipelineError(str(exn).splitlines()[0]) from None


def _manifest_folder(location: str) -> str:
    """Where a manifest's shards are: its folder (local path, or URL without query or fragment)."""
    if scheme_of(location) == "":
        return str(Path(location).parent)
    parts = urlparse(location)
    return urlunparse((parts.scheme, parts.netloc, posixpath.dirname(parts.path).rstrip("/"), "", "", ""))


def _shard_location(folder: str, name: str, manifest: str) -> str:
    """``<folder>/<name>``: the one place text from a manifest becomes a location, so checked here too."""
    if not is_shard_name(name):
        raise PipelineError(f"{manifest}: shard path {name!r:.80} is not a plain shard file name")
    return f"{folder}/{name}"


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
    folder = _manifest_folder(location)
    entries = manifest["shards"]
    chosen = _pick_format([entry["format"] for entry in entries], fmt, location)
    shards = tuple(
        ShardRef(
            url=_shard_location(folder, entry["path"], location),
            fmt=chosen,
            n_samples=entry["n_samples"],
            first_key=entry["first_key"],
            last_key=entry["last_key"],
            nbytes=entry["bytes"],
            sha256=entry["sha256"],
        )
        for entry in entries
        if entry["format"] == chosen
    )
    shape = tuple(manifest["sample"]["video"]["shape"])
    return SourceInfo(shards, shape, manifest)


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
    """Shards (of one format) and sample shape for a store folder (path or URL: ``s3://bucket/store``), a
    manifest.json (path or URL) or a shard URL pattern."""
    if isinstance(source, (list, tuple)):
        return _from_urls([str(url) for url in source], fmt)
    text = os.fspath(source)  # type: ignore[arg-type]
    scheme = scheme_of(text)
    if scheme == "pipe":
        if MANIFEST in text:
            raise PipelineError(
                f"{text}: a pipe: command cannot be a manifest source (the loader never builds shell "
                "commands from a manifest's text); pass the store folder, its manifest.json path or URL, "
                "or the shards as pipe: commands with count_scan=True"
            )
        return _from_urls(expand_urls(text), fmt)
    if scheme == "file":
        text, scheme = url2pathname(urlparse(text).path), ""
    if scheme == "" and Path(text).is_dir():
        location = Path(text).resolve() / MANIFEST
        if not location.exists():
            raise PipelineError(
                f"{text}: no {MANIFEST} (pass a shard URL pattern to read shards without one)"
            )
        return _from_manifest(str(location), fmt)
    if text.endswith(MANIFEST):
        return _from_manifest(str(Path(text).resolve()) if scheme == "" else text, fmt)
    if scheme and _format_of_url(text) is None and not any(c in text for c in "{}*?["):
        return _from_manifest(f"{text.rstrip('/')}/{MANIFEST}", fmt)  # a store folder URL
    return _from_urls(expand_urls(text), fmt)
