"""The S3 test server itself: a real moto process that s3fs reaches through the environment alone."""

from __future__ import annotations

import subprocess
import sys

from s3_server import s3_fixture, s3_session_fixture, upload_store  # noqa: F401  (fixtures s3, s3_session)


def test_upload_and_read_back_through_environment(s3, tmp_path):
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    (store / "a.tar").write_bytes(b"x" * 1000)
    (store / "sub" / "b.json").write_text("{}")
    url = upload_store(store, s3.url("prefix"))
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)  # no options: endpoint and keys from the environment
    assert sorted(fs.find(root)) == [f"{s3.bucket}/prefix/a.tar", f"{s3.bucket}/prefix/sub/b.json"]
    with fsspec.open(url + "/a.tar", "rb") as stream:
        assert stream.read() == b"x" * 1000


def test_child_process_inherits_the_server(s3, tmp_path):
    (tmp_path / "f.bin").write_bytes(b"hello")
    url = upload_store(tmp_path, s3.url("p"))
    code = f"import fsspec; print(fsspec.open({url + '/f.bin'!r}, 'rb').open().read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "b'hello'"


def test_storage_options_without_environment(s3, tmp_path, monkeypatch):
    for key in s3.env:
        monkeypatch.delenv(key)
    (tmp_path / "f.bin").write_bytes(b"abc")
    url = upload_store(tmp_path, s3.url("q"), s3.storage_options)
    assert s3.filesystem().cat_file(url + "/f.bin") == b"abc"
