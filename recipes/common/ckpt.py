"""Checkpoints with full resume, loadable with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and primitive containers only (no pickled objects):

    {"format": 1, "models": {name: state_dict}, "optimizers": {name: state_dict}, "scaler": state_dict,
     "step": int, "epoch": int, "loader": loader.state_dict() (JSON ints), "rng": [per-rank RNG state],
     "config": config_to_dict(cfg), "extra": {...}}

Models are unwrapped from DDP (`.module`) and `torch.compile` (`._orig_mod`) before `state_dict()`, so keys
never carry `module.` / `_orig_mod.` prefixes (nanoGPT's load-time hack is not needed). Rank 0 writes to a
temporary sibling, fsyncs and `os.replace`s it: a crash never leaves a half-written checkpoint under its name.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from datagen.store.atomic import atomic_path

CKPT_FORMAT = 1
C = TypeVar("C")
_CKPT_RE = re.compile(r"^ckpt-(\d{9})\.pt$")


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module under any DDP and torch.compile wrappers (in either order)."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states and named generators, as tensors/primitives."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(k) for k in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": [py_version, list(py_internal), py_gauss],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore what `rng_state()` captured (named generators included)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


def build_checkpoint(
    *,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler | None,
    step: int,
    epoch: int,
    loader_state: Mapping[str, Any] | None,
    rng: list[dict[str, Any]],
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (see the module docstring); `rng` holds one state per rank."""
    return {
        "format": CKPT_FORMAT,
        "models": {name: unwrap(m).state_dict() for name, m in models.items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": int(step),
        "epoch": int(epoch),
        "loader": dict(loader_state or {}),
        "rng": list(rng),
        "config": dict(config),
        "extra": dict(extra or {}),
    }


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write `state` atomically (temp name, fsync, os.replace). Call on rank 0 only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load on CPU with `weights_only=True` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not a recipes checkpoint (format {CKPT_FORMAT})")
    return state


def load_trained(
    path: str | Path,
    defaults: C,
    build: Callable[[C, Mapping[str, Any]], Mapping[str, torch.nn.Module]],
) -> tuple[dict[str, torch.nn.Module], C, dict[str, Any]]:
    """Models for sampling from a checkpoint (``weights_only`` load, on CPU): the config it was trained with
    (``defaults`` overridden by the stored one), ``build(cfg, extra)`` -> ``{name: module}`` (the ones it
    needs, e.g. a generator without its discriminator), each module's weights loaded strictly. Returns
    (models, cfg, extra); ``build`` may raise ValueError to refuse a checkpoint of the wrong kind."""
    from recipes.common.config import apply_overrides

    state = load_checkpoint(path)
    cfg = apply_overrides(defaults, state["config"], f"the config stored in {path}")
    models = dict(build(cfg, state["extra"]))
    if not set(models) <= set(state["models"]):
        raise ValueError(f"{path} holds models {sorted(state['models'])}, this loader needs {sorted(models)}")
    for name, model in models.items():
        model.load_state_dict(state["models"][name])
    return models, cfg, dict(state["extra"])


def restore_checkpoint(
    state: Mapping[str, Any],
    *,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler | None,
    rank: int = 0,
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Load weights, optimizer/scaler state and this rank's RNG state back into live objects."""
    for name, model in models.items():
        unwrap(model).load_state_dict(state["models"][name])
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    if rngs:
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0], generators)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:09d}.pt"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step under `run_dir/checkpoints`, or None."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted(p for p in folder.glob("ckpt-*.pt") if _CKPT_RE.match(p.name)) if folder.is_dir() else []
    return found[-1] if found else None


def latest_step(run_dir: str | Path) -> int:
    """The step of `latest_checkpoint` (read from its name, without loading it), 0 when there is none."""
    last = latest_checkpoint(run_dir)
    match = None if last is None else _CKPT_RE.match(last.name)
    return 0 if match is None else int(match.group(1))


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """`""` -> None, `"auto"` -> latest in the run dir (None if there is none), else the given path."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    return Path(resume)
