"""Errors raised by the streaming loaders: one clear line, naming the shard when one is at fault.

An error raised in a DataLoader worker reaches the caller through torch, which re-raises it as
``type(error)("Caught <Type> in DataLoader worker process N.\\nOriginal Traceback ...")``: the first line
would name a worker instead of the shard. Our errors recognise that message and put the original message back
on the first line (the worker's traceback follows), so a failure in a worker reads like one in the main
process, with the same type and the same ``shard``.
"""

from __future__ import annotations

import re

from datagen.errors import DatagenError

_TORCH_WORKER = re.compile(
    r"\ACaught \w+ (in DataLoader worker process \d+)\.\nOriginal (Traceback.*)\Z", re.S
)
_SHARD_MESSAGE = re.compile(r"\Ashard (.+?): (.*)\Z")


def _from_worker(cls: type, text: str) -> tuple[str, str | None]:
    """``(message, original message)``: torch's worker wrapper turned around so the original comes first;
    ``(text, None)`` for any other text."""
    wrapped = _TORCH_WORKER.match(text)
    if wrapped is None:
        return text, None
    where, trace = wrapped.groups()
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    lines = [line for line in trace.splitlines() if line.startswith(f"{name}: ")]
    if not lines:
        return text, None
    original = lines[-1][len(name) + 2 :]
    return f"{original}\n(raised {where}; its traceback follows)\n{trace}", original


class PipelineError(DatagenError, ValueError):
    """A user-facing problem with a data source or loader setting: the project's one error type
    (`DatagenError`) and a ValueError, so callers can catch either."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_from_worker(type(self), args[0])[0],)
        super().__init__(*args)


def one_line(text: str) -> str:
    """Text from a shard (member names, keys) with control characters escaped: a message stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ShardError(PipelineError):
    """A shard is missing, truncated, corrupt or disagrees with the manifest; `shard` names it."""

    def __init__(self, shard: str, reason: str | None = None) -> None:
        if reason is not None:
            super().__init__(f"shard {one_line(shard)}: {one_line(reason)}")
            self.shard, self.reason = shard, reason
            return
        # One-argument form: a full message, e.g. torch re-raising a worker's ShardError.
        message, original = _from_worker(type(self), shard)
        ValueError.__init__(self, message)
        parsed = _SHARD_MESSAGE.match(original or message.split("\n", 1)[0])
        self.shard, self.reason = parsed.groups() if parsed else (shard, None)
