"""Run independent tasks on Dask: a local cluster by default, an existing cluster by address.

Results come back as they complete (any order); callers key them by task id, which is what keeps output
independent of worker count and scheduling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from datagen.errors import DatagenError


@dataclass(frozen=True)
class Task:
    """`fn(*args)` must be importable by workers (a module-level function) and safe to re-run."""

    id: str
    fn: Callable[..., Any]
    args: tuple


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(*, scheduler: str | None, workers: int) -> Iterator[Any]:
    """A distributed Client: connected to `scheduler`, or on a fresh LocalCluster of `workers` processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise DatagenError(f"cannot reach Dask scheduler at {scheduler}: {e}") from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def run_tasks(
    tasks: Sequence[Task],
    *,
    scheduler: str | None,
    workers: int,
    on_result: Callable[[Task, Any], None],
) -> None:
    """Run every task and call `on_result` in this process as each one finishes.

    `workers=0` runs in this process without Dask (for debugging and profiling).
    """
    if not tasks:
        return
    if workers == 0 and not scheduler:
        for t in tasks:
            on_result(t, t.fn(*t.args))
        return
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]  # keys unique per run: two jobs may share one scheduler
    # no idle worker processes to start: a small job on a big machine should not pay for them
    with dask_client(scheduler=scheduler, workers=min(workers, len(tasks))) as client:
        futures = {
            client.submit(t.fn, *t.args, key=f"datagen-{run}-{t.id}", pure=False, retries=1): t for t in tasks
        }
        try:
            for future in as_completed(list(futures), loop=client.loop):
                on_result(futures[future], future.result())
        except BaseException:
            client.cancel(list(futures))
            raise
