"""Open a manifest or shard location for reading, without a shell.

- local paths and ``file:`` URLs: ``open``;
- ``http(s)://``: urllib (an HTTP client; no ``curl`` process, whose older webdataset form ran
  ``curl '{url}'`` through a shell); HTTP errors, refused or reset connections and bodies cut short raise
  :class:`RemoteError` with the reason (``HTTP 404 Not Found``, ``connection closed after 1200 of 4096
  bytes``), so readers treat them like any bad shard;
- ``pipe:CMD``: the user's own shell command, through webdataset's ``gopen``. Only ever a source the user
  wrote: nothing read from a manifest is turned into a ``pipe:`` location (see :mod:`pipelines.sources`);
- any other scheme (``s3://``, ``gs://``, ...): fsspec (install its backend, e.g. s3fs or gcsfs).
"""

from __future__ import annotations

import http.client
import io
import urllib.error
import urllib.request
from typing import BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname

# Seconds a connection may stay silent (connect, or between reads) before the read fails.
HTTP_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class RemoteError(OSError):
    """A remote location could not be read (HTTP status, connection, missing backend); the text says why."""


def scheme_of(location: str) -> str:
    """``""`` for local paths, else the URL scheme (``pipe``, ``file``, ``http``, ...)."""
    if location.startswith("pipe:"):
        return "pipe"
    return urlparse(location).scheme if "://" in location or location.startswith("file:") else ""


class _HTTPBody(io.RawIOBase):
    """An HTTP response body that raises when the connection breaks instead of ending quietly (urllib's
    ``read(n)`` returns ``b""`` when a body with a Content-Length stops early)."""

    def __init__(self, response: http.client.HTTPResponse, max_bytes: int | None) -> None:
        self.response = response
        self.expected = response.length  # None for chunked bodies (http.client checks those itself)
        self.max_bytes = max_bytes
        self.got = 0
        if max_bytes is not None and self.expected is not None and self.expected > max_bytes:
            raise RemoteError(f"serves {self.expected} bytes, more than the {max_bytes} expected")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            n = self.response.readinto(buffer)
        except http.client.HTTPException as exn:
            raise RemoteError(f"connection broken: {type(exn).__name__} {exn}") from None
        self.got += n
        if self.max_bytes is not None and self.got > self.max_bytes:
            raise RemoteError(f"sent more than the {self.max_bytes} bytes expected")
        if n == 0 and len(buffer) and self.expected is not None and self.got < self.expected:
            raise RemoteError(f"connection closed after {self.got} of {self.expected} bytes")
        return n

    def close(self) -> None:
        self.response.close()
        super().close()


def _open_http(url: str, max_bytes: int | None) -> BinaryIO:
    try:
        response = urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exn:
        exn.close()
        raise RemoteError(f"HTTP {exn.code} {exn.reason}") from None
    except urllib.error.URLError as exn:
        raise RemoteError(f"cannot connect: {exn.reason}") from None
    except (http.client.HTTPException, ValueError) as exn:
        raise RemoteError(f"cannot connect: {type(exn).__name__} {exn}") from None
    try:
        return io.BufferedReader(_HTTPBody(response, max_bytes), buffer_size=_CHUNK)
    except RemoteError:
        response.close()
        raise


def _open_fsspec(url: str) -> BinaryIO:
    try:
        import fsspec

        return fsspec.open(url, "rb").open()
    except ImportError as exn:
        raise RemoteError(
            f"reading {scheme_of(url)}:// needs fsspec and its backend ({exn}); or pass pipe: commands"
        ) from None
    except (ValueError, KeyError) as exn:  # fsspec: unknown protocol, malformed URL
        raise RemoteError(f"cannot open: {exn}") from None


def open_location(location: str, max_bytes: int | None = None) -> BinaryIO:
    """A binary stream of a local path or URL (see the module docstring for which reader each scheme gets).

    ``max_bytes``: what the location should hold at most (a manifest's shard size); an HTTP body past it
    fails instead of filling memory (a server that streams forever).
    """
    scheme = scheme_of(location)
    if scheme == "":
        return open(location, "rb")
    if scheme == "file":
        return open(url2pathname(urlparse(location).path), "rb")
    if scheme in ("http", "https"):
        return _open_http(location, max_bytes)
    if scheme == "pipe":
        from webdataset.gopen import gopen

        return gopen(location)
    return _open_fsspec(location)


def read_location(location: str, limit: int) -> bytes:
    """The whole content of a location, refused past ``limit`` bytes (a manifest served endlessly)."""
    chunks, total = [], 0
    with open_location(location, limit) as stream:
        while chunk := stream.read(_CHUNK):  # read(limit + 1) would allocate the limit up front
            total += len(chunk)
            if total > limit:
                raise RemoteError(f"larger than {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def hash_location(location: str, digest) -> int:
    """Feed a location's bytes to ``digest`` (a hashlib object); return the byte count."""
    total = 0
    with open_location(location) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            total += len(chunk)
    return total
