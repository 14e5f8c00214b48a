"""Errors raised by the streaming loaders: one clear line, naming the shard when one is at fault."""

from __future__ import annotations


class PipelineError(ValueError):
    """A user-facing problem with a data source or loader setting (a ValueError, so callers can catch it)."""


class ShardError(PipelineError):
    """A shard is missing, truncated, corrupt or disagrees with the manifest; `shard` names it."""

    def __init__(self, shard: str, reason: str | None = None) -> None:
        # One-argument form: the full message (how DataLoader re-raises a worker's exception).
        super().__init__(shard if reason is None else f"shard {shard}: {reason}")
        self.shard = shard
        self.reason = reason
