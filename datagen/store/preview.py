"""Look at a store: a grid of its first clips as an animated GIF or a PNG of filmstrips."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from datagen.errors import DatagenError
from datagen.store.manifest import load_manifest
from datagen.store.readers import iter_samples

MAX_STRIP_FRAMES = 12


def first_clips(store: Path, count: int) -> list[np.ndarray]:
    manifest = load_manifest(store)
    shards = sorted(manifest["shards"], key=lambda s: (s["format"] != "wds", s["path"]))
    fmt = shards[0]["format"] if shards else None
    clips = (
        s.video for e in shards if e["format"] == fmt for s in iter_samples(Path(store) / e["path"], fmt)
    )
    return list(itertools.islice(clips, count))


def tile(clips: list[np.ndarray], scale: int, pad: int = 2) -> np.ndarray:
    """(K, T, H, W, C) -> (T, rows*(H+pad), cols*(W+pad), C) near-square grid, zoomed by `scale`."""
    k, t, h, w, ch = np.stack(clips).shape
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    grid = np.zeros((t, rows * (h + pad), cols * (w + pad), ch), np.uint8)
    for i, clip in enumerate(clips):
        r, col = divmod(i, cols)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = clip
    return grid.repeat(scale, axis=1).repeat(scale, axis=2)


def filmstrips(clips: list[np.ndarray], scale: int, pad: int = 2) -> np.ndarray:
    """One row per clip, up to MAX_STRIP_FRAMES evenly spaced frames per row."""
    video = np.stack(clips)
    k, t, h, w, ch = video.shape
    idx = np.unique(np.linspace(0, t - 1, min(t, MAX_STRIP_FRAMES)).round().astype(int))
    img = np.zeros((k * (h + pad), len(idx) * (w + pad), ch), np.uint8)
    for i in range(k):
        for j, f in enumerate(idx):
            img[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = video[i, f]
    return img.repeat(scale, axis=0).repeat(scale, axis=1)


def write_preview(store: Path, out: Path, *, count: int = 16, scale: int | None = None) -> Path:
    from PIL import Image

    out = Path(out)
    if out.suffix.lower() not in {".gif", ".png"}:
        raise DatagenError(f"preview output must end in .gif or .png, got {out.name}")
    if count < 1:
        raise DatagenError(f"--count must be at least 1, got {count}")
    clips = first_clips(store, count)
    if not clips:
        raise DatagenError(f"store {store} holds no clips")
    h = clips[0].shape[1]
    scale = scale or max(1, round(96 / h))

    def image(a: np.ndarray) -> Image.Image:
        return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        image(filmstrips(clips, scale)).save(out)
    else:
        frames = [image(f) for f in tile(clips, scale)]
        frames[0].save(out, save_all=True, append_images=frames[1:], duration=80, loop=0)
    return out
