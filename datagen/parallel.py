"""Run independent tasks on Dask: a local cluster by default, an existing cluster by address.

Results come back as they complete (any order); callers key them by task id, which is what keeps output
independent of worker count and scheduling. Tasks are drawn from an iterable as room frees up (a bounded
number in flight), so a job of 10**9 tasks plans and runs in memory independent of its size.

A caller that must not touch its output before the cluster is known to work enters :func:`open_cluster`
first: with ``--scheduler`` it checks the address (:func:`check_scheduler`) and connects; a local cluster
starts only when the first task is submitted.

Ctrl-C: local worker processes ignore SIGINT (the parent stops them), so an interrupt is one
KeyboardInterrupt in this process instead of a traceback from every worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from datagen.errors import DatagenError

DEFAULT_SCHEDULER_TIMEOUT = 5.0
"""Seconds to wait for a scheduler to answer (resolving, connecting, and its identity reply each)."""
MAX_SCHEDULER_TIMEOUT = 3600.0
IN_FLIGHT_PER_THREAD = 4
"""Tasks submitted per worker thread: one running and some queued, so no worker waits for the next."""
MIN_IN_FLIGHT = 64
"""Floor on tasks in flight (a scheduler whose workers are still joining reports no threads). Each costs
the client a few kB; too few slow short tasks: 1000 no-op tasks on 2 local workers took 24 s with 8 in
flight, 14 s with 64, 12 s unbounded (a loaded 2-core machine)."""
DEFAULT_RETRIES = 3
"""Times Dask reruns a task that raised (a dropped connection to the object store, a transient I/O error)
before the job fails; tasks are pure functions of their arguments writing whole shards, so a rerun makes the
same bytes. Tasks on workers that died are rescheduled by Dask itself, up to its
`distributed.scheduler.allowed-failures` (default 3)."""
LIMIT_REFRESH_S = 5.0
"""How often to ask a scheduler how many threads it has now (an adaptive cluster grows)."""
_SCHEMES_OVER_TCP = ("tcp", "tls")
GREETING = struct.Struct("<Q")
MAX_GREETING_BYTES = 1 << 20
"""A Dask handshake is about a hundred bytes; a service claiming more is not Dask."""


@dataclass(frozen=True)
class Task:
    """`fn(*args)` must be importable by workers (a module-level function) and safe to re-run."""

    id: str
    fn: Callable[..., Any]
    args: tuple


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# --- checking a scheduler address -----------------------------------------------------------------------


def _split_address(address: str) -> tuple[str, str, int | None]:
    """`[scheme://]host:port` -> (scheme, host, port); port None for schemes not carried over TCP."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    if not isinstance(address, str) or not address.strip() or any(c.isspace() for c in address):
        raise DatagenError(f"--scheduler {address!r} is not an address (expected tcp://host:port)")
    try:
        scheme, location = parse_address(address, strict=False)
        get_backend(scheme)
    except ValueError as e:
        raise DatagenError(f"--scheduler {address!r} is not a Dask address ({e})") from None
    if scheme not in _SCHEMES_OVER_TCP:
        return scheme, location, None
    try:
        host, port = parse_host_port(location)
    except (ValueError, TypeError):
        raise DatagenError(f"--scheduler {address!r} is not an address (expected tcp://host:port)") from None
    if not host or not 0 < port < 65536:
        raise DatagenError(f"--scheduler {address!r} needs a host and a port in 1..65535")
    return scheme, host, port


def _bounded(fn: Callable[[], Any], timeout: float) -> Any:
    """`fn()` in a daemon thread, waiting at most `timeout` s (getaddrinfo has no timeout of its own)."""
    done: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as e:  # handed to the caller
            done.set_exception(e)

    threading.Thread(target=run, daemon=True, name="datagen-check").start()
    return done.result(timeout=timeout)


def _expect_dask_greeting(s: socket.socket, address: str, timeout: float) -> None:
    """A Dask server speaks first: a little-endian uint64 byte count, then a small handshake message.

    Checked on a plain socket because Dask's own reader trusts that count and allocates it: a service
    answering in another protocol once made it ask for 3 EiB. An HTTP server says nothing until asked.
    """
    greeting = b""
    try:
        while len(greeting) < GREETING.size:
            part = s.recv(GREETING.size - len(greeting))
            if not part:
                break
            greeting += part
    except TimeoutError:
        pass
    except OSError as e:
        raise DatagenError(f"{address} is not a Dask scheduler: {e.strerror or e}") from None
    if not greeting:
        raise DatagenError(
            f"{address} is not a Dask scheduler: no Dask greeting within {timeout:g} s (another service?)"
        )
    if len(greeting) < GREETING.size or not 0 < GREETING.unpack(greeting)[0] <= MAX_GREETING_BYTES:
        raise DatagenError(f"{address} is not a Dask scheduler: it speaks another protocol")


async def _identity(address: str, timeout: float) -> dict:
    from distributed.comm import connect

    comm = await connect(address, timeout=timeout)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def check_scheduler(address: str, timeout: float = DEFAULT_SCHEDULER_TIMEOUT) -> dict:
    """Check that `address` is a reachable Dask scheduler; returns its identity (workers, threads).

    Raises DatagenError with one line for a malformed address, a name that does not resolve, a refused or
    unreachable port, and a service that does not answer as a Dask scheduler within `timeout` seconds
    (an HTTP server, a Dask worker). Touches nothing but the network.
    """
    if not 0 < timeout <= MAX_SCHEDULER_TIMEOUT:
        raise DatagenError(
            f"--scheduler-timeout must be in (0, {MAX_SCHEDULER_TIMEOUT:g}] seconds, got {timeout}"
        )
    scheme, host, port = _split_address(address)
    where = f"Dask scheduler at {address}"
    if port is not None:
        try:
            infos = _bounded(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except concurrent.futures.TimeoutError:
            raise DatagenError(f"cannot reach {where}: resolving {host!r} took over {timeout:g} s") from None
        except OSError as e:
            raise DatagenError(
                f"cannot reach {where}: host {host!r} does not resolve ({e.strerror})"
            ) from None
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.settimeout(timeout)
            try:
                s.connect(sockaddr)
            except TimeoutError:
                raise DatagenError(f"cannot reach {where}: no answer within {timeout:g} s") from None
            except OSError as e:
                raise DatagenError(f"cannot reach {where}: {e.strerror or e}") from None
            if scheme == "tcp":
                _expect_dask_greeting(s, address, timeout)
    try:
        reply = _bounded(
            lambda: asyncio.run(asyncio.wait_for(_identity(address, timeout), timeout)), timeout + 1
        )
    except (concurrent.futures.TimeoutError, asyncio.TimeoutError, TimeoutError):
        raise DatagenError(
            f"{address} is not a Dask scheduler: no Dask reply within {timeout:g} s (another service?)"
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever a foreign service makes the Dask protocol raise
        raise DatagenError(f"{address} is not a Dask scheduler: {type(e).__name__}: {e}".strip()) from None
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        what = f"a Dask {kind}" if isinstance(kind, str) else "something else"
        raise DatagenError(f"{address} is not a Dask scheduler: it answers as {what}")
    return reply


# --- where tasks run ------------------------------------------------------------------------------------


def dask_setup(worker: Any) -> None:
    """Preload of local workers (Dask calls it at each worker start, restarts included): ignore Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while worker processes start: they inherit it, and Python keeps an ignored SIGINT
    ignored (no KeyboardInterrupt, no asyncio handler). A Ctrl-C in these seconds is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Cluster:
    """Where tasks run: in this process (``workers=0``), on a local cluster started on first use, or on
    a checked scheduler. Enter it through :func:`open_cluster`."""

    def __init__(self, *, scheduler: str | None, workers: int, timeout: float) -> None:
        if workers < 0:
            raise DatagenError(f"--workers must be >= 0, got {workers}")
        self.scheduler = scheduler
        self.workers = workers
        self.timeout = timeout
        self._stack = contextlib.ExitStack()
        self._client: Any = None
        if scheduler:
            self.identity = check_scheduler(scheduler, timeout)
            from distributed import Client

            try:
                self._client = self._stack.enter_context(Client(scheduler, timeout=timeout))
            except (OSError, TimeoutError) as e:
                raise DatagenError(f"cannot connect to Dask scheduler at {scheduler}: {e}") from None

    @property
    def in_process(self) -> bool:
        return self.workers == 0 and not self.scheduler

    def client(self, n_tasks: int | None = None) -> Any:
        """The Dask client; a local cluster starts here, with no more workers than `n_tasks` (when known):
        a small job on a big machine should not pay for idle worker processes."""
        if self._client is None and not self.in_process:
            from distributed import Client, LocalCluster

            n = self.workers if n_tasks is None else max(1, min(self.workers, n_tasks))
            with _sigint_ignored():
                cluster = self._stack.enter_context(
                    LocalCluster(
                        n_workers=n,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        # its HTTP server (health routes) on a free local port: with the default 8787
                        # taken by another cluster, Dask warns in three lines on stderr
                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                        silence_logs=logging.CRITICAL,  # task errors reach the caller; no worker log lines
                        preload=[__name__],
                    )
                )
            self._client = self._stack.enter_context(Client(cluster, set_as_default=False))
        return self._client

    def threads(self) -> int:
        """Worker threads the cluster has now (0 while a scheduler's workers are still joining)."""
        info = self._client.scheduler_info(n_workers=-1) if self._client is not None else {}
        return sum(w.get("nthreads", 0) for w in info.get("workers", {}).values())

    def close(self) -> None:
        self._stack.close()


@contextlib.contextmanager
def open_cluster(
    *, scheduler: str | None = None, workers: int = 1, timeout: float = DEFAULT_SCHEDULER_TIMEOUT
) -> Iterator[Cluster]:
    """Check and connect to `scheduler` now (DatagenError, one line, when it is not a working Dask
    scheduler); a local cluster of `workers` processes starts when the first task runs."""
    cluster = Cluster(scheduler=scheduler, workers=workers, timeout=timeout)
    try:
        yield cluster
    finally:
        cluster.close()


# --- running tasks --------------------------------------------------------------------------------------


def check_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DatagenError(f"--retries must be a whole number >= 0, got {retries!r}")
    return retries


def run_tasks(
    tasks: Iterable[Task],
    *,
    on_result: Callable[[Task, Any], None],
    cluster: Cluster | None = None,
    scheduler: str | None = None,
    workers: int = 1,
    scheduler_timeout: float = DEFAULT_SCHEDULER_TIMEOUT,
    max_in_flight: int | None = None,
    n_tasks: int | None = None,
    retries: int = DEFAULT_RETRIES,
) -> None:
    """Run every task and call `on_result(task, result)` in this process as each one finishes.

    `tasks` may be lazy: they are drawn as results come back, at most `max_in_flight` submitted and not
    yet handled [default: IN_FLIGHT_PER_THREAD per worker thread, at least MIN_IN_FLIGHT]. Without
    `cluster`, one is opened for this call from `scheduler` / `workers`; `workers=0` runs in this process
    without Dask (for debugging and profiling). `n_tasks` (or `len(tasks)` when it has one) sizes a
    local cluster: no idle worker processes for a small job. A task's exception is raised here once the
    tasks in flight are cancelled. `retries`: reruns of a failed task on Dask (not in-process).
    """
    check_retries(retries)
    if cluster is None:
        if workers == 0 and not scheduler:  # no cluster to open, nor a scheduler to check
            cluster = Cluster(scheduler=None, workers=0, timeout=DEFAULT_SCHEDULER_TIMEOUT)
        else:
            n = len(tasks) if n_tasks is None and hasattr(tasks, "__len__") else n_tasks  # type: ignore[arg-type]
            if n == 0:
                return
            with open_cluster(scheduler=scheduler, workers=workers, timeout=scheduler_timeout) as opened:
                if n is not None:
                    opened.client(n)  # sized to the job
                run_tasks(
                    tasks, on_result=on_result, cluster=opened, max_in_flight=max_in_flight, retries=retries
                )
            return
    if cluster.in_process:
        for t in tasks:
            on_result(t, t.fn(*t.args))
        return
    _run_on_dask(iter(tasks), cluster, on_result, max_in_flight, retries)


def _run_on_dask(
    tasks: Iterator[Task],
    cluster: Cluster,
    on_result: Callable[[Task, Any], None],
    max_in_flight: int | None,
    retries: int = DEFAULT_RETRIES,
) -> None:
    first = next(tasks, None)
    if first is None:
        return
    from distributed import as_completed

    client = cluster.client()
    run = uuid.uuid4().hex[:8]  # keys unique per run: two jobs may share one scheduler
    in_flight: dict[str, Task] = {}
    futures: dict[str, Any] = {}
    completed = as_completed(loop=client.loop)

    def submit(t: Task) -> None:
        key = f"datagen-{run}-{t.id}"
        if key in in_flight:
            raise ValueError(f"task id {t.id!r} is given twice")
        future = client.submit(t.fn, *t.args, key=key, pure=False, retries=retries)
        in_flight[key], futures[key] = t, future
        completed.add(future)

    def limit() -> int:
        return max_in_flight or max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * cluster.threads())

    cap, checked = limit(), time.monotonic()
    pending: Task | None = first
    try:
        while pending is not None and len(in_flight) < cap:
            submit(pending)
            pending = next(tasks, None)
        for future in completed:
            task = in_flight.pop(future.key)
            del futures[future.key]
            on_result(task, _result(future, task))
            if max_in_flight is None and time.monotonic() - checked > LIMIT_REFRESH_S:
                cap, checked = limit(), time.monotonic()
            while pending is not None and len(in_flight) < cap:
                submit(pending)
                pending = next(tasks, None)
    except BaseException:
        client.cancel(list(futures.values()))
        raise


def _result(future: Any, task: Task) -> Any:
    """The task's result; its own exception as is, a dead worker as one line."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker:
        raise DatagenError(
            f"task {task.id}: the workers running it died repeatedly (out of memory, or a crash in native "
            "code); Dask's distributed.scheduler.allowed-failures sets how many deaths a task survives"
        ) from None
