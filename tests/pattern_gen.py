"""A tiny deterministic generator for store/runner tests: pixel values encode (seed, index)."""

from __future__ import annotations

import numpy as np

from datagen.errors import DatagenError
from datagen.store.sample import Sample, sample_key


class PatternGenerator:
    name = "pattern"
    version = "1"

    def validate(self, params: dict) -> dict:
        if params.get("frames", 1) < 1:
            raise DatagenError("frames must be >= 1")
        return {"frames": int(params.get("frames", 3)), "size": int(params.get("size", 6))}

    def sample_shape(self, params: dict) -> tuple[int, int, int, int]:
        return (params["frames"], params["size"], params["size"], 1)

    def generate(self, params: dict, seed: int, start: int, stop: int):
        for i in range(start, stop):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
            video = rng.integers(0, 256, self.sample_shape(params), dtype=np.uint8)
            yield Sample(sample_key(i), video, {"index": i, "mean": float(video.mean())})


PATTERN = PatternGenerator()
