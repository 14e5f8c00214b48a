"""Where a store lives: a local folder, or an fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`).

Local folders keep their own code path (temporary names, fsync, rename): nothing here touches them, and a
`file://` URL is just a local folder. On an object store a shard is streamed to its final key through fsspec
(S3: a multipart upload, visible only once complete), hashed on the way; small files (job file, journal,
card, manifest) are written whole in one request. Credentials and endpoints come from the usual fsspec /
boto configuration (environment, config files), never from our flags or manifests.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from datagen.errors import DatagenError
from datagen.store.format import MANIFEST, load_manifest, read_manifest_text

READ_CHUNK = 1 << 22


def is_url(out: Any) -> bool:
    """A store URL other than `file://` (which is a local folder)."""
    return isinstance(out, str) and "://" in out and not out.startswith("file://")


def normalize(out: str | Path) -> str | Path:
    """`--out` as given -> a local Path (plain paths and `file://` URLs) or a URL without a trailing '/'."""
    if isinstance(out, Path):
        return out
    if out.startswith("file://"):
        return Path(urlsplit(out).path)
    if is_url(out):
        scheme, _, rest = out.partition("://")
        if not rest.strip("/"):
            raise DatagenError(f"--out {out!r} names no bucket or folder")
        return f"{scheme}://{rest.rstrip('/')}"
    return Path(out)


@dataclass
class RemoteStore:
    """A store folder on an fsspec file system: the few operations the job runner and readers need."""

    url: str

    def __post_init__(self) -> None:
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            raise DatagenError(f"cannot open {self.url}: {e}") from None
        self.root = root.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def entries(self) -> dict[str, str]:
        """Entries directly under the store: name -> 'file' or 'directory' (empty when there is none)."""
        self.fs.invalidate_cache(self.root)
        try:
            listing = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for info in listing:
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if info["name"].rstrip("/") != self.root:
                out[name] = info.get("type", "file")
        return out

    def read(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(name))
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        """One object, complete or absent (a single PUT; fsspec's memory files commit on close)."""
        try:
            self.fs.pipe_file(self.path(name), data)
        except OSError as e:
            raise DatagenError(f"cannot write {self.where(name)}: {e}; rerun with --resume") from None

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            pass

    def size(self, name: str) -> int | None:
        try:
            return int(self.fs.info(self.path(name))["size"])
        except FileNotFoundError:
            return None

    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(self.path(name), "rb", block_size=READ_CHUNK) as f:
            while block := f.read(READ_CHUNK):
                h.update(block)
        return h.hexdigest()

    def open(self, name: str, mode: str = "rb"):
        return self.fs.open(self.path(name), mode)


def store_url(url: str) -> str:
    """A store URL or its manifest's URL -> the store's URL."""
    url = str(normalize(url))
    return url.rsplit("/", 1)[0] if url.endswith("/" + MANIFEST) else url


def load_store_manifest(store: str | Path) -> dict[str, Any]:
    """The validated manifest of a store folder, a manifest file, or a store URL."""
    if not is_url(store):
        return load_manifest(normalize(store))
    remote = RemoteStore(store_url(store))
    data = remote.read(MANIFEST)
    if data is None:
        raise DatagenError(f"no manifest at {remote.where(MANIFEST)} (not a datagen store, or not finished)")
    return read_manifest_text(data, remote.where(MANIFEST))


def write_remote_shard(url: str, name: str, fmt: str, samples: list, attrs: dict | None = None) -> dict:
    """A shard streamed to `url/name` and hashed on the way (S3: multipart); its manifest entry."""
    from datagen.store.hdf5 import write_hdf5
    from datagen.store.manifest import shard_entry
    from datagen.store.wds import write_wds

    store = RemoteStore(url)
    f = store.open(name, "wb")
    try:  # the writer closes (commits) the upload once every byte is in
        keys, sha256 = write_wds(f, samples) if fmt == "wds" else write_hdf5(f, samples, attrs)
    except BaseException:
        _discard(store, name, f)
        raise
    return shard_entry(name, fmt, keys, store.size(name), sha256)


def _discard(store: RemoteStore, name: str, f: Any) -> None:
    """Abandon a failed upload (S3: abort the multipart upload) and remove whatever it left."""
    with contextlib.suppress(Exception):
        f.discard()
        f.closed = True  # never completed later by a close (or the finalizer)
    with contextlib.suppress(Exception):
        store.remove(name)


def check_remote_shard(store: RemoteStore, entry: dict, sizes: dict[str, int] | None = None) -> str | None:
    """Why the object does not match its manifest entry (missing, size, sha256), or None."""
    from datagen.store.manifest import shard_mismatch

    size = sizes.get(entry["path"]) if sizes is not None else store.size(entry["path"])
    return shard_mismatch(entry, size, lambda: store.sha256(entry["path"]))


def count_remote_samples(store: RemoteStore, entry: dict) -> int:
    from datagen.store.wds import VIDEO_FIELD

    with store.open(entry["path"]) as f:
        if entry["format"] == "wds":
            with tarfile.open(fileobj=f, mode="r|") as tar:
                return sum(1 for m in tar if m.name.endswith("." + VIDEO_FIELD))
        import h5py

        with h5py.File(f, "r") as h:
            return len(h["key"])


def shard_sizes(store: RemoteStore) -> dict[str, int]:
    """Sizes of every object directly under the store, from one listing."""
    store.fs.invalidate_cache(store.root)
    try:
        listing = store.fs.ls(store.root, detail=True)
    except FileNotFoundError:
        return {}
    return {i["name"].rstrip("/").rsplit("/", 1)[-1]: int(i.get("size") or 0) for i in listing}


def verify_remote_store(url: str, *, count_samples: bool = True, manifest: dict | None = None) -> list:
    """`datagen.store.manifest.verify_store` at a URL: every shard's size, sha256 (streamed) and count."""
    from datagen.store.manifest import verify_shards

    store = RemoteStore(store_url(url))
    manifest = load_store_manifest(url) if manifest is None else manifest
    sizes = shard_sizes(store)
    count = (lambda entry: count_remote_samples(store, entry)) if count_samples else None
    return verify_shards(manifest, lambda entry: check_remote_shard(store, entry, sizes), count)


def fetch_for_preview(url: str, folder: Path, count: int) -> Path:
    """Copy a store URL's manifest and the first shards holding `count` clips (each format) into `folder`."""
    store = RemoteStore(store_url(url))
    manifest = load_store_manifest(url)
    (folder / MANIFEST).write_bytes(store.read(MANIFEST) or b"")
    for fmt in sorted({s["format"] for s in manifest["shards"]}):
        have = 0
        for entry in sorted((s for s in manifest["shards"] if s["format"] == fmt), key=lambda s: s["path"]):
            if have >= count:
                break
            store.fs.get_file(store.path(entry["path"]), str(folder / entry["path"]))
            have += entry["n_samples"]
    return folder
