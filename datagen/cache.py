"""The project's one user cache folder: downloaded MNIST, converted weights, statistics, smoke stores."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str, create: bool = False) -> Path:
    """`$VIDEOGEN_CACHE`, else `$XDG_CACHE_HOME/videogen`, else `~/.cache/videogen`; then `parts`."""
    if env := os.environ.get("VIDEOGEN_CACHE"):
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "videogen"
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
