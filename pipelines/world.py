"""Where this process sits in a distributed job, as a value: only `World.detect` looks at torch or the env."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipelines.errors import PipelineError


@dataclass(frozen=True)
class World:
    """Rank layout of a job; the order maths takes this value and never asks torch itself."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise PipelineError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise PipelineError(f"rank must be in [0, {self.world_size}), got {self.rank}")

    @classmethod
    def detect(cls) -> World:
        """torch.distributed when it is initialized, else RANK / WORLD_SIZE / LOCAL_RANK, else one process."""
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                local = int(os.environ.get("LOCAL_RANK", 0))
                return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)
        except ImportError:  # pragma: no cover - torch is a dependency of pipelines
            pass
        try:
            rank = int(os.environ.get("RANK", 0))
            size = int(os.environ.get("WORLD_SIZE", 1))
            local = int(os.environ.get("LOCAL_RANK", 0))
        except ValueError as exn:
            raise PipelineError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {exn}") from None
        return cls(rank=rank, world_size=size, local_rank=local)
