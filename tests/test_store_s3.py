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
