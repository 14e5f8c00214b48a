"""GLO's per-clip latent codes, on disk, indexed by the store's global sample index.

GLO learns one code per training clip. Holding them as an ``nn.Embedding`` with a dense optimiser (as GLANN
and GLANN-VIDEO do) touches every row at every step; with 50,000+ clips that is wasted work, and with
millions it no longer fits. Here the table is a float32 ``.npy`` file opened with ``np.memmap`` (the OS pages
in only the rows a batch touches), next to the Adam moments of each row, and every step updates only the
batch's rows ("lazy" Adam, as ``torch.optim.SparseAdam``). Row ``i`` belongs to the clip whose key is
``sample_key(i)``.

Layout of a latent directory (all plain ``.npy``, readable with ``np.load(..., allow_pickle=False)``)::

    meta.json      {"format": 1, "n": N, "nz": D, "seed": S, "index": "global sample index"}
    z.npy          (N, D) float32   the codes, every row on the unit sphere
    adam_m.npy     (N, D) float32   Adam first moment per row
    adam_v.npy     (N, D) float32   Adam second moment per row
    adam_t.npy     (N,)   int64     number of updates each row has had (its own bias correction)

Differences from the references, on purpose: the Adam step count is per row, so a row's bias correction
matches the number of times it was actually updated (SparseAdam and the references count optimiser steps);
rows are put back on the sphere right after each update (the references normalise once per epoch and inside
the generator, which sees the same points either way); ``reset_moments`` reproduces the references'
re-creation of the optimiser at every epoch when asked.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datagen.errors import DatagenError
from datagen.store.atomic import write_json_atomic

FORMAT = 1
_INIT_CHUNK = (
    65536  # rows drawn per RNG stream at creation; fixed so row content never depends on anything else
)
_FILES = ("z.npy", "adam_m.npy", "adam_v.npy", "adam_t.npy")


def to_sphere(z: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (a zero row stays zero instead of becoming NaN)."""
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.maximum(norm, 1e-12)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class LatentStore:
    """A memory-mapped latent table plus per-row Adam state; see the module docstring for the layout."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DatagenError(f"{self.path}: not a latent directory (no meta.json)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT:
            raise DatagenError(f"{self.path}: latent format {self.meta.get('format')!r}, expected {FORMAT}")
        self.n, self.nz = int(self.meta["n"]), int(self.meta["nz"])
        mode = "r" if readonly else "r+"
        self.z = np.load(self.path / "z.npy", mmap_mode=mode, allow_pickle=False)
        self.m = np.load(self.path / "adam_m.npy", mmap_mode=mode, allow_pickle=False)
        self.v = np.load(self.path / "adam_v.npy", mmap_mode=mode, allow_pickle=False)
        self.t = np.load(self.path / "adam_t.npy", mmap_mode=mode, allow_pickle=False)
        table = (self.n, self.nz)
        for name, arr, shape in (("z", self.z, table), ("adam_m", self.m, table), ("adam_v", self.v, table),
                                 ("adam_t", self.t, (self.n,))):  # fmt: skip
            if arr.shape != shape:
                raise DatagenError(f"{self.path}/{name}.npy has shape {arr.shape}, meta says {shape}")

    @classmethod
    def create(
        cls, path: str | os.PathLike, n: int, nz: int, *, seed: int, init_std: float = 0.01
    ) -> LatentStore:
        """New table of ``n`` codes: N(0, init_std) (GLANN's Embedding init) projected onto the unit sphere.

        Row content depends only on ``(seed, row)``: rows are drawn in fixed chunks, one RNG stream per chunk.
        Written under a temporary name and renamed, so a crash never leaves a half-made directory behind.
        """
        if n < 1 or nz < 1:
            raise ValueError(f"need n >= 1 and nz >= 1, got n={n}, nz={nz}")
        path = Path(path)
        if path.exists():
            raise DatagenError(f"{path} already exists; open it with LatentStore({str(path)!r}) or remove it")
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        z = np.lib.format.open_memmap(tmp / "z.npy", mode="w+", dtype=np.float32, shape=(n, nz))
        for c, start in enumerate(range(0, n, _INIT_CHUNK)):
            stop = min(start + _INIT_CHUNK, n)
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(c,)))
            rows = rng.normal(0.0, init_std, size=(stop - start, nz))  # a prefix of the chunk's stream
            z[start:stop] = to_sphere(rows).astype(np.float32)
        z.flush()
        del z
        for name in ("adam_m.npy", "adam_v.npy"):
            np.lib.format.open_memmap(tmp / name, mode="w+", dtype=np.float32, shape=(n, nz)).flush()
        np.lib.format.open_memmap(tmp / "adam_t.npy", mode="w+", dtype=np.int64, shape=(n,)).flush()
        for name in _FILES:
            _fsync_file(tmp / name)
        meta = {"format": FORMAT, "n": n, "nz": nz, "seed": seed, "index": "global sample index"}
        write_json_atomic(tmp / "meta.json", meta)
        os.replace(tmp, path)
        return cls(path)

    def __len__(self) -> int:
        return self.n

    def _check_index(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            bad = index[(index < 0) | (index >= self.n)][0]
            raise DatagenError(f"sample index {bad} outside the latent table of {self.n} rows ({self.path})")
        return index

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Codes of the given global sample indices, ``(B, nz)`` float32 (a copy)."""
        return np.array(self.z[self._check_index(index)], dtype=np.float32)

    def assign(self, index: np.ndarray, z: np.ndarray) -> None:
        """Set the codes of ``index`` to ``z`` projected onto the sphere (a data-driven init, e.g. PCA)."""
        index = self._check_index(index)
        z = np.asarray(z, dtype=np.float64).reshape(len(index), self.nz)
        self.z[index] = to_sphere(z).astype(np.float32)

    def adam_step(
        self,
        index: np.ndarray,
        grad: np.ndarray,
        *,
        lr: float,
        betas: tuple[float, float] = (0.5, 0.999),
        eps: float = 1e-8,
    ) -> None:
        """One lazy Adam step on the rows in ``index`` (duplicates add up), then back onto the sphere."""
        index = self._check_index(index)
        grad = np.asarray(grad, dtype=np.float32).reshape(len(index), self.nz)
        rows, inverse = np.unique(index, return_inverse=True)
        g = np.zeros((len(rows), self.nz), dtype=np.float32)
        np.add.at(g, inverse, grad)
        b1, b2 = betas
        t = self.t[rows] + 1
        m = b1 * self.m[rows] + (1 - b1) * g
        v = b2 * self.v[rows] + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t[:, None])
        v_hat = v / (1 - b2 ** t[:, None])
        z = self.z[rows] - lr * m_hat / (np.sqrt(v_hat) + eps)
        self.z[rows] = to_sphere(z).astype(np.float32)
        self.m[rows], self.v[rows], self.t[rows] = m, v, t

    def reset_moments(self) -> None:
        """Forget the Adam state (the references re-create their optimisers at every epoch)."""
        for arr in (self.m, self.v, self.t):
            arr[:] = 0

    def iter_chunks(self, chunk: int = 65536) -> Iterator[np.ndarray]:
        """The codes in row order, ``chunk`` rows at a time (for passes over tables larger than memory)."""
        for start in range(0, self.n, chunk):
            yield np.array(self.z[start : start + chunk], dtype=np.float32)

    def read_all(self) -> np.ndarray:
        """All codes as one in-memory array (stage 2 needs them; 50,000 x 100 floats is 20 MB)."""
        return np.array(self.z, dtype=np.float32)

    def flush(self) -> None:
        for arr in (self.z, self.m, self.v, self.t):
            if isinstance(arr, np.memmap) and arr.mode != "r":
                arr.flush()

    def snapshot(self, dest: str | os.PathLike) -> Path:
        """Durable copy of the table and its optimiser state at ``dest`` (temp name, fsync, rename).

        Checkpoints point at a snapshot taken at the same step, so a resumed run pairs the generator with the
        exact codes it was trained with, even though the working table kept changing after the checkpoint.
        """
        self.flush()
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in (*_FILES, "meta.json"):
            shutil.copyfile(self.path / name, tmp / name)
            _fsync_file(tmp / name)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest

    @classmethod
    def restore(cls, snapshot: str | os.PathLike, path: str | os.PathLike) -> LatentStore:
        """Replace the working table at ``path`` with a copy of ``snapshot`` and open it for writing."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(snapshot, tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return cls(path)
