"""What one stored sample is: a uint8 clip, its ground truth, and a dot-free key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datagen.store.format import KEY_WIDTH, sample_key

__all__ = ["KEY_WIDTH", "Sample", "sample_key"]


@dataclass(frozen=True)
class Sample:
    """One clip: `video` is uint8 (T, H, W, C) channel-last; `meta` is JSON-serialisable ground truth."""

    key: str
    video: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "." in self.key or "/" in self.key or not self.key:
            raise ValueError(f"sample key {self.key!r} must be non-empty and contain no '.' or '/'")
        if self.video.dtype != np.uint8 or self.video.ndim != 4:
            raise ValueError(f"video must be uint8 (T, H, W, C), got {self.video.dtype} {self.video.shape}")
