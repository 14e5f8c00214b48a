"""Write files so that a final name only ever holds complete content."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datagen.errors import DatagenError
from datagen.store.format import TEMP_RE, TMP_SUFFIX

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""Write errors that more room (or a higher quota) cures."""


class WriteError(DatagenError, OSError):
    """Writing into an output folder failed (disk full, quota, I/O error); a resumed run can finish it.

    An OSError too, so code that handles failed writes keeps handling it; the CLI prints it as one line.
    """


def format_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def final_name(path: Path) -> str:
    """The name a temporary from :func:`atomic_path` is renamed to (other names unchanged)."""
    name = Path(path).name
    m = TEMP_RE.fullmatch(name)
    return m["final"] if m else name


def write_error(exc: OSError, path: Path, needed: int | None = None) -> WriteError:
    """One line for a failed write of `path` (a file or its temporary): the folder, the file, and for a
    full disk the space that file needs and what is free."""
    if isinstance(exc, WriteError):
        return exc
    folder, name = Path(path).parent, final_name(path)
    if exc.errno not in NO_SPACE:
        return WriteError(f"cannot write {name} in {folder}: {exc.strerror or exc}; rerun with --resume")
    try:
        free = format_bytes(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    need = f"{format_bytes(needed)} for {name}" if needed else f"more room for {name}"
    return WriteError(
        f"no space left in {folder}: it needs {need} ({free} free; {exc.strerror}); "
        "make room and rerun with --resume"
    )


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success fsync it and rename it to `final`, else remove it.

    A failing fsync or rename (a full disk can surface only there) raises :class:`WriteError`.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        yield tmp
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as e:
            raise write_error(e, final) from None
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """`data` under `final`, complete or not at all; a failed write is one WriteError line."""
    try:
        with atomic_path(final) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise write_error(e, final, len(data)) from None


def write_json_atomic(final: Path, obj: Any) -> None:
    """Canonical JSON (sorted keys, fixed indent) so identical content gives identical bytes."""
    write_bytes_atomic(final, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(folder: Path) -> int:
    """Remove temporary files a killed run left behind; returns how many."""
    n = 0
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        n += 1
    return n
