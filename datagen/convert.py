"""Convert the fixed Moving MNIST test file `mnist_test_seq.npy` into a store, one sample per sequence.

The canonical file (Srivastava et al., cs.toronto.edu/~nitish/unsupervised_video/) is uint8 of shape
(20, 10000, 64, 64), time first, md5 be083ec986bfe91a449d63653c411eb2. The generator `mnist_test_seq` reads it
memory-mapped (never unpickling) and yields sequence i as a (20, 64, 64, 1) clip with meta
{index, source, source_index}. Its params hold the file's absolute path and sha256, so a store records exactly
which file it came from, and a changed file is refused rather than silently converted.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datagen.errors import DatagenError
from datagen.store.atomic import file_sha256
from datagen.store.sample import Sample, sample_key

TEST_SEQ_FRAMES = 20
TEST_SEQ_SIZE = 64
CHUNK = 256  # sequences read from the memory map per block


def open_test_seq(path: str | os.PathLike) -> np.ndarray:
    """Memory-map `path` and check the layout: uint8 (20, N, 64, 64), time first."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DatagenError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise DatagenError(f"{path}: not a readable .npy array ({e})") from None
    expected = f"uint8 ({TEST_SEQ_FRAMES}, N, {TEST_SEQ_SIZE}, {TEST_SEQ_SIZE}) (time first)"
    if not isinstance(data, np.ndarray):
        raise DatagenError(f"{path}: expected a single .npy array of {expected}, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise DatagenError(f"{path}: expected {expected}, got dtype {data.dtype}")
    shape = data.shape
    if data.ndim != 4 or shape[0] != TEST_SEQ_FRAMES or shape[2:] != (TEST_SEQ_SIZE, TEST_SEQ_SIZE):
        hint = ""
        if data.ndim == 4 and shape[1] == TEST_SEQ_FRAMES and shape[2:] == (TEST_SEQ_SIZE, TEST_SEQ_SIZE):
            hint = "; this looks sequence-first, transpose it to time first"
        raise DatagenError(f"{path}: expected {expected}, got shape {shape}{hint}")
    if shape[1] == 0:
        raise DatagenError(f"{path}: holds no sequences")
    return data


@functools.lru_cache(maxsize=8)
def _cached_sha256(path: str, _stamp: tuple[int, int]) -> str:
    return file_sha256(Path(path))


def _sha256(path: str) -> str:
    st = os.stat(path)
    return _cached_sha256(path, (st.st_mtime_ns, st.st_size))


class MnistTestSeq:
    """The `mnist_test_seq` generator: params {path, sha256, n_sequences}; only `path` needs to be given."""

    name = "mnist_test_seq"
    version = "1"

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = set(params) - {"path", "sha256", "n_sequences"}
        if unknown:
            raise DatagenError(f"unknown mnist_test_seq parameter(s): {', '.join(sorted(unknown))}")
        if not params.get("path"):
            raise DatagenError("mnist_test_seq needs the path of the .npy file")
        path = str(Path(params["path"]).expanduser().resolve())
        n = open_test_seq(path).shape[1]
        digest = _sha256(path)
        if params.get("sha256") not in (None, digest):
            raise DatagenError(
                f"{path}: sha256 {digest[:16]}... differs from the recorded {params['sha256'][:16]}..."
            )
        if params.get("n_sequences") not in (None, n):
            raise DatagenError(f"{path}: holds {n} sequences, {params['n_sequences']} were recorded")
        return {"path": path, "sha256": digest, "n_sequences": n}

    def sample_shape(self, params: dict[str, Any]) -> tuple[int, int, int, int]:
        return (TEST_SEQ_FRAMES, TEST_SEQ_SIZE, TEST_SEQ_SIZE, 1)

    def generate(self, params: dict[str, Any], seed: int, start: int, stop: int) -> Iterator[Sample]:
        """Sequences [start, stop) as clips; `seed` is unused (the content is fixed by the file)."""
        data = open_test_seq(params["path"])
        if data.shape[1] != params["n_sequences"]:
            raise DatagenError(f"{params['path']}: changed since it was validated (shape {data.shape})")
        if not 0 <= start <= stop <= data.shape[1]:
            raise DatagenError(
                f"sequences [{start}, {stop}) out of range for {data.shape[1]} in {params['path']}"
            )
        for lo in range(start, stop, CHUNK):
            hi = min(lo + CHUNK, stop)
            block = np.ascontiguousarray(data[:, lo:hi].transpose(1, 0, 2, 3))[
                ..., None
            ]  # (k, 20, 64, 64, 1)
            for i in range(lo, hi):
                meta = {"index": i, "source": "mnist_test_seq", "source_index": i}
                yield Sample(sample_key(i), block[i - lo], meta)


MNIST_TEST_SEQ = MnistTestSeq()
