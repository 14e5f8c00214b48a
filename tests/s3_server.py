"""A real S3-compatible server for the tests: ``moto`` in server mode, a separate process on loopback.

Tests talk to it through ``s3fs`` exactly as users talk to AWS: the endpoint and the (fake) credentials
reach boto through environment variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ...), which
every child process (DDP ranks, Dask workers, CLI subprocesses) inherits, or through fsspec storage
options (:attr:`S3Server.storage_options`); never through our own flags or manifests.

Use the ``s3`` fixture (one server for the session, a fresh bucket per test); import the fixture
functions under their own names so that pytest registers them (``s3``, ``s3_session``)::

    from s3_server import s3_fixture, s3_session_fixture, upload_store  # noqa: F401

    def test_read(s3):
        url = upload_store(local_store, s3.url("store"))
        ...

or, outside pytest, ``with s3_server() as server: ...``. Tests that import this module skip when
``moto[server]`` or ``s3fs`` is not installed (``pip install -e .[test]`` installs both).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
pytest.importorskip("s3fs", reason="the S3 tests need s3fs")
pytest.importorskip("flask", reason="moto's server mode needs moto[server] (flask)")

STARTUP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    """A running server: its endpoint, the environment that points boto at it, and the process."""

    endpoint_url: str
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)
    bucket: str = ""

    @property
    def storage_options(self) -> dict:
        """fsspec options for ``s3://`` that reach this server without the environment variables."""
        return {
            "key": self.env["AWS_ACCESS_KEY_ID"],
            "secret": self.env["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }

    def filesystem(self):
        """A fresh (uncached) s3fs filesystem on this server."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name by default) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    def url(self, *parts: str) -> str:
        """``s3://<this test's bucket>/<parts...>``."""
        if not self.bucket:
            raise RuntimeError("no bucket: use the s3 fixture or call make_bucket() first")
        return "s3://" + "/".join([self.bucket, *parts])


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait_ready(endpoint: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited at start with code {process.returncode}")
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server not answering on {endpoint} after {STARTUP_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start ``python -m moto.server`` on a free loopback port; point boto at it through the environment
    for the duration; stop the process afterwards."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,  # botocore's service endpoint variable (boto3, aiobotocore)
        "FSSPEC_S3_ENDPOINT_URL": endpoint,  # fsspec's config variable: s3fs's endpoint_url
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    try:
        _wait_ready(endpoint, process)
        with _environment(env):
            _clear_fsspec_instances()
            yield S3Server(endpoint_url=endpoint, process=process, env=env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _clear_fsspec_instances()


def _clear_fsspec_instances() -> None:
    """s3fs caches filesystems by their options: none made under another environment may be reused."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def upload_store(local: str | os.PathLike, url: str, storage_options: dict | None = None) -> str:
    """Copy a local store folder (shards, manifest, every file under it) to ``url`` (``s3://bucket/prefix``);
    return ``url``. Uses fsspec, so it works for any backend the URL names."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    local = Path(local)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}")
    fs.invalidate_cache()
    return url


@pytest.fixture(scope="session", name="s3_session")
def s3_session_fixture() -> Iterator[S3Server]:
    """One moto server process for the whole session (it starts in ~1-3 s)."""
    with s3_server() as server:
        yield server


@pytest.fixture(name="s3")
def s3_fixture(s3_session: S3Server) -> S3Server:
    """The session's server with a fresh, empty bucket for this test (``s3.url("prefix")``)."""
    return S3Server(
        endpoint_url=s3_session.endpoint_url,
        process=s3_session.process,
        env=s3_session.env,
        bucket=s3_session.make_bucket(),
    )
