"""Batches for recipes, only through `pipelines` (VideoDataset + make_loader), and the tiny --smoke store.

`epoch_batches` is the resumable epoch loop every recipe uses: it calls `set_epoch(e)` at the start of each
epoch except the one a checkpoint resumed in the middle of (the loader's restored position is kept).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from datagen.api import cache_dir
from recipes.common.config import ConfigError, TrainConfig

# The --smoke store: a few short 30x30 one-ball clips (FrameGAN's frame size), small enough to build in ~1 s.
SMOKE_GENERATOR = "balls"
SMOKE_PARAMS: dict[str, Any] = {"n_balls": 1, "size": 30, "frames": 32}
SMOKE_SAMPLES = 32
SMOKE_SHARD_SIZE = 16
SMOKE_SEED = 0


def smoke_store(
    root: str | Path | None = None, *, params: Mapping[str, Any] | None = None, n: int = SMOKE_SAMPLES
) -> Path:
    """Generate (once; later calls reuse it) a tiny balls store with datagen and return its root."""
    params = dict(SMOKE_PARAMS if params is None else params)
    tag = hashlib.sha256(json.dumps([SMOKE_GENERATOR, params, n], sort_keys=True).encode()).hexdigest()[:12]
    out = Path(root) if root is not None else cache_dir("smoke") / f"{SMOKE_GENERATOR}-{tag}"
    if (out / "manifest.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # torchrun ranks (or parallel test runs) may ask at once: one generates, the others wait and reuse it.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():
            _generate_smoke_store(out, params, n)
    return out


def _generate_smoke_store(out: Path, params: dict[str, Any], n: int) -> None:
    from datagen.api import make_store

    make_store(out, SMOKE_GENERATOR, params, n=n, seed=SMOKE_SEED, shard_size=SMOKE_SHARD_SIZE, resume=True)


def data_source(cfg: TrainConfig) -> str:
    """The store the run reads: `cfg.data`, or the generated tiny store under --smoke."""
    if cfg.data:
        return cfg.data
    if cfg.smoke:
        return str(smoke_store())
    raise ValueError("no data: pass --data STORE_ROOT (or --smoke for a tiny generated store)")


def build_loader(
    cfg: TrainConfig,
    run: Any,
    *,
    mode: str,
    frames: int | None = None,
    stride: int = 1,
    shuffle: bool = True,
    drop_last: bool = True,
    with_meta: bool = False,
    fields: tuple[str, ...] = ("video",),
) -> Any:
    """A resumable loader of dict batches {"key", "video" float32 in [-1, 1] on run.device}, plus the
    store's extra arrays named in `fields` (e.g. "sensed", as stored).

    `drop_last` defaults to True: a ragged last batch (size 1 in the worst case) breaks BatchNorm in training.
    """
    from pipelines.dataset import VideoDataset
    from pipelines.loader import make_loader

    dataset = VideoDataset(
        data_source(cfg),
        mode=mode,
        frames=frames,
        stride=stride,
        shuffle=shuffle,
        seed=cfg.seed,
        with_meta=with_meta,
        fields=fields,
        interleave=cfg.interleave,
    )
    if drop_last and len(dataset) < cfg.batch_size:  # every epoch would be empty: the run would never step
        raise ConfigError(
            f"{cfg.data}: {len(dataset)} samples per rank, fewer than one batch of {cfg.batch_size} "
            "(incomplete batches are dropped in training); use a bigger store or a smaller --batch-size"
        )
    return make_loader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=run.device,
        dtype=torch.float32,
        drop_last=drop_last,
    )


def epoch_batches(
    loader: Any, start_epoch: int, epochs: int, *, resumed: bool = False
) -> Iterator[tuple[int, Any]]:
    """Yield (epoch, batch) for epochs [start_epoch, epochs); a resumed epoch keeps its position."""
    for epoch in range(start_epoch, epochs):
        if hasattr(loader, "set_epoch") and not (resumed and epoch == start_epoch):
            loader.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
