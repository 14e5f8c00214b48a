"""Which entries of an output folder this tool made, so `--overwrite` removes exactly those and nothing else.

A folder is ours only when it is recognisably a datagen store: its `manifest.json` validates as our manifest
(or, for an unfinished run, its job file validates as our job record) and every entry is one of that
store's shards, its job file, journal, temporary files, or (for `stabilize --videogan`) its strips folder.
Anything else (a user's file, a symlink, a folder we would not make) makes the whole folder not ours:
`--overwrite` refuses it and touches nothing. The current directory, its parents, `$HOME` and `/` are
never overwritten, whatever they hold.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datagen.errors import DatagenError
from datagen.store.format import (
    CARD,
    CARD_MAX_BYTES,
    EXTENSIONS,
    JOB_FILE,
    JOURNAL,
    MANIFEST,
    SHARD_RE,
    TEMP_RE,
    VIDEOGAN_DIR,
    VIDEOGAN_LIST,
    VIDEOGAN_STRIP_RE,
    VIDEOGAN_VIDEO_RE,
    ManifestError,
    is_card_text,
    load_manifest,
    read_manifest_text,
    validate_record,
)
from datagen.store.location import RemoteStore


def refuse_protected(out: Path) -> None:
    """`/`, `$HOME`, the current directory and its parents are never replaced, store or not."""
    real = Path(os.path.realpath(out))
    cwd = Path(os.path.realpath(Path.cwd()))
    home = Path(os.path.realpath(Path.home()))
    what = None
    if real == Path(real.anchor):
        what = "the file system root"
    elif real == home:
        what = "your home folder"
    elif real == cwd:
        what = "the current directory"
    elif real in cwd.parents:
        what = "a parent of the current directory"
    if what:
        raise DatagenError(f"refusing to overwrite {out}: it is {what}; choose a store folder of its own")


def _job_record(out: Path) -> dict[str, Any]:
    path = out / JOB_FILE
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise ManifestError(f"{path}: unreadable job file ({e})") from None
    return validate_record(record, str(path))


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _is_plain_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _videogan_files(root: Path) -> list[Path]:
    """Every file of a `--videogan` strips folder, or DatagenError at the first entry we would not make."""
    files: list[Path] = []
    for name in sorted(os.listdir(root)):
        p = root / name
        if _is_regular(p) and (name == VIDEOGAN_LIST or _temp_final(name) == VIDEOGAN_LIST):
            files.append(p)
        elif _is_plain_dir(p) and VIDEOGAN_VIDEO_RE.fullmatch(name):
            for strip in sorted(os.listdir(p)):
                q = p / strip
                final = _temp_final(strip) or strip
                if not (_is_regular(q) and VIDEOGAN_STRIP_RE.fullmatch(final)):
                    raise DatagenError(f"{q} was not made by datagen")
                files.append(q)
        else:
            raise DatagenError(f"{p} was not made by datagen")
    return files


def _is_our_card(path: Path) -> bool:
    """README.md is ours only when datagen wrote it as a card (a user's README makes the folder not ours)."""
    if not _is_regular(path):
        return False
    try:
        with open(path, "rb") as f:
            return is_card_text(f.read(CARD_MAX_BYTES))
    except OSError:
        return False


def _temp_final(name: str) -> str | None:
    m = TEMP_RE.fullmatch(name)
    return m["final"] if m else None


def _shard_rule(record: dict[str, Any], listed: set[str]) -> Callable[[str], bool]:
    """Is a name one of this store's shards: listed in its manifest, or (unfinished run, no manifest yet)
    named like a shard of its prefix and formats."""
    layout = record["layout"]
    extensions = {EXTENSIONS[f] for f in layout["formats"]}

    def is_shard(name: str) -> bool:
        if listed:
            return name in listed
        m = SHARD_RE.fullmatch(name)
        return m is not None and m["prefix"] == layout["prefix"] and m["ext"] in extensions

    return is_shard


def owned_files(out: Path) -> tuple[list[Path], list[Path]]:
    """(files, folders) of the store in `out`, all ours; DatagenError naming the first entry that is not."""
    out = Path(out)
    names = sorted(os.listdir(out))
    if MANIFEST in names:
        try:
            manifest = load_manifest(out)
        except ManifestError as e:
            raise DatagenError(f"{out / MANIFEST} is not a datagen manifest ({e})") from None
        record: dict[str, Any] = manifest
        listed = {s["path"] for s in manifest["shards"]}
    elif JOB_FILE in names:
        record, listed = _job_record(out), set()
    else:
        raise DatagenError(f"{out} holds no {MANIFEST} or {JOB_FILE}: it is not a datagen store")
    layout = record["layout"]
    is_shard = _shard_rule(record, listed)
    control = {MANIFEST, JOB_FILE, JOURNAL}
    files, folders = [], []
    for name in names:
        p = out / name
        if name == VIDEOGAN_DIR and layout.get("videogan") is True and _is_plain_dir(p):
            strips = _videogan_files(p)
            files += strips
            folders += sorted({f.parent for f in strips if f.parent != p}) + [p]
            continue
        final = _temp_final(name)
        if CARD in (name, final) and _is_our_card(p):
            files.append(p)
            continue
        mine = (
            name in control or is_shard(name) or (final is not None and (final in control or is_shard(final)))
        )
        if not (mine and _is_regular(p)):
            raise DatagenError(f"{p} is not part of the datagen store in {out}")
        files.append(p)
    return files, folders


def remove_store(out: Path) -> None:
    """Remove the store in `out` (its files only, then its own subfolders); `out` itself stays, empty.

    Everything is checked before anything is removed, so a refusal leaves the folder exactly as it was.
    """
    refuse_protected(out)
    try:
        files, folders = owned_files(out)
    except DatagenError as e:
        raise DatagenError(f"refusing to overwrite {out}: {e}") from None
    # the manifest first: from the first unlink on, the folder no longer claims to be a complete store
    files.sort(key=lambda p: p.name != MANIFEST)
    for p in files:
        p.unlink(missing_ok=True)
    for d in folders:
        d.rmdir()


def remote_owned(store: RemoteStore) -> list[str]:
    """Names of the store at a URL, all ours (the rules of :func:`owned_files`: manifest or job file that
    validate, their shards, journal, our card); DatagenError naming the first object that is not."""
    entries = store.entries()
    if MANIFEST in entries:
        try:
            manifest = read_manifest_text(store.read(MANIFEST) or b"", store.where(MANIFEST))
        except ManifestError as e:
            raise DatagenError(f"{store.where(MANIFEST)} is not a datagen manifest ({e})") from None
        record: dict[str, Any] = manifest
        listed = {s["path"] for s in manifest["shards"]}
    elif JOB_FILE in entries:
        try:
            record = validate_record(json.loads(store.read(JOB_FILE) or b""), store.where(JOB_FILE))
        except (ValueError, RecursionError) as e:
            raise ManifestError(f"{store.where(JOB_FILE)}: unreadable job file ({e})") from None
        listed = set()
    else:
        raise DatagenError(f"{store.url} holds no {MANIFEST} or {JOB_FILE}: it is not a datagen store")
    is_shard = _shard_rule(record, listed)
    for name, kind in sorted(entries.items()):
        card = name == CARD and is_card_text(store.read(CARD)[:CARD_MAX_BYTES] if kind == "file" else b"")
        if kind != "file" or not (card or name in (MANIFEST, JOB_FILE, JOURNAL) or is_shard(name)):
            raise DatagenError(f"{store.where(name)} is not part of the datagen store in {store.url}")
    return sorted(entries)


def remove_remote_store(store: RemoteStore) -> None:
    """Remove the store at a URL (its objects only; the manifest first), or refuse touching nothing."""
    try:
        names = remote_owned(store)
    except DatagenError as e:
        raise DatagenError(f"refusing to overwrite {store.url}: {e}") from None
    for name in sorted(names, key=lambda n: n != MANIFEST):
        store.remove(name)
