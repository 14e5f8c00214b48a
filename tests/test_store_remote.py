"""Stores written, resumed, verified and overwritten at fsspec URLs (memory://): the local bytes exactly."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import datagen.jobs as jobs
from datagen.cli import main
from datagen.errors import DatagenError
from datagen.jobs import JOB_FILE, JOURNAL, generation_job, run_store_job
from datagen.store.card import regeneration_spec
from datagen.store.format import CARD, MANIFEST
from datagen.store.location import RemoteStore, load_store_manifest, normalize, verify_remote_store

fsspec = pytest.importorskip("fsspec")
PARAMS = {"frames": 3, "size": 6}


def job(out, pattern, seed=7):
    return generation_job(out, pattern, PARAMS, seed=seed, n=12, shard_size=5, formats=["wds", "hdf5"])


def objects(url: str) -> dict[str, bytes]:
    store = RemoteStore(url)
    return {name: store.read(name) for name in store.entries()}


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def url():
    """A fresh memory:// store URL, removed afterwards."""
    path = f"test-{uuid.uuid4().hex[:10]}/store"
    yield f"memory://{path}"
    fsspec.filesystem("memory").rm(f"/{path.split('/')[0]}", recursive=True)


@pytest.fixture
def local(tmp_path, pattern):
    out = tmp_path / "local"
    manifest = run_store_job(job(out, pattern), workers=0)
    return out, manifest


def test_url_store_is_byte_identical_to_the_local_store(url, local, pattern):
    folder, reference = local
    manifest = run_store_job(job(url, pattern), workers=0)
    assert manifest == reference
    assert objects(url) == local_files(folder)  # shards, card and manifest, byte for byte
    assert run_store_job(job(url, pattern), workers=0) == reference  # a finished store is checked and reused
    assert load_store_manifest(url + "/manifest.json") == reference
    assert verify_remote_store(url) == []


def _interrupt_at(monkeypatch, shard: int) -> None:
    real = jobs.write_generated_shard

    def failing(out, generator, params, seed, prefix, formats, index, start, stop):
        if index == shard:
            raise RuntimeError("node lost")
        return real(out, generator, params, seed, prefix, formats, index, start, stop)

    monkeypatch.setattr(jobs, "write_generated_shard", failing)


def test_interrupted_url_job_resumes_to_identical_bytes(url, local, pattern, monkeypatch):
    folder, reference = local
    with monkeypatch.context() as m:
        _interrupt_at(m, 2)
        with pytest.raises(RuntimeError, match="node lost"):
            run_store_job(job(url, pattern), workers=0)
    left = objects(url)
    assert MANIFEST not in left and JOB_FILE in left and JOURNAL in left
    assert len(left[JOURNAL].decode().splitlines()) == 2  # shards 0 and 1, flushed as the run failed
    store = RemoteStore(url)
    store.write("pattern-000000.tar", b"torn")  # journaled, but fails its check: made again
    with pytest.raises(DatagenError, match="unfinished run of this job; pass --resume"):
        run_store_job(job(url, pattern), workers=0)
    assert run_store_job(job(url, pattern), workers=0, resume=True) == reference
    assert objects(url) == local_files(folder)


def test_damaged_finished_url_store_is_repaired_on_resume(url, local, pattern):
    folder, reference = local
    run_store_job(job(url, pattern), workers=0)
    RemoteStore(url).remove("pattern-000001.h5")
    with pytest.raises(DatagenError, match="1 damaged or missing shards"):
        run_store_job(job(url, pattern), workers=0)
    assert [p.path for p in verify_remote_store(url)] == ["pattern-000001.h5"]
    assert run_store_job(job(url, pattern), workers=0, resume=True) == reference
    assert objects(url) == local_files(folder)


def test_overwrite_at_a_url_removes_only_our_store(url, pattern):
    run_store_job(job(url, pattern), workers=0)
    again = run_store_job(job(url, pattern, seed=8), workers=0, overwrite=True)
    assert load_store_manifest(url)["seed"] == 8
    assert set(objects(url)) == {MANIFEST, CARD} | {s["path"] for s in again["shards"]}
    RemoteStore(url).write("notes.txt", b"mine")
    before = objects(url)
    with pytest.raises(DatagenError, match="notes.txt is not part of the datagen store"):
        run_store_job(job(url, pattern), workers=0, overwrite=True)
    assert objects(url) == before
    other = url + "-other"
    RemoteStore(other).write("data.bin", b"x")
    with pytest.raises(DatagenError, match="is not empty and is not a datagen store"):
        run_store_job(job(other, pattern), workers=0)


def test_cli_verify_info_preview_and_generation_at_a_url(url, tmp_path, capsys):
    assert main(["balls", "--n", "6", "--frames", "3", "--size", "8", "--seed", "1", "--shard-size", "4",
                 "--workers", "0", "--quiet", "--out", url]) == 0  # fmt: skip
    assert main(["verify", url]) == 0
    assert "ok: 2 shards" in capsys.readouterr().err
    assert main(["info", url]) == 0
    out = capsys.readouterr().out
    assert f"store      {url}" in out and "seed       1" in out
    assert main(["preview", url, "--out", str(tmp_path / "p.png"), "--count", "2"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    RemoteStore(url).write("balls-000001.tar", b"\0" * 10)
    assert main(["verify", url]) == 1
    assert "BAD balls-000001.tar: size 10" in capsys.readouterr().err


def test_card_spec_rebuilds_the_url_store_and_resume_reuses_its_seed(url, tmp_path, capsys):
    """The card's spec, run by `datagen build --out URL`, reaches the same digest; --resume without --seed
    at a URL takes the recorded seed."""
    args = [
        "balls",
        "--n",
        "5",
        "--frames",
        "3",
        "--size",
        "8",
        "--shard-size",
        "2",
        "--workers",
        "0",
        "--quiet",
    ]
    assert main([*args, "--seed", "11", "--out", url]) == 0
    manifest = load_store_manifest(url)
    assert main([*args, "--resume", "--out", url]) == 0 and load_store_manifest(url) == manifest
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(regeneration_spec(manifest)))
    assert main(["build", str(spec), "--workers", "0", "--quiet", "--out", url + "-rebuilt"]) == 0
    assert f"matches its spec digest {manifest['digest']}" in capsys.readouterr().err
    assert objects(url + "-rebuilt") == objects(url)


def test_file_urls_are_local_folders(tmp_path):
    assert normalize(f"file://{tmp_path}/s") == tmp_path / "s"
    assert normalize("s3://bucket/prefix/") == "s3://bucket/prefix"
    with pytest.raises(DatagenError, match="names no bucket"):
        normalize("s3://")


def test_local_only_commands_refuse_a_url(tmp_path, capsys):
    """stabilize writes local folders only: `s3://b/x` must not become a folder named 's3:'."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert main(["stabilize", str(video), "--out", "s3://b/x"]) == 2
    assert "looks like a URL" in capsys.readouterr().err
    assert not Path("s3:").exists()
