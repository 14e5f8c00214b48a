"""WebDataset tar shards with reproducible bytes, written with the standard library's tarfile.

Members per sample, in key order: `<key>.video.npy` (numpy format, no pickle) and `<key>.meta.json`.
Every header field that could vary between runs (mtime, owner, mode) is fixed, so the same samples give
the same sha256 on any machine.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from datagen.store.sample import Sample

MTIME = 0
VIDEO_FIELD = "video.npy"
META_FIELD = "meta.json"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_wds(path: Path, samples: Iterable[Sample]) -> list[str]:
    """Write `samples` into the tar at `path`; returns the keys written, in order."""
    keys: list[str] = []
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            _add_member(tar, f"{s.key}.{VIDEO_FIELD}", npy_bytes(s.video))
            _add_member(tar, f"{s.key}.{META_FIELD}", meta_bytes(s.meta))
            keys.append(s.key)
    return keys


def read_wds(path: Path) -> Iterator[Sample]:
    """Read a shard back without webdataset (used by verify, preview and tests)."""
    with tarfile.open(path, mode="r") as tar:
        pending: dict[str, dict] = {}
        for member in tar:
            key, _, field = member.name.partition(".")
            data = tar.extractfile(member).read()
            entry = pending.setdefault(key, {})
            if field == VIDEO_FIELD:
                entry["video"] = np.load(io.BytesIO(data), allow_pickle=False)
            elif field == META_FIELD:
                entry["meta"] = json.loads(data)
            if "video" in entry and "meta" in entry:
                yield Sample(key, entry["video"], entry["meta"])
                del pending[key]
        if pending:
            raise ValueError(f"{path}: incomplete samples {sorted(pending)[:3]}")
