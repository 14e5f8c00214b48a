"""The loader trusts nothing a store says (issue 14): manifests are validated before use and never become
shell text, remote stores are read without a shell, ``verify="sha256"`` refuses other bytes, remote failures
follow ``on_error``, skipped samples have one count, and worker errors name the shard on their first line.

Real parts: stores written by the project's writers, a local HTTP server in a thread (with injected 404s,
reset and cut connections), DataLoader worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import struct
import subprocess
import sys
import threading
import traceback
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_pipelines import make_store, needs_thread_io, run, thread_io

from datagen.store.sample import sample_key
from pipelines.dataset import VideoDataset
from pipelines.errors import PipelineError, ShardError
from pipelines.loader import make_loader
from pipelines.world import World

PER_SHARD = 4


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "store", n_shards=4, per_shard=5)


def shard(store: Path, s: int, ext: str = ".tar") -> Path:
    return store / f"test-{s:06d}{ext}"


def edit_manifest(store: Path, change) -> Path:
    path = store / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return path


def flip_a_pixel(path: Path, value: int) -> None:
    """Change one pixel byte of sample ``value`` (a run of that byte) in place: same size, other bytes."""
    data = bytearray(path.read_bytes())
    at = data.index(bytes([value]) * 32) + 16
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def first_line(exn: BaseException) -> str:
    return str(exn).splitlines()[0]


# ---------------------------------------------------------------- a real HTTP server with injected faults
class _FaultyHandler(SimpleHTTPRequestHandler):
    """Serves the store; ``faults`` maps a file name to "404", "reset" (half the body, then a TCP reset),
    "cut" (half the body, then a clean close, with the full Content-Length announced) or "endless"."""

    faults: dict[str, str] = {}

    def do_GET(self) -> None:
        name = self.path.lstrip("/").split("?", 1)[0]
        fault = self.faults.get(name)
        if fault is None:
            return super().do_GET()
        if fault == "404":
            return self.send_error(404)
        if fault == "endless":  # no Content-Length, and no end
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):
                while True:
                    self.wfile.write(b" " * 65536)
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass  # the connection was cut on purpose

    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass


@pytest.fixture
def web(tmp_path):
    """(store, base URL, faults): a 3-shard store of 4 samples per shard served over HTTP."""
    store = make_store(tmp_path / "web", n_shards=3, per_shard=PER_SHARD)
    faults: dict[str, str] = {}
    handler = type("Handler", (_FaultyHandler,), {"faults": faults})
    server = _QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(store)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield store, f"http://127.0.0.1:{server.server_address[1]}", faults
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- no subprocess while reading remote stores
_FORBID_SUBPROCESS = {"on": False}


def _audit(event: str, args) -> None:
    if _FORBID_SUBPROCESS["on"] and event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec"):
        raise RuntimeError(f"started a process to read a remote store: {event} {args!r:.200}")


sys.addaudithook(_audit)  # flag-gated: only the tests below switch it on (forked workers inherit it)


@pytest.fixture
def no_subprocess():
    _FORBID_SUBPROCESS["on"] = True
    yield
    _FORBID_SUBPROCESS["on"] = False


# ---------------------------------------------------------------- 1. manifests are validated, never executed
HOSTILE = {
    "parent path": lambda m: m["shards"][0].update(path="../test-000000.tar"),
    "absolute path": lambda m: m["shards"][0].update(path="/etc/test-000000.tar"),
    "url": lambda m: m["shards"][0].update(path="http://evil.example/test-000000.tar"),
    "pipe": lambda m: m["shards"][0].update(path="pipe:touch pwned"),
    "shell": lambda m: m["shards"][0].update(path="test-000000.tar; touch pwned"),
    "count over shard size": lambda m: m["shards"][0].update(n_samples=6),
    "no shards": lambda m: m.pop("shards"),
    "schema": lambda m: m.update(schema_version=99),
    "sha256": lambda m: m["shards"][0].update(sha256="00"),
    "not an object": lambda m: m.clear(),
}


@pytest.mark.parametrize("change", HOSTILE.values(), ids=HOSTILE.keys())
def test_invalid_manifest_is_one_line_naming_it(store, change):
    path = edit_manifest(store, change)
    if not json.loads(path.read_text()):
        path.write_text("[1, 2]")
    with pytest.raises(PipelineError) as caught:
        VideoDataset(store, world=World())
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and not isinstance(caught.value, ShardError)


def test_manifest_that_is_not_json_is_one_line(store):
    (store / "manifest.json").write_bytes(b'{"schema_version": 1, "seed": ' + b"9" * 5000 + b"}")
    with pytest.raises(PipelineError, match=r"manifest.json: not valid JSON") as caught:
        VideoDataset(store, world=World())
    assert "\n" not in str(caught.value)


def test_shards_are_the_stores_own_files(store):
    ds = VideoDataset(store, world=World())
    names = [entry["path"] for entry in json.loads((store / "manifest.json").read_text())["shards"]]
    assert [s.url for s in ds.shards] == [f"{store.resolve()}/{n}" for n in names if n.endswith(".tar")]


def test_pipe_manifest_source_is_refused_and_runs_nothing(store, tmp_path):
    sentinel = tmp_path / "pwned"
    edit_manifest(store, lambda m: m["shards"][0].update(path=f"test-000000.tar; touch {sentinel} #"))
    with pytest.raises(PipelineError, match="pipe: command cannot be a manifest source"):
        ds = VideoDataset(f"pipe:cat {store}/manifest.json", world=World())
        run(make_loader(ds, batch_size=4, num_workers=0))
    assert not sentinel.exists()


def test_remote_manifest_is_validated(web):
    store, base, _ = web
    edit_manifest(store, lambda m: m["shards"][1].update(path="../../etc/test-000001.tar"))
    with pytest.raises(PipelineError, match=rf"^{base}/manifest.json: shards\[1\].path") as caught:
        VideoDataset(f"{base}/manifest.json", world=World())
    assert "\n" not in str(caught.value)


def test_endless_remote_manifest_or_shard_is_cut_off(web, monkeypatch):
    store, base, faults = web
    monkeypatch.setattr("pipelines.sources.MAX_MANIFEST_BYTES", 4 << 20)
    faults["test-000002.tar"] = "endless"
    ds = VideoDataset(f"{base}/manifest.json", world=World(), shuffle=False)
    too_long = r"sent more than the \d+ bytes expected"
    with pytest.raises(ShardError, match=rf"test-000002.tar: cannot read: {too_long}"):
        run(make_loader(ds, batch_size=4, num_workers=0))
    faults["manifest.json"] = "endless"
    with pytest.raises(PipelineError, match=rf"^cannot read manifest {base}/manifest.json: {too_long}"):
        VideoDataset(f"{base}/manifest.json", world=World())


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
@pytest.mark.parametrize("workers", [0, 2])
def test_remote_store_is_read_without_a_shell(web, fmt, workers, no_subprocess):
    store, base, _ = web
    ds = VideoDataset(f"{base}/manifest.json", format=fmt, world=World(), verify="sha256")
    loader = make_loader(ds, batch_size=5, num_workers=workers, multiprocessing_context="fork")
    keys = run(loader)
    loader.close()  # before the server goes: workers read the next epoch ahead
    assert sorted(keys) == [sample_key(i) for i in range(3 * PER_SHARD)]


def test_fsspec_store_is_read_without_a_shell(store, no_subprocess):
    fsspec = pytest.importorskip("fsspec")
    memory, root = fsspec.filesystem("memory"), f"/trust-{store.parent.name}"
    for path in store.iterdir():
        memory.pipe(f"{root}/{path.name}", path.read_bytes())
    try:
        url = f"memory://{root[1:]}/manifest.json"
        ds = VideoDataset(url, world=World(), verify="sha256")
        assert sorted(run(make_loader(ds, batch_size=4, num_workers=0))) == [sample_key(i) for i in range(20)]
        memory.rm(f"{root}/test-000001.tar")
        ds = VideoDataset(url, world=World(), shuffle=False)
        with pytest.raises(
            ShardError, match=rf"^shard memory://{root[1:]}/test-000001.tar: cannot read: missing"
        ):
            run(make_loader(ds, batch_size=4, num_workers=0))
    finally:
        memory.rm(root, recursive=True)


EXIT_CHECK = """
import functools, sys, threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pipelines import VideoDataset, make_loader
from pipelines.world import World
class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=sys.argv[1]))
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}/manifest.json"
loader = make_loader(VideoDataset(url, format="hdf5", world=World()), 5, num_workers=0)
print(sum(len(b["key"]) for b in loader))
"""


@pytest.mark.integration
def test_a_process_that_read_remote_hdf5_shards_exits_cleanly(tmp_path):
    # h5py files left open on in-memory copies of remote shards crashed the interpreter at exit (SIGSEGV)
    store = make_store(tmp_path / "web", n_shards=3, per_shard=PER_SHARD)
    done = subprocess.run(
        [sys.executable, "-c", EXIT_CHECK, str(store)], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout.strip()) == (0, str(3 * PER_SHARD)), done.stderr[-2000:]


# ---------------------------------------------------------------- 2. verify="sha256"
@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_sha256_refuses_a_shard_of_the_right_size_with_other_bytes(store, fmt):
    bad = shard(store, 1, ".tar" if fmt == "wds" else ".h5")
    flip_a_pixel(bad, 7)
    quietly = VideoDataset(store, format=fmt, world=World())  # size only: the change goes unnoticed
    assert len(run(make_loader(quietly, batch_size=4, num_workers=0))) == 20
    ds = VideoDataset(store, format=fmt, world=World(), verify="sha256")
    with pytest.raises(ShardError, match=rf"^shard {bad}: sha256 [0-9a-f]{{16}}\.\.\. is not the manifest's"):
        run(make_loader(ds, batch_size=4, num_workers=0))
    with pytest.raises(ShardError) as caught:
        run(make_loader(ds, batch_size=4, num_workers=1))
    assert first_line(caught.value).startswith(f"shard {bad}: sha256 ") and caught.value.shard == str(bad)


def test_sha256_mismatch_is_skipped_and_counted(store):
    flip_a_pixel(shard(store, 2), 12)
    ds = VideoDataset(store, world=World(), verify="sha256", on_error="skip", block_size=5)
    loader = make_loader(ds, batch_size=4, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = run(loader)
    assert sorted(keys) == [sample_key(i) for i in range(20) if not 10 <= i < 15]
    assert loader.skipped == ds.skipped == 5


@needs_thread_io
def test_sha256_hashes_each_shard_once_per_process_and_again_when_it_changes(store):
    """Hashing reads a whole shard: the bytes an epoch reads drop by the store's size once every shard was
    hashed, and grow by one shard's size when that shard was rewritten (a new version to hash)."""
    run(make_loader(VideoDataset(store, world=World()), batch_size=4, num_workers=0))  # indexes the shards
    ds = VideoDataset(store, world=World(), verify="sha256")
    loader = make_loader(ds, batch_size=4, num_workers=0)  # read in this thread
    sizes = {s.url: Path(s.url).stat().st_size for s in ds.shards}

    def epoch_bytes(epoch: int) -> int:
        loader.set_epoch(epoch)
        before = thread_io("rchar")
        assert len(run(loader)) == 20
        return thread_io("rchar") - before

    first, second, third = epoch_bytes(0), epoch_bytes(1), epoch_bytes(2)
    assert sum(sizes.values()) <= first - second < 2 * sum(sizes.values())
    assert abs(third - second) < min(sizes.values())  # hashed once: later epochs read the samples only
    changed = shard(store, 3)
    changed.write_bytes(changed.read_bytes())  # same bytes, a new mtime: a new version to hash
    after_change = epoch_bytes(3)
    assert sizes[str(changed)] <= after_change - second < 2 * sizes[str(changed)]


def test_remote_sha256_names_the_url(web):
    store, base, _ = web
    flip_a_pixel(shard(store, 2), 9)
    ds = VideoDataset(f"{base}/manifest.json", world=World(), verify="sha256")
    with pytest.raises(ShardError, match=rf"^shard {base}/test-000002.tar: sha256 "):
        run(make_loader(ds, batch_size=4, num_workers=0))


def test_verify_settings(store):
    with pytest.raises(PipelineError, match="verify must be one of"):
        VideoDataset(store, world=World(), verify="md5")
    with pytest.raises(PipelineError, match="needs each shard's sha256 from a manifest"):
        VideoDataset(
            str(store / "test-{000000..000003}.tar"), count_scan=True, verify="sha256", world=World()
        )
    truncated = shard(store, 0)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    ds = VideoDataset(store, world=World(), verify="none")  # no up-front check: found when read
    with pytest.raises(ShardError, match=f"{truncated.name}: holds 2 samples but the manifest says 5"):
        run(make_loader(ds, batch_size=4, num_workers=0))


# ---------------------------------------------------------------- 3. remote errors follow on_error
REMOTE_FAULTS = {"404": "HTTP 404", "reset": "reset|closed after|broken", "cut": "closed after"}


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
@pytest.mark.parametrize("fault", REMOTE_FAULTS)
def test_remote_shard_errors_follow_on_error(web, fmt, fault):
    store, base, faults = web
    name = f"test-000001.{'tar' if fmt == 'wds' else 'h5'}"
    faults[name] = fault
    url = f"{base}/manifest.json"
    ds = VideoDataset(url, format=fmt, world=World())
    with pytest.raises(ShardError, match=rf"^shard {base}/{name}: .*({REMOTE_FAULTS[fault]})"):
        run(make_loader(ds, batch_size=5, num_workers=0))
    skipping = VideoDataset(url, format=fmt, world=World(), on_error="skip", block_size=PER_SHARD)
    loader = make_loader(skipping, batch_size=5, num_workers=2)
    keys = run(loader)  # the workers warn, naming the shard, on their stderr
    loader.close()  # before the server goes: workers read the next epoch ahead
    assert sorted(keys) == [sample_key(i) for i in range(12) if not PER_SHARD <= i < 2 * PER_SHARD]
    assert loader.skipped == PER_SHARD


# ---------------------------------------------------------------- 4. one count of skipped samples
def test_shards_dropped_when_opened_and_samples_skipped_when_read_share_one_count(store):
    truncated = shard(store, 1)
    truncated.write_bytes(truncated.read_bytes()[:-700])
    flip_a_pixel(shard(store, 2), 12)
    with pytest.warns(RuntimeWarning, match=truncated.name):
        ds = VideoDataset(store, world=World(), verify="sha256", on_error="skip", block_size=5)
    assert ds.skipped == 5  # the dropped shard's samples, counted once, before any epoch
    loader = make_loader(ds, batch_size=4, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = run(loader)
    assert sorted(keys) == [sample_key(i) for i in (*range(5), *range(15, 20))]
    assert loader.skipped == ds.skipped == 10


def test_plain_iteration_counts_in_the_same_place(store):
    truncated = shard(store, 0)
    truncated.write_bytes(truncated.read_bytes()[:-700])
    flip_a_pixel(shard(store, 3), 17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = VideoDataset(store, world=World(), verify="sha256", on_error="skip", block_size=5)
        keys = [item["key"] for item in ds]
    assert len(keys) == 10 and ds.skipped == 10


# ---------------------------------------------------------------- 5. worker errors name the shard first
@pytest.mark.parametrize("how", ["make_loader", "DataLoader"])
def test_worker_errors_reach_the_caller_naming_the_shard_first(store, how):
    ds = VideoDataset(store, world=World(), block_size=5)
    gone = shard(store, 2)
    gone.unlink()
    # one worker: a failed DataLoader takes 5 s per worker to shut down (torch), the error comes at once
    if how == "make_loader":
        loader = make_loader(ds, batch_size=4, num_workers=1, timeout=60)
        with pytest.raises(ShardError) as caught:
            run(loader)
    else:
        batches = iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, timeout=60))
        with pytest.raises(ShardError) as caught:
            run(batches)
        # The traceback's frames hold the iterator: cleared, `del` is its last reference and its workers stop
        # now (left to the garbage collector in a reference cycle, torch's shutdown stalls 5 s per worker).
        traceback.clear_frames(caught.tb)
        del batches
    assert first_line(caught.value) == f"shard {gone}: missing"
    assert (caught.value.shard, caught.value.reason) == (str(gone), "missing")
    assert "DataLoader worker process 0" in str(caught.value)  # where it came from, after the first line


class BrokenDataset(VideoDataset):
    """A dataset whose block reads fail with an exception that is not ours (a bug, say)."""

    def read_block(self, block, start=0, alloc=None):
        raise IndexError("boom")


def test_unexpected_worker_errors_become_ours_naming_the_shards(store):
    ds = BrokenDataset(store, world=World(), block_size=5, shuffle=False)
    with pytest.raises(PipelineError) as caught:
        run(make_loader(ds, batch_size=4, num_workers=1, timeout=60))
    assert first_line(caught.value) == f"shard {shard(store, 0)}: reading failed: IndexError: boom"
