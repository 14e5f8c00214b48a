"""The on-disk store format, defined once: names, keys, shard naming, the manifest schema and its validator.

Every reader of a store (`verify`, `info`, `build`, `preview`, `pipelines`, the recipes) loads the manifest
through :func:`load_manifest` / :func:`validate_manifest`, so nothing read from a store is used before it
is checked: shard paths are plain file names matching the shard pattern (never a path, URL or command),
counts and keys agree, totals add up, hashes look like hashes. Stores come from strangers; a manifest is
data, not instructions.

This module imports only the standard library (`pipelines` imports it without pulling in the writers).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from datagen.errors import DatagenError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
JOB_FILE = ".datagen-job.json"
JOURNAL = ".datagen-journal.jsonl"
TMP_SUFFIX = ".tmp"
EXTENSIONS = {"wds": ".tar", "hdf5": ".h5"}
FORMATS = tuple(EXTENSIONS)
KEY_WIDTH = 9
VIDEO_FIELD = "video.npy"  # WebDataset member suffixes: <key>.video.npy, <key>.meta.json
META_FIELD = "meta.json"
SEEDING = "numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(global_index,)))"
RECORD_KEYS = ("generator", "params", "seed", "layout", "sample")  # what defines a dataset's content

PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SHARD_RE = re.compile(r"(?P<prefix>[A-Za-z0-9][A-Za-z0-9_-]{0,63})-(?P<index>[0-9]{6,12})(?P<ext>\.tar|\.h5)")
KEY_RE = re.compile(rf"[0-9]{{{KEY_WIDTH},19}}")  # wider past 10**9 samples
SHA256_RE = re.compile(r"[0-9a-f]{64}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_SEED = 2**63
MAX_CLIP_BYTES = 2**32  # one clip's (T, H, W, C) uint8 array: readers allocate this much per sample
MAX_DIM = 1 << 16

# --- per-sample fields -------------------------------------------------------------------------------------
# A sample is always its video and meta; `--fields` adds arrays (stored as `<key>.<name>.npy` members / HDF5
# datasets `<name>` chunked one clip per chunk) and ground-truth keys in meta. The names form a fixed set: a
# manifest lists its fields and nothing else is accepted, so text from a stranger's store never becomes a
# member name, a dataset name or an attribute lookup.
DEFAULT_FIELDS = ("video",)
ARRAY_FIELDS: dict[str, tuple[str, str]] = {
    "mask": ("uint8", "THW"),
    "flow": ("float16", "THWC"),
    "sensed": ("uint16", "VHW"),
}
"""Array fields: name -> (dtype, layout). mask: (T, H, W) instance ids, 0 = background, i + 1 = object i;
flow: (T - 1, H, W, 2) forward flow in pixels from frame t to t + 1 (x = column, y = row), 0 on background;
sensed: (V, H + (T - 1) * shear, W) digital numbers of a sensing simulator's exposure of the whole clip
(`datagen sense cup`: V = 1, or 2 with the complementary view), its shape in the manifest (it depends on
the sensing parameters; :func:`field_shape_ok` says which shapes a clip allows)."""
META_FIELDS = ("events", "visibility")
"""Fields that add ground truth to `meta` (no array): `events` a list of {frame, kind, objects, position},
`visibility` per frame and object the visible fraction of its pixels."""
KNOWN_FIELDS = ("video", *ARRAY_FIELDS, *META_FIELDS)  # the canonical order


def field_member(name: str) -> str:
    """WebDataset member suffix of an array field: `<key>.mask.npy`."""
    if name not in ARRAY_FIELDS:
        raise ValueError(f"{name!r} is not an array field ({', '.join(ARRAY_FIELDS)})")
    return f"{name}.npy"


def field_shape(name: str, video_shape: Iterable[int]) -> list[int]:
    """Shape of one sample's array field, from the clip's (T, H, W, C)."""
    t, h, w, _ = video_shape
    if name == "mask":
        return [t, h, w]
    if name == "flow":
        return [t - 1, h, w, 2]
    if name == "sensed":
        raise ValueError(
            "the sensed field's shape depends on the sensing parameters: read it from the manifest"
        )
    raise ValueError(f"{name!r} is not an array field ({', '.join(ARRAY_FIELDS)})")


def field_shape_ok(name: str, shape: Iterable[int], video_shape: Iterable[int]) -> bool:
    """Whether one sample's field `name` may have `shape` for clips of `video_shape` (T, H, W, C)."""
    shape = [int(d) for d in shape]
    if name != "sensed":
        return shape == field_shape(name, video_shape)
    t, h, w, _ = video_shape
    if len(shape) != 3 or shape[0] not in (1, 2) or shape[2] != w or shape[1] < h:
        return False
    return shape[1] == h if t == 1 else (shape[1] - h) % (t - 1) == 0


def parse_fields(
    value: str | Iterable[str] | None, supported: Iterable[str] = KNOWN_FIELDS
) -> tuple[str, ...]:
    """`"video,mask,flow"` (or a list) -> the fields in canonical order; `video` is always included.

    Unknown names and names the generator does not make (`supported`) raise DatagenError: a typo must not
    silently drop a field.
    """
    if value is None:
        return DEFAULT_FIELDS
    names = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) for n in names):
        raise DatagenError(f"fields must be names, got {value!r:.80}")
    names = [n.strip() for n in names if n.strip()]
    unknown = sorted(set(names) - set(KNOWN_FIELDS))
    if unknown:
        raise DatagenError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(KNOWN_FIELDS)}")
    supported = set(supported) | set(DEFAULT_FIELDS)
    missing = [n for n in KNOWN_FIELDS if n in names and n not in supported]
    if missing:
        raise DatagenError(
            f"this generator does not make field(s) {', '.join(missing)} "
            f"(it makes {', '.join(n for n in KNOWN_FIELDS if n in supported)})"
        )
    return tuple(n for n in KNOWN_FIELDS if n in names or n in DEFAULT_FIELDS)


def sample_schema(
    video_shape: Iterable[int],
    fields: Iterable[str] = DEFAULT_FIELDS,
    shapes: Mapping[str, list[int]] | None = None,
) -> dict[str, Any]:
    """The manifest's `sample` entry: video (dtype, shape, layout), each array field, and the field list
    (omitted for video alone, so stores without extra fields keep their records and digests). `shapes`:
    the shapes of fields that the clip alone does not fix (`sensed`)."""
    shape = [int(d) for d in video_shape]
    schema: dict[str, Any] = {
        "video": {"dtype": "uint8", "shape": shape, "layout": "THWC"},
        "key": "global sample index, zero-padded to 9 digits",
    }
    fields = tuple(fields)
    if fields != DEFAULT_FIELDS:
        schema["fields"] = list(fields)
        for name in fields:
            if name in ARRAY_FIELDS:
                dtype, layout = ARRAY_FIELDS[name]
                own = (shapes or {}).get(name)
                field = [int(d) for d in own] if own is not None else field_shape(name, shape)
                schema[name] = {"dtype": dtype, "shape": field, "layout": layout}
    return schema


def schema_fields(sample: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields a (validated) manifest's `sample` entry lists."""
    return tuple(sample.get("fields", DEFAULT_FIELDS))


class ManifestError(DatagenError, ValueError):
    """A manifest or dataset spec is malformed or unsafe; the message names the file and the field."""


def shard_name(prefix: str, index: int, fmt: str) -> str:
    return f"{prefix}-{index:06d}{EXTENSIONS[fmt]}"


def is_shard_name(name: str) -> bool:
    """A plain shard file name (`<prefix>-<6+ digits>.tar|.h5`): no folder, no `..`, no scheme, no shell."""
    return isinstance(name, str) and SHARD_RE.fullmatch(name) is not None


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise DatagenError(
            f"shard prefix {prefix!r} must be 1-64 letters, digits, '_' or '-', not starting with '_' or '-'"
        )
    return prefix


def sample_key(index: int) -> str:
    """Zero-padded global index: sorts like the index, and has no dot (webdataset splits keys at dots)."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return f"{index:0{KEY_WIDTH}d}"


def dataset_digest(record: Mapping[str, Any], shards: Iterable[Mapping[str, Any]]) -> str:
    """sha256 over the job record and every shard's (path, count, sha256): one value names the dataset."""
    body = {
        "record": {k: record[k] for k in RECORD_KEYS},
        "shards": sorted((s["path"], s["n_samples"], s["sha256"]) for s in shards),
    }
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# --- validation ----------------------------------------------------------------------------------------


def _is_format(v: Any) -> bool:
    return isinstance(v, str) and v in EXTENSIONS


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Checker:
    """Collects the first problem as one line: '<where>: <field> <what is wrong>'."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, what: str) -> ManifestError:
        return ManifestError(f"{self.where}: {field} {what}")

    def mapping(self, obj: Any, field: str) -> Mapping[str, Any]:
        if not isinstance(obj, Mapping):
            raise self.fail(field, f"must be an object, got {type(obj).__name__}")
        return obj

    def get(self, obj: Mapping[str, Any], key: str, field: str) -> Any:
        if key not in obj:
            raise self.fail(field, "is missing")
        return obj[key]

    def int_in(self, v: Any, field: str, lo: int, hi: int | None = None) -> int:
        if not _is_int(v):
            raise self.fail(field, f"must be an integer, got {type(v).__name__} {v!r:.40}")
        if v < lo or (hi is not None and v > hi):
            bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise self.fail(field, f"must be {bound}, got {v}")
        return v

    def string(self, v: Any, field: str, pattern: re.Pattern | None = None, what: str = "") -> str:
        if not isinstance(v, str):
            raise self.fail(field, f"must be a string, got {type(v).__name__}")
        if pattern is not None and not pattern.fullmatch(v):
            raise self.fail(field, f"{v!r:.80} is not {what}")
        return v


def check_seed(v: Any, field: str = "seed", where: str = "seed") -> int:
    """A root seed is an integer in [0, 2**63): 1.5 or True are refused, never truncated."""
    return _Checker(where).int_in(v, field, 0, MAX_SEED - 1)


def _check_sample(c: _Checker, sample: Any) -> None:
    sample = c.mapping(sample, "sample")
    video = c.mapping(c.get(sample, "video", "sample.video"), "sample.video")
    if c.get(video, "dtype", "sample.video.dtype") != "uint8":
        raise c.fail("sample.video.dtype", f"must be 'uint8', got {video['dtype']!r}")
    if c.get(video, "layout", "sample.video.layout") != "THWC":
        raise c.fail("sample.video.layout", f"must be 'THWC', got {video['layout']!r}")
    shape = c.get(video, "shape", "sample.video.shape")
    if not isinstance(shape, list) or len(shape) != 4:
        raise c.fail("sample.video.shape", f"must be a list of 4 integers (T, H, W, C), got {shape!r:.80}")
    size = 1
    for i, d in enumerate(shape):
        size *= c.int_in(d, f"sample.video.shape[{i}]", 1, MAX_DIM)
    if size > MAX_CLIP_BYTES:
        raise c.fail(
            "sample.video.shape", f"{shape} is {size} bytes per clip, over the {MAX_CLIP_BYTES} limit"
        )
    _check_fields(c, sample, shape)


def _check_fields(c: _Checker, sample: Mapping[str, Any], shape: list[int]) -> None:
    """`sample.fields` names known fields (video first); each array field has its fixed dtype, layout and
    the shape the clip implies; no other entry is accepted."""
    allowed = {"video", "key", "fields"}
    fields: Any = list(DEFAULT_FIELDS)
    if "fields" in sample:
        fields = sample["fields"]
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise c.fail("sample.fields", f"must be a list of field names, got {fields!r:.80}")
        canonical = [f for f in KNOWN_FIELDS if f in fields]
        if fields != canonical or len(set(fields)) != len(fields) or "video" not in fields:
            raise c.fail(
                "sample.fields",
                f"{fields!r:.120} is not a list of known fields in order ({', '.join(KNOWN_FIELDS)})",
            )
    for name in fields:
        if name not in ARRAY_FIELDS:
            continue
        allowed.add(name)
        f = f"sample.{name}"
        entry = c.mapping(c.get(sample, name, f), f)
        dtype, layout = ARRAY_FIELDS[name]
        if c.get(entry, "dtype", f + ".dtype") != dtype:
            raise c.fail(f + ".dtype", f"must be {dtype!r}, got {entry['dtype']!r:.40}")
        if c.get(entry, "layout", f + ".layout") != layout:
            raise c.fail(f + ".layout", f"must be {layout!r}, got {entry['layout']!r:.40}")
        if name == "sensed":
            got = c.get(entry, "shape", f + ".shape")
            if not (
                isinstance(got, list) and all(_is_int(d) for d in got) and field_shape_ok(name, got, shape)
            ):
                raise c.fail(
                    f + ".shape", f"{got!r:.80} is not (V, H + (T - 1) * shear, W) for clips of {shape}"
                )
            continue
        expected = field_shape(name, shape)
        if c.get(entry, "shape", f + ".shape") != expected or min(expected) < 1:
            raise c.fail(f + ".shape", f"must be {expected} for clips of {shape}, got {entry['shape']!r:.80}")
    extra = sorted(set(sample) - allowed, key=str)
    if extra:
        raise c.fail(f"sample.{extra[0]!s:.40}", "is not a field of this store (see sample.fields)")


def _check_shard(c: _Checker, i: int, entry: Any, prefix: str, shard_size: int | None) -> dict[str, Any]:
    f = f"shards[{i}]"
    e = c.mapping(entry, f)
    path = c.string(c.get(e, "path", f + ".path"), f + ".path")
    m = SHARD_RE.fullmatch(path)
    if m is None:
        raise c.fail(f + ".path", f"{path!r:.80} is not a plain shard file name (<prefix>-NNNNNN.tar|.h5)")
    fmt = c.get(e, "format", f + ".format")
    if not _is_format(fmt):
        raise c.fail(f + ".format", f"{fmt!r:.40} is not a known format ({', '.join(FORMATS)})")
    if m["ext"] != EXTENSIONS[fmt] or m["prefix"] != prefix:
        raise c.fail(f + ".path", f"{path!r} does not match the layout (prefix {prefix!r}, format {fmt})")
    hi = shard_size if shard_size is not None else None
    n = c.int_in(c.get(e, "n_samples", f + ".n_samples"), f + ".n_samples", 1 if shard_size else 0, hi)
    first, last = c.get(e, "first_key", f + ".first_key"), c.get(e, "last_key", f + ".last_key")
    if n == 0:
        if first is not None or last is not None:
            raise c.fail(f, "has no samples but names first/last keys")
    else:
        a = int(c.string(first, f + ".first_key", KEY_RE, "a zero-padded key"))
        b = int(c.string(last, f + ".last_key", KEY_RE, "a zero-padded key"))
        span = b - a + 1
        if span < n or (shard_size is not None and span != n):
            raise c.fail(f, f"keys {first}..{last} cannot hold {n} samples")
        if shard_size is not None and a != int(m["index"]) * shard_size:
            raise c.fail(f + ".first_key", f"{first} is not where shard {m['index']} starts")
    c.int_in(c.get(e, "bytes", f + ".bytes"), f + ".bytes", 0)
    c.string(c.get(e, "sha256", f + ".sha256"), f + ".sha256", SHA256_RE, "64 lowercase hex digits")
    return {"path": path, "format": fmt, "n_samples": n}


def _check_record(c: _Checker, m: Mapping[str, Any]) -> tuple[str, list[str], int | None]:
    """The fields that define a dataset (RECORD_KEYS); returns (prefix, formats, shard size or None)."""
    gen = c.mapping(c.get(m, "generator", "generator"), "generator")
    c.string(c.get(gen, "name", "generator.name"), "generator.name", PREFIX_RE, "a generator name")
    c.string(c.get(gen, "version", "generator.version"), "generator.version")
    c.mapping(c.get(m, "params", "params"), "params")
    check_seed(c.get(m, "seed", "seed"), where=c.where)
    layout = c.mapping(c.get(m, "layout", "layout"), "layout")
    prefix = c.string(c.get(layout, "prefix", "layout.prefix"), "layout.prefix", PREFIX_RE, "a shard prefix")
    formats = c.get(layout, "formats", "layout.formats")
    if not isinstance(formats, list) or not formats or not all(_is_format(f) for f in formats):
        raise c.fail("layout.formats", f"must be a non-empty list of wds/hdf5, got {formats!r:.80}")
    shard_size = None
    if "shard_size" in layout:
        shard_size = c.int_in(layout["shard_size"], "layout.shard_size", 1)
    _check_sample(c, c.get(m, "sample", "sample"))
    return prefix, formats, shard_size


def validate_record(record: Any, where: str) -> dict[str, Any]:
    """Check a job record (the job file of an unfinished store) like the same fields of a manifest."""
    c = _Checker(where)
    _check_record(c, c.mapping(record, "job record"))
    return dict(record)


def validate_manifest(manifest: Any, where: str = MANIFEST) -> dict[str, Any]:
    """Check every field a reader uses; return the manifest unchanged or raise a one-line ManifestError."""
    c = _Checker(where)
    m = c.mapping(manifest, "manifest")
    version = m.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise c.fail(
            "schema_version", f"{version!r:.40} is not supported (this install reads {SCHEMA_VERSION})"
        )
    prefix, formats, shard_size = _check_record(c, m)
    layout = m["layout"]
    c.string(c.get(m, "digest", "digest"), "digest", DIGEST_RE, "'sha256:' and 64 hex digits")
    shards = c.get(m, "shards", "shards")
    if not isinstance(shards, list):
        raise c.fail("shards", f"must be a list, got {type(shards).__name__}")
    seen: set[str] = set()
    totals: dict[str, dict[str, int]] = {}
    for i, entry in enumerate(shards):
        s = _check_shard(c, i, entry, prefix, shard_size)
        if s["path"] in seen:
            raise c.fail(f"shards[{i}].path", f"{s['path']!r} is listed twice")
        seen.add(s["path"])
        if s["format"] not in formats:
            raise c.fail(f"shards[{i}].format", f"{s['format']} is not in layout.formats")
        t = totals.setdefault(s["format"], {"n_shards": 0, "n_samples": 0, "bytes": 0})
        t["n_shards"] += 1
        t["n_samples"] += s["n_samples"]
        t["bytes"] += entry["bytes"]
    if c.get(m, "totals", "totals") != totals:
        raise c.fail("totals", "do not equal the sums over the shards")
    if shard_size is not None:
        n = c.int_in(c.get(layout, "n_samples", "layout.n_samples"), "layout.n_samples", 1)
        if any(t["n_samples"] != n for t in totals.values()) or set(totals) != set(formats):
            raise c.fail("layout.n_samples", f"{n} does not match the shards of every format")
    return dict(m)


SPEC_REQUIRED = ("name", "generator", "params", "seed", "n", "shard_size", "formats", "digest")
SPEC_OPTIONAL = ("generator_version", "description", "bytes", "first_shard")


def validate_spec(spec: Any, where: str) -> dict[str, Any]:
    """A `data_manifests/` dataset spec: what `datagen build` regenerates, and the digest it must reach.

    `name` becomes a folder under the output root, so it must be a plain folder name (no `/`, no `..`).
    """
    c = _Checker(where)
    m = c.mapping(spec, "spec")
    unknown = sorted(set(m) - set(SPEC_REQUIRED) - set(SPEC_OPTIONAL))
    if unknown:
        raise c.fail(
            f"{unknown[0]!r:.40}", f"is not a spec field (fields: {', '.join(SPEC_REQUIRED + SPEC_OPTIONAL)})"
        )
    c.string(c.get(m, "name", "name"), "name", PREFIX_RE, "a plain folder name (letters, digits, '_', '-')")
    c.string(c.get(m, "generator", "generator"), "generator", PREFIX_RE, "a generator name")
    if "generator_version" in m:
        c.string(m["generator_version"], "generator_version")
    c.mapping(c.get(m, "params", "params"), "params")
    check_seed(c.get(m, "seed", "seed"), where=where)
    c.int_in(c.get(m, "n", "n"), "n", 1)
    c.int_in(c.get(m, "shard_size", "shard_size"), "shard_size", 1)
    formats = c.get(m, "formats", "formats")
    if not isinstance(formats, list) or not formats or not all(_is_format(f) for f in formats):
        raise c.fail("formats", f"must be a non-empty list of wds/hdf5, got {formats!r:.80}")
    c.string(c.get(m, "digest", "digest"), "digest", DIGEST_RE, "'sha256:' and 64 hex digits")
    if "bytes" in m:
        c.int_in(m["bytes"], "bytes", 0)
    if "first_shard" in m:
        first = c.mapping(m["first_shard"], "first_shard")
        path = c.string(c.get(first, "path", "first_shard.path"), "first_shard.path")
        if not is_shard_name(path):
            raise c.fail("first_shard.path", f"{path!r:.80} is not a plain shard file name")
        c.int_in(c.get(first, "n_samples", "first_shard.n_samples"), "first_shard.n_samples", 1)
        c.string(c.get(first, "sha256", "first_shard.sha256"), "first_shard.sha256", SHA256_RE, "a sha256")
    return dict(m)


def load_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatagenError(f"no dataset spec at {path}") from None
    except OSError as e:
        raise DatagenError(f"unreadable dataset spec {path}: {e.strerror or e}") from None
    try:
        spec = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    return validate_spec(spec, str(path))


def read_manifest_text(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse and validate manifest bytes read from anywhere (file, URL)."""
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError: also an integer of more than 4300 digits
        raise ManifestError(f"{where}: not valid JSON ({e})") from None
    return validate_manifest(manifest, where)


def manifest_path(store: str | Path) -> Path:
    """A store folder or its manifest file -> the manifest file's path."""
    path = Path(store)
    return path / MANIFEST if path.is_dir() else path


def load_manifest(store: str | Path) -> dict[str, Any]:
    """Read and validate a local store's manifest (the folder or the file itself)."""
    path = manifest_path(store)
    if not path.is_file():
        raise DatagenError(f"no manifest at {path} (not a datagen store, or generation did not finish)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatagenError(f"cannot read {path}: {e.strerror or e}") from None
    return read_manifest_text(data, str(path))


# --- what in a store folder is ours ---------------------------------------------------------------------

# .<final>.<id>.tmp, where <final> may itself be a dot-file (the job file)
TEMP_RE = re.compile(r"\.(?P<final>\.?[A-Za-z0-9][A-Za-z0-9_.-]{0,200})\.[0-9a-f]{1,32}\.tmp")
VIDEOGAN_DIR = "videogan"  # `datagen stabilize --videogan`: <video:06d>/<clip:04d>.jpg strips and list.txt
VIDEOGAN_VIDEO_RE = re.compile(r"[0-9]{6,12}")
VIDEOGAN_STRIP_RE = re.compile(r"[0-9]{4,9}\.jpg")
VIDEOGAN_LIST = "list.txt"

# The dataset card (`README.md`, Hugging Face card format) written beside the manifest. A README.md is ours
# only when it carries this line: a user's own README in an output folder makes the folder not ours.
CARD = "README.md"
CARD_MARK = "<!-- datagen dataset card: made with this store and remade with it; edits are lost -->"
CARD_MAX_BYTES = 1 << 20


def is_card_text(text: bytes) -> bool:
    """Bytes of a card datagen wrote (it carries :data:`CARD_MARK` in its first lines)."""
    return CARD_MARK.encode() in text[:8192]


def is_temp_of(name: str, finals: set[str] | None = None) -> bool:
    """`name` is a temporary file of ours (`.<final>.<id>.tmp`), for one of `finals` when given."""
    m = TEMP_RE.fullmatch(name)
    return m is not None and (finals is None or m["final"] in finals)
