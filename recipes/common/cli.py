"""The only place a recipe turns library errors into one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from datagen.errors import DatagenError
from recipes.common.config import TrainConfig, config_from_args


def run_cli(
    main: Callable[[Any], Any],
    parser: argparse.ArgumentParser,
    cls: type[TrainConfig],
    *,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    smoke: Mapping[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Parse flags, resolve the config and run `main(cfg)`; user errors exit 2 with one line."""
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(cls, args, presets=presets, smoke=smoke)
        main(cfg)
    except (ValueError, FileNotFoundError, DatagenError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
