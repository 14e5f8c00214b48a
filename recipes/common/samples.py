"""Sample grids (PNG) for frames and animated GIF grids for videos, from tensors in [-1, 1].

Written atomically with PIL; frames are laid out row-major with a 1-pixel gap so samples stay separable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datagen.store.atomic import atomic_path


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float tensor -> uint8 numpy array of the same shape (rounded, clipped)."""
    x = x.detach().float().cpu().clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).numpy()


def tile(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) uint8 -> (rows*(H+pad)-pad, cols*(W+pad)-pad, C) grid, row-major, black gaps."""
    n, c, h, w = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = images[i].transpose(
            1, 2, 0
        )
    return grid


def _pil(grid: np.ndarray) -> Image.Image:
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _pil(tile(to_uint8(images), nrow)).save(tmp, format="PNG")
    return path


def save_video_gif(videos: torch.Tensor, path: str | Path, nrow: int | None = None, fps: int = 10) -> Path:
    """Save (N, C, T, H, W) videos in [-1, 1] as one looping animated GIF of per-frame grids."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames_u8 = to_uint8(videos)  # (N, C, T, H, W)
    frames = [_pil(tile(frames_u8[:, :, t], nrow)) for t in range(frames_u8.shape[2])]
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=max(1, round(1000 / fps)),
            loop=0,
        )
    return path
