"""Writing a store to a real S3-compatible server (moto in server mode, through s3fs) from Dask workers."""

from __future__ import annotations

import pytest
from s3_server import s3_fixture, s3_session_fixture  # noqa: F401 (pytest fixtures)

import datagen.jobs as jobs
from datagen.cli import main
from datagen.jobs import JOURNAL, generation_job, run_store_job
from datagen.store.format import MANIFEST
from datagen.store.location import RemoteStore, verify_remote_store

PARAMS = {"frames": 3, "size": 6}


def job(out, pattern):
    return generation_job(out, pattern, PARAMS, seed=7, n=24, shard_size=5, formats=["wds", "hdf5"])


def objects(url: str) -> dict[str, bytes]:
    store = RemoteStore(url)
    return {name: store.read(name) for name in store.entries()}


@pytest.mark.integration
def test_dask_workers_write_to_s3_byte_identical_and_resume(s3, tmp_path, pattern, monkeypatch, capsys):
    folder = tmp_path / "local"
    reference = run_store_job(job(folder, pattern), workers=0)
    local = {p.name: p.read_bytes() for p in folder.iterdir()}

    url = s3.url("runs", "store")
    real = jobs.write_generated_shard

    def failing(out, generator, params, seed, prefix, formats, index, *rest):
        if index == 3:
            raise RuntimeError("node lost")
        return real(out, generator, params, seed, prefix, formats, index, *rest)

    with monkeypatch.context() as m:  # interrupted: in-process, so the patch applies
        m.setattr(jobs, "write_generated_shard", failing)
        with pytest.raises(RuntimeError, match="node lost"):
            run_store_job(job(url, pattern), workers=0)
    left = objects(url)
    assert MANIFEST not in left and len(left[JOURNAL].decode().splitlines()) == 3

    manifest = run_store_job(job(url, pattern), workers=2, resume=True)  # two Dask worker processes
    assert manifest["digest"] == reference["digest"] and manifest == reference
    assert objects(url) == local
    assert verify_remote_store(url) == []
    assert main(["verify", url]) == 0 and "ok: 10 shards" in capsys.readouterr().err
    assert main(["info", url]) == 0 and reference["digest"] in capsys.readouterr().out


@pytest.mark.integration
def test_large_shards_go_up_in_parts_and_hash_the_same(s3, tmp_path, pattern, monkeypatch):
    """A 12 MB shard with a 5 MiB block size (fsspec config, as users set it) is a 3-part multipart upload."""
    import fsspec
    import s3fs

    options = {**fsspec.config.conf.get("s3", {}), "default_block_size": 5 << 20}
    monkeypatch.setitem(fsspec.config.conf, "s3", options)
    s3fs.S3FileSystem.clear_instance_cache()
    params = {"frames": 20, "size": 64}

    def big(out):
        return generation_job(out, pattern, params, seed=3, n=150, shard_size=150, formats=["wds"])

    reference = run_store_job(big(tmp_path / "local"), workers=0)
    url = s3.url("big")
    assert run_store_job(big(url), workers=0) == reference
    etag = s3.filesystem().info(s3.url("big", "pattern-000000.tar"))["ETag"]
    assert etag.strip('"').endswith("-3")  # S3's ETag of a multipart object: md5 of the part md5s, "-parts"
    assert verify_remote_store(url) == []
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.integration
def test_a_failed_upload_is_aborted_leaving_nothing(s3, monkeypatch):
    import fsspec
    import s3fs

    import datagen.store.wds as wds
    from datagen.store.location import write_remote_shard

    monkeypatch.setitem(
        fsspec.config.conf, "s3", {**fsspec.config.conf.get("s3", {}), "default_block_size": 5 << 20}
    )
    s3fs.S3FileSystem.clear_instance_cache()

    def torn(f, samples):
        f.write(b"\0" * (11 << 20))  # two parts uploaded
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wds, "write_wds", torn)
    with pytest.raises(OSError, match="No space left"):
        write_remote_shard(s3.url("torn"), "pattern-000000.tar", "wds", [])
    fs = s3.filesystem()
    assert not fs.exists(s3.url("torn", "pattern-000000.tar"))
    assert fs.call_s3("list_multipart_uploads", Bucket=s3.bucket).get("Uploads", []) == []
    s3fs.S3FileSystem.clear_instance_cache()
