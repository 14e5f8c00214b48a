"""Look at a store: a grid of its first clips as an animated GIF or a PNG of filmstrips; with masks, each
object's pixels tinted in its own colour over the frames (`datagen preview --fields mask`).

What a preview allocates is planned from the manifest before anything is read (:func:`plan_preview`): the
clips, the grid and the image encoder's copy of it must fit MAX_PREVIEW_BYTES, or the command says so in one
line. Reading is bounded too: a clip whose stored size disagrees with the manifest is refused before it is
loaded (a store from a stranger can lie).
"""

from __future__ import annotations

import itertools
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datagen.errors import DatagenError
from datagen.store.atomic import format_bytes
from datagen.store.format import schema_fields
from datagen.store.hdf5 import read_hdf5
from datagen.store.manifest import load_manifest
from datagen.store.wds import read_wds

MAX_STRIP_FRAMES = 12
PAD = 2
MAX_PREVIEW_BYTES = 1 << 30
"""Most memory one preview may plan for: the clips read, the grid and the encoder's copy of the image."""
PER_CLIP_BYTES = 1024
"""Python objects per clip read (array header, Sample, meta dict), on top of its pixels."""
GIF_MAX_SIDE = 65535
"""GIF stores width and height in 16 bits."""
TARGET_SIDE = 96
"""The default --scale zooms a clip to about this many pixels a side."""
PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]],
    np.float32,
)  # fmt: skip
"""Mask colours: object i gets PALETTE[i % 10] (distinct hues, after Sasha Trubetskoy's list)."""
TINT = 0.6
"""Share of an object's colour in its pixels (the rest is the frame's brightness)."""


def preview_masks(fields: str) -> bool:
    """`--fields video` (frames) or `mask` / `video,mask` (masks in colour); anything else is refused."""
    names = {f.strip() for f in fields.split(",") if f.strip()} - {"video"}
    if not names <= {"mask"}:
        raise DatagenError(f"preview shows video or mask, got --fields {fields!r}")
    return bool(names)


def overlay(clip: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(T, H, W, C) uint8 frames and (T, H, W) ids -> (T, H, W, 3): each object tinted in its colour."""
    rgb = clip.astype(np.float32)
    rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb[..., :3]
    ids = mask.astype(np.int64)
    colour = PALETTE[(ids - 1) % len(PALETTE)]
    brightness = rgb.max(axis=-1, keepdims=True) / 255
    tinted = (1 - TINT) * rgb + TINT * colour * np.maximum(brightness, 0.5)
    return np.where(ids[..., None] > 0, tinted, rgb).round().astype(np.uint8)


@dataclass(frozen=True)
class PreviewPlan:
    """What a preview reads and makes: `image` is (T, H, W, C) for a GIF, (H, W, C) for a PNG."""

    fmt: str
    count: int
    scale: int
    clip: tuple[int, int, int, int]
    image: tuple[int, ...]
    bytes: int


def _grid(count: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def _strip_frames(t: int) -> np.ndarray:
    return np.unique(np.linspace(0, t - 1, min(t, MAX_STRIP_FRAMES)).round().astype(int))


def _image_shape(kind: str, count: int, clip: tuple[int, int, int, int], scale: int) -> tuple[int, ...]:
    t, h, w, c = clip
    if kind == ".png":
        return (count * (h + PAD) * scale, len(_strip_frames(t)) * (w + PAD) * scale, c)
    rows, cols = _grid(count)
    return (t, rows * (h + PAD) * scale, cols * (w + PAD) * scale, c)


def _plan_bytes(count: int, clip: tuple[int, int, int, int], image: tuple[int, ...]) -> int:
    """Clips read and stacked, the grid, its zoomed copy and the encoder's copy of that."""
    return count * (2 * math.prod(clip) + PER_CLIP_BYTES) + 3 * math.prod(image)


def plan_preview(
    manifest: dict, kind: str, *, count: int, scale: int | None, masks: bool = False
) -> PreviewPlan:
    """Check a preview of `count` clips at `scale` (None: about TARGET_SIDE px a clip, less if needed to
    fit) against MAX_PREVIEW_BYTES and the image format's limits; DatagenError in one line otherwise."""
    if count < 1:
        raise DatagenError(f"--count must be at least 1, got {count}")
    if scale is not None and scale < 1:
        raise DatagenError(f"--scale must be at least 1, got {scale}")
    totals = manifest["totals"]
    fmt = "wds" if "wds" in totals else min(totals, default=None)
    available = totals[fmt]["n_samples"] if fmt else 0
    if not available:
        raise DatagenError("the store holds no clips")
    count = min(count, available)
    shape = manifest["sample"]["video"]["shape"]
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise DatagenError(f"cannot plan a preview: the manifest's clip shape is {shape}")
    clip = (shape[0], shape[1], shape[2], shape[3])
    if masks and "mask" not in schema_fields(manifest["sample"]):
        raise DatagenError("the store has no masks (made without --fields mask)")
    drawn = (
        (clip[0], clip[1], clip[2], 3) if masks else clip
    )  # the masks (1 byte a pixel) read with the clips
    scales = [scale] if scale is not None else range(max(1, round(TARGET_SIDE / clip[1])), 0, -1)
    for s in scales:
        image = _image_shape(kind, count, drawn, s)
        need = _plan_bytes(count, drawn, image)
        side = max(image[-3], image[-2])
        if need <= MAX_PREVIEW_BYTES and not (kind == ".gif" and side > GIF_MAX_SIDE):
            return PreviewPlan(fmt, count, s, clip, image, need)
    size = f"{image[-2]} x {image[-3]} px"
    if kind == ".gif" and side > GIF_MAX_SIDE:
        why = f"would be {size}, over GIF's {GIF_MAX_SIDE} px a side"
    else:
        limit = format_bytes(MAX_PREVIEW_BYTES)
        why = f"({size}) would take about {format_bytes(need)}, over the {limit} limit"
    raise DatagenError(f"a preview of {count} clips {clip} at scale {s} {why}; lower --count or --scale")


def first_clips(store: Path, manifest: dict, plan: PreviewPlan, masks: bool = False) -> list[np.ndarray]:
    """The store's first `plan.count` clips (with `masks`: tinted by them); a clip larger than the
    manifest's shape is refused unread."""
    shards = sorted((s for s in manifest["shards"] if s["format"] == plan.fmt), key=lambda s: s["path"])
    limit = math.prod(plan.clip)
    read = read_wds if plan.fmt == "wds" else read_hdf5
    out: list[np.ndarray] = []
    for e in shards:
        path = Path(store) / e["path"]
        try:
            for s in itertools.islice(read(path, max_clip_bytes=limit), plan.count - len(out)):
                if s.video.shape != plan.clip:
                    raise DatagenError(
                        f"{path}: clip {s.key} is {s.video.shape}, the manifest says {plan.clip}"
                    )
                if masks:
                    mask = s.fields.get("mask")
                    if mask is None or mask.shape != plan.clip[:3]:
                        raise DatagenError(f"{path}: clip {s.key} has no mask of {plan.clip[:3]}")
                    out.append(overlay(s.video, mask))
                else:
                    out.append(s.video)
        except (OSError, ValueError, KeyError, tarfile.TarError) as err:
            raise DatagenError(f"cannot read {path}: {err}") from None
        if len(out) == plan.count:
            break
    return out


def tile(clips: list[np.ndarray], scale: int, pad: int = PAD) -> np.ndarray:
    """(K, T, H, W, C) -> (T, rows*(H+pad), cols*(W+pad), C) near-square grid, zoomed by `scale`."""
    k, t, h, w, ch = np.stack(clips).shape
    rows, cols = _grid(k)
    grid = np.zeros((t, rows * (h + pad), cols * (w + pad), ch), np.uint8)
    for i, clip in enumerate(clips):
        r, col = divmod(i, cols)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = clip
    return grid.repeat(scale, axis=1).repeat(scale, axis=2)


def filmstrips(clips: list[np.ndarray], scale: int, pad: int = PAD) -> np.ndarray:
    """One row per clip, up to MAX_STRIP_FRAMES evenly spaced frames per row."""
    video = np.stack(clips)
    k, t, h, w, ch = video.shape
    idx = _strip_frames(t)
    img = np.zeros((k * (h + pad), len(idx) * (w + pad), ch), np.uint8)
    for i in range(k):
        for j, f in enumerate(idx):
            img[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = video[i, f]
    return img.repeat(scale, axis=0).repeat(scale, axis=1)


def write_preview(
    store: Path, out: Path, *, count: int = 16, scale: int | None = None, masks: bool = False
) -> Path:
    """Write the preview image; its size is checked (:func:`plan_preview`) before any clip is read."""
    from PIL import Image

    out = Path(out)
    kind = out.suffix.lower()
    if kind not in {".gif", ".png"}:
        raise DatagenError(f"preview output must end in .gif or .png, got {out.name}")
    manifest = load_manifest(store)
    plan = plan_preview(manifest, kind, count=count, scale=scale, masks=masks)
    clips = first_clips(store, manifest, plan, masks)
    if not clips:
        raise DatagenError(f"store {store} holds no clips")

    def image(a: np.ndarray) -> Image.Image:
        return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)

    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".png":
        image(filmstrips(clips, plan.scale)).save(out)
    else:
        frames = [image(f) for f in tile(clips, plan.scale)]
        frames[0].save(out, save_all=True, append_images=frames[1:], duration=80, loop=0)
    return out
