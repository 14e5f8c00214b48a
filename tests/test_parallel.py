"""Dask plumbing under faults: scheduler addresses checked before --out is touched, bounded submission from
lazy task streams, and Ctrl-C during a real local-cluster run (one line, exit 130, resumable)."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from datagen.errors import DatagenError
from datagen.parallel import Task, check_scheduler, open_cluster, run_tasks

pytestmark = pytest.mark.integration  # Dask clusters and datagen subprocesses


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.01)
    return x * x


@pytest.fixture(scope="module")
def cluster():
    """A real scheduler with one worker process, shared by the tests that need one."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=logging.CRITICAL
    ) as c:
        yield c


@pytest.fixture(scope="module")
def http_server():
    """A real HTTP server: answers, but speaks no Dask."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def banner_server():
    """A real TCP service that greets first, as SSH does: Dask would read its banner as a frame length."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                time.sleep(0.5)

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_scheduler_passes_the_check(cluster):
    identity = check_scheduler(cluster.scheduler_address, timeout=5)
    assert identity["type"] == "Scheduler" and identity["n_workers"] == 1


@pytest.mark.parametrize(
    "address, message",
    [
        ("refused", "Connection refused"),
        ("http", "no Dask greeting within 1.5 s"),
        ("banner", "it speaks another protocol"),
        ("tcp://no-such-host.invalid:8786", "does not resolve"),
        ("tcp://host:port", "is not an address"),
        ("tcp://127.0.0.1", "is not an address"),
        ("tcp://127.0.0.1:99999", "port in 1..65535"),
        ("http://example.org:8786", "is not a Dask address"),
        ("", "is not an address"),
    ],
)
def test_bad_scheduler_addresses_are_one_line_within_the_timeout(
    http_server, banner_server, address, message
):
    address = {
        "refused": f"tcp://127.0.0.1:{_free_port()}",
        "http": f"tcp://{http_server}",
        "banner": f"tcp://{banner_server}",
    }.get(address, address)
    start = time.monotonic()
    with pytest.raises(DatagenError, match=message) as e:
        check_scheduler(address, timeout=1.5)
    assert time.monotonic() - start < 5 and "\n" not in str(e.value)


def test_a_worker_address_is_not_a_scheduler(cluster):
    worker = next(iter(cluster.scheduler_info["workers"]))
    with pytest.raises(DatagenError, match="answers as a Dask Worker"):
        check_scheduler(worker, timeout=5)


def datagen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "datagen", *args], capture_output=True, text=True, timeout=timeout
    )


def _bad_address(kind: str, http_server: str) -> str:
    return {
        "http": f"tcp://{http_server}",
        "refused": f"tcp://127.0.0.1:{_free_port()}",
        "unresolvable": "tcp://no-such-host.invalid:8786",
        "malformed": "tcp://[::1",
    }[kind]


@pytest.mark.parametrize("kind", ["http", "refused", "unresolvable", "malformed"])
def test_cli_refuses_a_bad_scheduler_before_touching_out(tmp_path, http_server, capsys, kind):
    """An HTTP server used to hang the command for minutes; now: one line, exit 2, --out as it was."""
    from datagen.cli import main

    address = _bad_address(kind, http_server)
    missing, existing = tmp_path / "new", tmp_path / "empty"
    existing.mkdir()
    for out in (missing, existing):
        args = ["balls", "--n", "4", "--out", str(out), "--scheduler", address, "--scheduler-timeout", "1.5"]
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and address in lines[0], lines
    assert not missing.exists() and list(existing.iterdir()) == []


def test_cli_exit_code_for_an_http_server_as_scheduler(tmp_path, http_server):
    out = tmp_path / "s"
    start = time.monotonic()
    r = datagen("balls", "--n", "4", "--out", str(out), "--scheduler", f"tcp://{http_server}", "-q")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: tcp://{http_server} is not a Dask scheduler: no Dask greeting within 5 s (another service?)"
    ], r.stderr
    assert not out.exists() and time.monotonic() - start < 60


def test_run_tasks_draws_lazily_with_a_bounded_number_in_flight(cluster):
    """A lazy stream of tasks is consumed as results come back, never more than max_in_flight ahead."""
    drawn = 0
    handled: dict[str, int] = {}
    most_ahead = 0

    def tasks():
        nonlocal drawn
        for i in range(60):
            drawn += 1
            yield Task(id=f"t{i:03d}", fn=slow_square, args=(i,))

    def on_result(task: Task, result: int) -> None:
        nonlocal most_ahead
        most_ahead = max(most_ahead, drawn - len(handled))
        handled[task.id] = result

    with open_cluster(scheduler=cluster.scheduler_address, timeout=5) as c:
        run_tasks(tasks(), cluster=c, on_result=on_result, max_in_flight=4)
    assert handled == {f"t{i:03d}": i * i for i in range(60)}
    assert most_ahead <= 4 + 1  # in flight, plus the one drawn to be submitted next


def test_run_tasks_in_process_takes_a_generator_and_a_task_error_reaches_the_caller(cluster):
    got = {}
    run_tasks(
        (Task(f"t{i}", square, (i,)) for i in range(5)),
        workers=0,
        on_result=lambda t, r: got.update({t.id: r}),
    )
    assert got == {f"t{i}": i * i for i in range(5)}
    with open_cluster(scheduler=cluster.scheduler_address, timeout=5) as c:
        with pytest.raises(TypeError):
            run_tasks([Task("bad", square, ("x",))], cluster=c, on_result=lambda t, r: None)


def test_open_cluster_checks_the_scheduler_first(http_server):
    with pytest.raises(DatagenError, match="not a Dask scheduler"):
        with open_cluster(scheduler=f"tcp://{http_server}", timeout=1):
            pytest.fail("entered a cluster that is an HTTP server")


def sigint_ignored() -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_local_workers_ignore_ctrl_c_also_after_a_restart():
    """The parent stops them; a worker that took SIGINT itself printed a traceback."""
    with open_cluster(workers=1) as c:
        client = c.client()
        assert client.submit(sigint_ignored, pure=False).result()
        client.restart()  # a fresh worker process, started by the nanny at any later time
        assert client.submit(sigint_ignored, pure=False).result()


BALLS = ["balls", "--n", "400", "--frames", "8", "--size", "32", "--shard-size", "5", "--seed", "5", "-q"]


def _journal_lines(out: Path) -> int:
    try:
        return len((out / ".datagen-journal.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_ctrl_c_during_a_local_cluster_run_is_one_line_and_resumes(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) while Dask workers write shards."""
    out = tmp_path / "s"
    # 400 shards: the run cannot finish between its 2nd journal line and the signal (80 once did, in CI)
    long = [*BALLS[:2], "2000", *BALLS[3:]]
    p = subprocess.Popen(
        [sys.executable, "-m", "datagen", *long, "--workers", "2", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # a terminal's default: a shell's background job (CI started with `&`) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while _journal_lines(out) < 2 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, "the run ended before it could be interrupted"
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == 130, err[-3000:]
    assert lines == ["error: interrupted; --resume continues"], err[-3000:]
    assert not (out / "manifest.json").exists() and not list(out.glob(".*.tmp"))
    done = _journal_lines(out)
    from datagen.cli import main

    assert main([*long, "--workers", "0", "--out", str(out), "--resume"]) == 0
    ref = tmp_path / "ref"
    assert main([*long, "--workers", "0", "--out", str(ref)]) == 0
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    assert 0 < done < len(json.loads((ref / "manifest.json").read_text())["shards"])
