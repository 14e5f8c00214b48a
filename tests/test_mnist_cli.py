"""`datagen mnist` and `datagen convert mnist-test-seq` end to end: real stores, read back, errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

import datagen.cli.mnist  # noqa: F401  (registers the commands, should datagen.cli not import it yet)
from datagen.cli import main
from datagen.convert import MNIST_TEST_SEQ
from datagen.errors import DatagenError
from datagen.sim.mnist import MNIST
from datagen.sources import mnist as src
from datagen.store.manifest import load_manifest
from datagen.store.readers import iter_samples
from datagen.store.wds import meta_bytes


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VIDEOGEN_CACHE", str(tmp_path_factory.getbasetemp() / "videogen-cache"))


def run(*args) -> int:
    return main([str(a) for a in args])


def read_store(out: Path, fmt: str = "wds") -> list:
    shards = [s for s in load_manifest(out)["shards"] if s["format"] == fmt]
    return [x for s in shards for x in iter_samples(out / s["path"], fmt)]


def test_mnist_store_matches_the_generator_in_both_formats(tmp_path):
    out = tmp_path / "m"
    args = ["mnist", "--n", 23, "--frames", 6, "--digits", 3, "--shard-size", 10, "--seed", 4, "--quiet"]
    assert run(*args, "--out", out, "--format", "both", "--workers", 0) == 0
    m = load_manifest(out)
    assert m["generator"] == {"name": "mnist", "version": "2"} and m["sample"]["video"]["shape"] == [
        6,
        64,
        64,
        1,
    ]
    assert m["params"]["source"]["kind"] == "builtin" and m["params"]["source"]["n"] == 4500
    expected = list(MNIST.generate(m["params"], 4, 0, 23))
    for fmt in ("wds", "hdf5"):
        got = read_store(out, fmt)
        assert [s.key for s in got] == [s.key for s in expected]
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a.video, b.video)
            assert a.meta == json.loads(meta_bytes(b.meta))  # what was stored is what was made
    assert run("verify", out) == 0


@pytest.mark.integration
def test_same_bytes_in_process_and_on_dask_workers(tmp_path):
    args = ["mnist", "--n", 12, "--frames", 5, "--shard-size", 5, "--seed", 8, "--quiet", "--overlap", "sum"]
    assert run(*args, "--out", tmp_path / "w0", "--workers", 0) == 0
    assert run(*args, "--out", tmp_path / "w2", "--workers", 2) == 0
    hashes = [{s["path"]: s["sha256"] for s in load_manifest(tmp_path / w)["shards"]} for w in ("w0", "w2")]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 3
    assert load_manifest(tmp_path / "w0")["digest"] == load_manifest(tmp_path / "w2")["digest"]


def idx_file(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_mnist_from_idx_files_records_the_digits(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, n in (("train", 40), ("t10k", 15)):
        idx_file(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        idx_file(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    out = tmp_path / "m"
    args = ["mnist", "--n", 6, "--frames", 3, "--seed", 1, "--workers", 0, "--quiet"]
    assert run(*args, "--mnist", folder, "--split", "test", "--out", out) == 0
    source = load_manifest(out)["params"]["source"]
    assert source["kind"] == "idx" and source["split"] == "test" and source["n"] == 15
    assert source["sha256"] == src.load_digits(src.source_spec(folder, split="test")).descriptor["sha256"]
    assert all(max(s.meta["digit_ids"]) < 15 for s in read_store(out))
    idx_file(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 15, dtype=np.uint8))  # digits changed
    with pytest.raises(DatagenError, match="the digit file changed"):
        MNIST.validate(load_manifest(out)["params"])


def test_convert_mnist_test_seq_round_trip(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (20, 50, 64, 64), dtype=np.uint8)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, data)
    params = MNIST_TEST_SEQ.validate({"path": str(path)})
    assert params["n_sequences"] == 50 and params["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for s in MNIST_TEST_SEQ.generate(params, 0, 45, 50):
        i = s.meta["index"]
        assert s.meta == {"index": i, "source": "mnist_test_seq", "source_index": i}
        np.testing.assert_array_equal(s.video, data[:, i, :, :, None])
    out = tmp_path / "store"
    assert run("convert", "mnist-test-seq", path, "--out", out, "--shard-size", 16, "--format", "both",
               "--workers", 0, "--quiet") == 0  # fmt: skip
    m = load_manifest(out)
    assert m["generator"]["name"] == "mnist_test_seq" and m["sample"]["video"]["shape"] == [20, 64, 64, 1]
    assert m["totals"]["wds"]["n_samples"] == m["totals"]["hdf5"]["n_samples"] == 50
    for fmt in ("wds", "hdf5"):
        videos = np.stack([s.video[..., 0] for s in read_store(out, fmt)], axis=1)  # back to (20, N, 64, 64)
        np.testing.assert_array_equal(videos, data)
    assert run("verify", out) == 0
    again = tmp_path / "again"
    assert run("convert", "mnist-test-seq", path, "--out", again, "--shard-size", 16, "--format", "both",
               "--workers", 0, "--quiet") == 0  # fmt: skip
    assert load_manifest(again)["digest"] == m["digest"]  # same file, same dataset digest


def bad_npy(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.npy"
    shapes = {"float": ((20, 3, 64, 64), np.float32), "sequence_first": ((3, 20, 64, 64), np.uint8),
              "frames": ((10, 3, 64, 64), np.uint8), "3d": ((20, 64, 64), np.uint8),
              "empty": ((20, 0, 64, 64), np.uint8)}  # fmt: skip
    if kind in shapes:
        np.save(path, np.zeros(*shapes[kind]))
    elif kind == "object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "text":
        path.write_text("not numpy")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("float", "got dtype float32"),
        ("sequence_first", "looks sequence-first"),
        ("frames", "got shape (10, 3, 64, 64)"),
        ("3d", "got shape (20, 64, 64)"),
        ("empty", "holds no sequences"),
        ("object", "not a readable .npy array"),
        ("text", "not a readable .npy array"),
        ("missing", "no such file"),
    ],
)
def test_convert_rejects_other_layouts(tmp_path, capsys, kind, message):
    out = tmp_path / "store"
    assert run("convert", "mnist-test-seq", bad_npy(tmp_path, kind), "--out", out, "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--digits", "0"], "digits must be an integer >= 1"),
        (["--size", "20"], "digits of 28x28 do not fit a 20x20 canvas"),
        (["--frames", "0"], "frames must be an integer >= 1"),
        (["--overlap", "avg"], "overlap must be one of max, sum"),
        (["--speed", "-1"], "speed must be a finite number >= 0"),
        (["--split", "val"], "split must be one of train, test"),
        (["--mnist", "BAD", "--download"], "either --mnist PATH or --download"),
        (["--mnist", "BAD"], "bad magic number"),
        (["--n", "0"], "--n must be at least 1"),
    ],
)
def test_bad_mnist_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x08\x03\0\0" + bytes(100))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\0")
    out = tmp_path / "store"
    args = [str(bad) if a == "BAD" else a for a in args]
    assert run("mnist", "--out", out, "--quiet", "--workers", 0, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_download_offline_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDEOGEN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(src, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))  # nothing listens there
    assert run("mnist", "--download", "--out", tmp_path / "o", "--quiet", "--workers", 0) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download MNIST") and "offline?" in lines[0]
    assert not (tmp_path / "o").exists()
