"""Where evaluated videos come from: a store (read through ``pipelines.VideoDataset``) or tensors / ``.npy``.

Every source hands out clips as ``(n, C, T, H, W)`` float32 in [-1, 1] (``uint8 / 127.5 - 1``, as the
loader scales), chosen and windowed as a pure function of ``seed``, plus what metrics need to know about it:
a content ``digest`` (cache keys) and, for stores, the generator name and params (ball radius, digit count).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datagen.errors import DatagenError


def _too_few(name: str, have: int, want: int) -> DatagenError:
    return DatagenError(f"{name} holds {have} clips but the protocol needs {want}; pick a smaller metric")


@dataclass
class ArrayVideos:
    """Videos in memory: ``(N, C, T, H, W)`` floats in [-1, 1] (model output) or ``(N, T, H, W, C)`` uint8."""

    videos: torch.Tensor | np.ndarray
    name: str = "array"
    generator: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x = torch.as_tensor(np.asarray(self.videos) if isinstance(self.videos, np.ndarray) else self.videos)
        if x.ndim != 5:
            raise DatagenError(f"{self.name}: expected 5-D videos, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        self._clips = x.detach().float().cpu()

    @classmethod
    def from_npy(cls, path: str | os.PathLike[str], **kwargs: Any) -> ArrayVideos:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatagenError(f"{path}: cannot read as .npy video array ({exc})") from None
        return cls(array, name=kwargs.pop("name", Path(path).name), **kwargs)

    def __len__(self) -> int:
        return len(self._clips)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self._clips.numpy().tobytes()).hexdigest()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._clips.shape[1:])

    def clips(self, n: int, frames: int | None, *, seed: int) -> torch.Tensor:
        """``n`` distinct videos (a seeded random subset) and a random window of ``frames`` from each."""
        return torch.cat(list(self.iter_clips(n, frames, seed=seed, chunk=max(n, 1))))

    def windows(self, n: int, frames: int | None, *, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(videos picked, first frame of each window, window length) of :meth:`clips`: a pure function of
        (seed, len, clip length, n, frames), so two sources of equal shape pick the same clips and windows
        (what paired metrics, e.g. a reconstruction against its clip, rely on)."""
        total, t_len = len(self._clips), self._clips.shape[2]
        if n > total:
            raise _too_few(self.name, total, n)
        frames = t_len if frames is None else frames
        if frames > t_len:
            raise DatagenError(f"{self.name}: clips have {t_len} frames, the protocol needs {frames}")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(total, size=n, replace=False))
        return pick, rng.integers(0, t_len - frames + 1, size=n), frames

    def iter_clips(self, n: int, frames: int | None, *, seed: int, chunk: int = 64) -> Iterator[torch.Tensor]:
        """The clips of :meth:`clips` in chunks of ``chunk`` (bounded memory for large protocols)."""
        pick, start, frames = self.windows(n, frames, seed=seed)
        for lo in range(0, n, chunk):
            yield torch.stack(
                [self._clips[pick[i], :, start[i] : start[i] + frames] for i in range(lo, min(lo + chunk, n))]
            )


@dataclass
class StoreVideos:
    """A datagen store (folder or manifest.json), read with ``pipelines.VideoDataset``."""

    path: str | os.PathLike[str]
    name: str = ""

    def __post_init__(self) -> None:
        from datagen.api import load_manifest

        self.manifest = load_manifest(Path(self.path))
        self.name = self.name or Path(self.path).name
        self.generator = self.manifest["generator"]["name"]
        self.params = dict(self.manifest.get("params", {}))

    def __len__(self) -> int:
        totals = self.manifest.get("totals") or {}
        return max((int(t.get("n_samples", 0)) for t in totals.values()), default=0)

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def shape(self) -> tuple[int, ...]:
        t, h, w, c = self.manifest["sample"]["video"]["shape"]
        return (c, t, h, w)

    def clips(self, n: int, frames: int | None, *, seed: int) -> torch.Tensor:
        """The first ``n`` clips of the loader's seeded shuffle, each a random ``frames`` window."""
        return torch.cat(list(self.iter_clips(n, frames, seed=seed, chunk=max(n, 1))))

    def iter_clips(self, n: int, frames: int | None, *, seed: int, chunk: int = 64) -> Iterator[torch.Tensor]:
        """The clips of :meth:`clips` in chunks of ``chunk``, kept uint8 until each chunk is handed out."""
        from pipelines.dataset import VideoDataset
        from pipelines.world import World

        if n > len(self):
            raise _too_few(self.name, len(self), n)
        dataset = VideoDataset(self.path, mode="clip", frames=frames, shuffle=True, seed=seed, world=World())
        out: list[torch.Tensor] = []
        done = 0
        for item in dataset:
            out.append(torch.as_tensor(item["video"]))  # (C, T, H, W) uint8
            if len(out) == min(chunk, n - done):
                yield torch.stack(out).float() / 127.5 - 1
                done += len(out)
                out = []
                if done == n:
                    return


VideoSource = ArrayVideos | StoreVideos


def open_source(path: str | os.PathLike[str], name: str | None = None) -> VideoSource:
    """A store folder / manifest.json, or an ``.npy`` array of videos."""
    p = Path(path)
    if p.suffix == ".npy":
        return ArrayVideos.from_npy(p, name=name or p.name)
    return StoreVideos(p, name=name or p.name)
