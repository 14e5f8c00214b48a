"""What one stored sample is: a uint8 clip, its ground truth, and a dot-free key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

KEY_WIDTH = 9


def sample_key(index: int) -> str:
    """Zero-padded global index: sorts like the index, and has no dot (webdataset splits keys at dots)."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return f"{index:0{KEY_WIDTH}d}"


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
