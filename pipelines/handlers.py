"""Bad-data policy as a value, webdataset style: a handler gets the exception and says what to do.

A handler returns True to skip the bad shard part and go on, or raises. ``raise_error`` (the default)
re-raises, so a corrupt, truncated or missing shard stops training with a message naming it. ``skip_and_warn``
logs a warning and lets the reader skip; what is skipped is counted in one place, ``VideoDataset.skipped``
(also ``loader.skipped``): shards dropped when the dataset is made and samples skipped while reading.

Under DDP, shards found missing or of the wrong size are dropped before reading, identically on every rank;
data found bad while reading is dropped only where it is read, so ranks may then get unequal counts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

Handler = Callable[[Exception], bool]

log = logging.getLogger("pipelines")


def raise_error(exn: Exception) -> bool:
    """Re-raise: the default, so no bad shard goes unnoticed."""
    raise exn


def skip_and_warn(exn: Exception) -> bool:
    """Warn and skip the bad part; samples skipped are counted by the reader."""
    log.info("skipping bad data: %s", exn)  # for run logs; the warning is what a user sees by default
    warnings.warn(f"skipping bad data: {exn}", RuntimeWarning, stacklevel=2)
    return True


HANDLERS: dict[str, Handler] = {"raise": raise_error, "skip": skip_and_warn}


def resolve_handler(on_error: str | Handler) -> Handler:
    """A handler from its name ("raise", "skip") or a callable following the handler protocol."""
    if callable(on_error):
        return on_error
    try:
        return HANDLERS[on_error]
    except KeyError:
        raise ValueError(
            f"on_error must be one of {sorted(HANDLERS)} or a callable, got {on_error!r}"
        ) from None
