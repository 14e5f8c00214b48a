"""What one stored sample is: a uint8 clip, optional extra arrays (masks, flow), its ground truth, and a
dot-free key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datagen.store.format import ARRAY_FIELDS, KEY_WIDTH, field_shape_ok, sample_key

__all__ = ["KEY_WIDTH", "Sample", "sample_key"]


@dataclass(frozen=True)
class Sample:
    """One clip: `video` is uint8 (T, H, W, C) channel-last; `fields` the extra arrays by name (known names
    only, each of its fixed dtype and the shape the clip implies: `datagen.store.format.ARRAY_FIELDS`);
    `meta` is JSON-serialisable ground truth."""

    key: str
    video: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "." in self.key or "/" in self.key or not self.key:
            raise ValueError(f"sample key {self.key!r} must be non-empty and contain no '.' or '/'")
        if self.video.dtype != np.uint8 or self.video.ndim != 4:
            raise ValueError(f"video must be uint8 (T, H, W, C), got {self.video.dtype} {self.video.shape}")
        for name, array in self.fields.items():
            if name not in ARRAY_FIELDS:
                raise ValueError(
                    f"sample {self.key}: {name!r} is not an array field ({', '.join(ARRAY_FIELDS)})"
                )
            dtype = ARRAY_FIELDS[name][0]
            if array.dtype != np.dtype(dtype) or not field_shape_ok(name, array.shape, self.video.shape):
                raise ValueError(
                    f"sample {self.key}: {name} must be {dtype} of a shape that clips of {self.video.shape} "
                    f"allow, got {array.dtype} {array.shape}"
                )
