"""Property tests (Hypothesis): what the loader reads from a store is data from anywhere.

The manifest validator and the loader's ``.npy`` and tar header readers get random and mutated inputs (built
from a real store): each either accepts what is sound or raises one clear error of the project's type; never
another exception, a hang (each example runs under a timer), a location outside the store, a read outside
the file, or an unpickling (pickle is switched off while they run).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import pickle
import re
import signal
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_pipelines import make_store

from datagen.store.format import ManifestError, is_shard_name, read_manifest_text, validate_manifest
from pipelines.errors import PipelineError, ShardError
from pipelines.npy import decode_npy, parse_npy_header
from pipelines.readers import Placement, count_samples, fill_run, read_run
from pipelines.sources import ShardRef, resolve_source
from pipelines.tar_index import tar_index

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPE = (4, 8, 8, 1)


class Hang(BaseException):
    """Raised by the timer: a BaseException, so no ``except Exception`` in the code under test hides it."""


@contextlib.contextmanager
def bounded(seconds: float = 5.0):
    """Fail the example instead of hanging; no pickle may be loaded meanwhile."""

    def ring(*_):
        raise Hang(f"no answer within {seconds} s")

    def no_pickle(*args, **kwargs):
        raise AssertionError("something tried to unpickle store data")

    saved = pickle.load, pickle.loads, pickle.Unpickler
    pickle.load = pickle.loads = pickle.Unpickler = no_pickle
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        pickle.load, pickle.loads, pickle.Unpickler = saved


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("props"), n_shards=2, per_shard=3, shape=SHAPE)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props-scratch")


_names = itertools.count()


def fresh_file(folder: Path, data: bytes, suffix: str = ".tar") -> Path:
    """A new file name per example: per-process caches key on path, size and mtime."""
    path = folder / f"x-{next(_names):06d}{suffix}"
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- manifests
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
HOSTILE_PATHS = [
    "../test-000000.tar",
    "/abs/test-000000.tar",
    "sub/test-000000.tar",
    "test-000000.tar/..",
    "..\\test-000000.tar",
    "file:test-000000.tar",
    "http://x/test-000000.tar",
    "pipe:cat test-000000.tar",
    "test-000000.tar; rm -rf ~",
    "test-000000.tar|sh",
    "$(touch x)-000000.tar",
    "`id`-000000.tar",
    "test-000000.tar\n",
    "test-000000.tar\x00",
    " test-000000.tar",
    "test-000000.tar&",
    "~/test-000000.tar",
    "test-00000.tar",
]
SHELL_OR_PATH = set("/\\:;|&$`'\"<>(){}[]*?~! \t\n\r\x00%#=,")
path_texts = st.one_of(
    st.sampled_from(HOSTILE_PATHS),
    st.builds(
        lambda a, frag, b: a + frag + b,
        st.sampled_from(["", "test-000000", "test"]),
        st.sampled_from(["/", "..", ":", ";", "|", "$", "`", " ", "\n", "-", "pipe:", "http://"]) | st.text(),
        st.sampled_from(["", ".tar", "-000000.tar", ".h5"]),
    ),
    st.text(max_size=30),
)


def _paths(obj, prefix=()):
    """Every (key path) inside a JSON value, the root included."""
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _paths(value, (*prefix, index))


def _mutate(manifest: dict, edits) -> object:
    """Apply (path number, action, value) edits: set a value, delete a key, or set a hostile text."""
    root = json.loads(json.dumps(manifest))
    for number, action, value in edits:
        paths = list(_paths(root))
        path = paths[number % len(paths)]
        if not path:
            root = value
            continue
        parent = root
        for key in path[:-1]:
            parent = parent[key]
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return root


def assert_sound(manifest: dict) -> None:
    """What an accepted manifest promises every reader."""
    for entry in manifest["shards"]:
        name = entry["path"]
        assert is_shard_name(name) and not SHELL_OR_PATH & set(name) and ".." not in name
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*-[0-9]{6,}\.(tar|h5)", name)
        assert isinstance(entry["n_samples"], int) and entry["n_samples"] >= 0
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])


def manifest_of(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def check_manifest(value: object, folder: Path) -> None:
    """The validator and the loader on one manifest: one-line errors of our types, or a sound result."""
    text = json.dumps(value, allow_nan=True)
    with bounded():
        try:
            accepted = validate_manifest(value, "m.json")
        except ManifestError as exn:
            assert "\n" not in str(exn) and str(exn).startswith("m.json: ")
        else:
            assert_sound(accepted)
        (folder / "manifest.json").write_text(text)
        try:
            info = resolve_source(folder)
        except PipelineError as exn:
            assert "\n" not in str(exn) and str(folder) in str(exn)
        else:
            for shard in info.shards:
                assert Path(shard.url).parent == folder.resolve() and is_shard_name(Path(shard.url).name)


@PROPS
@given(json_values)
def test_any_json_manifest_is_refused_in_one_line(scratch, value):
    check_manifest(value, scratch)


@PROPS
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["set", "delete"]), json_values), max_size=3)
)
def test_mutated_manifests_are_sound_or_refused(store, scratch, edits):
    check_manifest(_mutate(manifest_of(store), edits), scratch)


@PROPS
@given(st.integers(0, 3), path_texts)
def test_shard_paths_outside_the_store_or_with_shell_text_are_refused(store, scratch, entry, path):
    manifest = manifest_of(store)
    manifest["shards"][entry]["path"] = path
    check_manifest(manifest, scratch)
    if not is_shard_name(path):
        with pytest.raises(ManifestError, match=r"shards\[\d\]\.path"):
            validate_manifest(manifest, "m.json")


@PROPS
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_manifest_bytes_are_json_or_refused(data):
    with bounded():
        try:
            read_manifest_text(data, "m.json")
        except ManifestError as exn:
            assert "\n" not in str(exn)


# ---------------------------------------------------------------- .npy headers
def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


CLIP = npy_bytes(np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE))
HEADER_LEN = len(CLIP) - int(np.prod(SHAPE))


def check_npy(data: bytes) -> None:
    with bounded():
        try:
            array = decode_npy(data)
        except ValueError as exn:
            assert "\n" not in str(exn)
            return
    assert array.dtype != object and array.nbytes <= len(data)
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is not None  # a view of the given bytes, not a copy of something else


@PROPS
@given(st.lists(st.tuples(st.integers(0, HEADER_LEN + 8), st.integers(0, 255)), min_size=1, max_size=6))
def test_npy_with_flipped_header_bytes(flips):
    data = bytearray(CLIP)
    for at, value in flips:
        data[at] = value
    check_npy(bytes(data))


@PROPS
@given(st.integers(0, len(CLIP)))
@example(length=6)  # the magic alone: indexing its version byte failed with an IndexError
def test_npy_cut_anywhere(length):
    check_npy(CLIP[:length])


descrs = st.sampled_from(
    ["'|u1'", "'<u1'", "'|O'", "'<f8'", "'V8'", "'|V0'", "[('a', '|O')]", "[('a', '|u1')]", "('|u1', (2,))"]
    + ["'<U3'", "'S0'", "'<M8[s]'", "'<u1'.upper()", "None", "7", "'x' * 3", "{}", "[]"]
)
shapes = st.one_of(
    st.lists(st.integers(-3, 2**70), max_size=5).map(lambda dims: repr(tuple(dims))),
    st.sampled_from(["(3, 'a')", "[4]", "()", "None", "(-1,)", "(2**62, 2**62)", "'shape'"]),
)


@PROPS
@given(
    descrs,
    st.sampled_from(["False", "True", "1", "'x'"]),
    shapes,
    st.sampled_from([1, 2, 3]),
    st.integers(-8, 8),
)
def test_npy_with_any_header_dictionary(descr, fortran, shape, major, length_error):
    text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}".encode()
    prefix = 10 if major == 1 else 12
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"
    size = max(0, len(text) + length_error).to_bytes(2 if major == 1 else 4, "little")
    data = b"\x93NUMPY" + bytes([major, 0]) + size + text + bytes(range(256)) * 2
    check_npy(data)
    with bounded():
        try:
            parse_npy_header(data)
        except ValueError:
            pass


# ---------------------------------------------------------------- tar headers
def header_offsets(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [member.offset for member in tar.getmembers()]


def fix_checksum(data: bytearray, offset: int) -> None:
    header = data[offset : offset + 512]
    header[148:156] = b" " * 8
    data[offset + 148 : offset + 156] = b"%06o\0 " % sum(header)


def check_tar(folder: Path, data: bytes) -> None:
    """Index, the read paths of a local file and of a stream (an in-memory fsspec file) and the sample count:
    ShardError (naming the shard) or sound results."""
    path = fresh_file(folder, data)
    size = len(data)
    memory = fsspec.filesystem("memory")
    streamed = f"memory://props/{path.name}"
    memory.pipe(streamed, data)
    try:
        with bounded(10):
            try:
                index = tar_index(str(path))  # a fresh name: scanned, not cached
            except (ValueError, tarfile.TarError, OSError):
                pass
            else:
                for spans in (index.video, index.meta[index.meta[:, 0] >= 0]):
                    assert (spans[:, 0] >= 0).all() and (spans.sum(axis=1) <= size).all()  # inside the file
            for url in (str(path), streamed):
                for shard in (ShardRef(url, "wds"), ShardRef(url, "wds", 3, "000000000", "000000002", size)):
                    for read in (lambda s: read_run(s, 0, None, with_meta=True), count_samples):
                        try:
                            read(shard)
                        except ShardError as exn:
                            assert str(exn).startswith(f"shard {url}: ") and "\n" not in str(exn)
            out = np.zeros((3, *SHAPE), dtype=np.uint8)
            place = Placement(np.arange(3), np.zeros(3, dtype=np.int64), SHAPE[0], 1)
            try:
                fill_run(ShardRef(str(path), "wds", 3, "000000000", "000000002", size), 0, 3, out, place)
            except ShardError as exn:
                assert str(exn).startswith(f"shard {path}: ") and "\n" not in str(exn)
    finally:
        memory.rm(streamed)


@pytest.fixture(scope="module")
def shard_bytes(store) -> bytes:
    return (store / "test-000000.tar").read_bytes()


@PROPS
@given(
    st.integers(0, 100),
    st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), min_size=1, max_size=4),
    st.booleans(),
)
def test_tar_with_flipped_header_bytes(store, scratch, shard_bytes, member, flips, fix):
    data = bytearray(shard_bytes)
    offsets = header_offsets(shard_bytes)
    at = offsets[member % len(offsets)]
    for position, value in flips:
        data[at + position] = value
    if fix:  # past the checksum, into the fields
        fix_checksum(data, at)
    check_tar(scratch, bytes(data))


numbers = st.one_of(
    st.sampled_from(
        [b"-0000001750\0", b"77777777777\0", b"00000000000\0", b"1_000\0", b" 12 \0", b"\0" * 12]
    ),
    st.sampled_from(
        [b"\x80" + b"\0" * 7 + b"\xff\xff\xff\xff", b"\xff" * 12, b"\x80" + b"\0" * 10 + b"\x10"]
    ),
    st.integers(0, 2**88 - 1).map(lambda n: b"\x80" + n.to_bytes(11, "big")),  # base-256 sizes
    st.binary(min_size=12, max_size=12),
)


@PROPS
@given(st.integers(0, 100), numbers, st.sampled_from(b"0xgLK5127\0A"))
def test_tar_with_any_size_and_type(store, scratch, shard_bytes, member, size, kind):
    data = bytearray(shard_bytes)
    offsets = header_offsets(shard_bytes)
    at = offsets[member % len(offsets)]
    data[at + 124 : at + 136] = size
    data[at + 156] = kind
    fix_checksum(data, at)
    check_tar(scratch, bytes(data))


@PROPS
@given(st.integers(0, 10**6))
def test_tar_cut_anywhere(store, scratch, shard_bytes, length):
    check_tar(scratch, shard_bytes[: length % (len(shard_bytes) + 1)])


def pax_tar(records: dict[str, str]) -> bytes:
    """Two samples' worth of members, each after a pax header holding ``records``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3):
            data = CLIP
            info = tarfile.TarInfo(f"{i:09d}.video.npy")
            info.size = len(data)
            info.pax_headers = dict(records)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@PROPS
@given(
    st.dictionaries(
        st.sampled_from(["comment", "path", "size", "mtime", "hdrcharset", "uid"]),
        st.sampled_from(["-1536", "0", "99999999999999", "x", "..", "/etc/passwd", "BINARY", "1" * 300]),
        max_size=3,
    ),
)
def test_tar_with_any_pax_records(scratch, records):
    try:
        data = pax_tar(records)
    except (ValueError, tarfile.TarError, OverflowError):
        return  # tarfile refuses to write it
    check_tar(scratch, data)


def test_a_negative_pax_size_does_not_loop(scratch):
    data = pax_tar({"comment": "abc"})
    at = data.rindex(b"15 comment=abc\n")
    check_tar(scratch, data[:at] + b"15 size=-01536\n" + data[at + 15 :])
