"""The only place a recipe turns library errors into one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from datagen.errors import DatagenError
from recipes.common.config import TrainConfig, config_from_args

# what a user can cause or cure: bad settings, missing or corrupt inputs, and the file system's refusals (a
# file where a folder should go, no permission, a full disk), each printed as one line
USER_ERRORS = (ValueError, DatagenError, OSError)


def error_message(exc: BaseException) -> str:
    """A user error's one-line text; an OSError from the system as its reason and path, not its errno."""
    if isinstance(exc, OSError) and not isinstance(exc, DatagenError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def error_line(prog: str, exc: BaseException) -> str:
    """`prog: error: ...` on one line (see `error_message`)."""
    return f"{prog}: error: {error_message(exc)}"


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
    except USER_ERRORS as exc:
        print(error_line(parser.prog, exc), file=sys.stderr)
        sys.exit(2)
