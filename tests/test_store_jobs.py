"""Stores, manifest and the job runner: byte-reproducibility, verification, refusal rules, resume."""

from __future__ import annotations

import json
import tarfile

import h5py
import numpy as np
import pytest
import webdataset as wds

from datagen.errors import DatagenError
from datagen.jobs import JOB_FILE, JOURNAL, generation_job, run_store_job
from datagen.store.manifest import MANIFEST, load_manifest, verify_store
from datagen.store.readers import iter_samples


def make(out, pattern, *, n=23, shard_size=5, formats=("wds", "hdf5"), seed=7, workers=0, **kw):
    job = generation_job(
        out, pattern, {"frames": 3, "size": 6}, seed=seed, n=n, shard_size=shard_size, formats=formats
    )
    return run_store_job(job, workers=workers, **kw)


def shard_hashes(manifest):
    return {s["path"]: s["sha256"] for s in manifest["shards"]}


def all_samples(out, manifest, fmt):
    return {
        s.key: (s.video, s.meta)
        for e in manifest["shards"]
        if e["format"] == fmt
        for s in iter_samples(out / e["path"], fmt)
    }


def test_manifest_layout_and_plain_readers(tmp_path, pattern):
    m = make(tmp_path / "s", pattern)
    assert m["totals"]["wds"] == {"n_shards": 5, "n_samples": 23, "bytes": m["totals"]["wds"]["bytes"]}
    assert [s["n_samples"] for s in m["shards"] if s["format"] == "hdf5"] == [5, 5, 5, 5, 3]
    assert m["shards"][0]["first_key"] == "000000000" and m["layout"]["shard_size"] == 5
    assert not (tmp_path / "s" / JOB_FILE).exists() and not (tmp_path / "s" / JOURNAL).exists()
    # plain webdataset and tarfile read the tars; plain h5py reads the HDF5 files
    tar = tmp_path / "s" / "pattern-000001.tar"
    names = tarfile.open(tar).getnames()
    assert names[:2] == ["000000005.video.npy", "000000005.meta.json"]
    first = next(iter(wds.WebDataset(str(tar), shardshuffle=False).decode()))
    assert first["__key__"] == "000000005" and first["video.npy"].shape == (3, 6, 6, 1)
    with h5py.File(tmp_path / "s" / "pattern-000001.h5") as f:
        assert f["video"].shape == (5, 3, 6, 6, 1) and f["video"].chunks == (1, 3, 6, 6, 1)
        assert json.loads(f["meta"][0])["index"] == 5
        np.testing.assert_array_equal(f["video"][0], first["video.npy"])


@pytest.mark.integration
def test_same_seed_same_bytes_any_workers(tmp_path, pattern):
    a = make(tmp_path / "a", pattern, workers=0)
    b = make(tmp_path / "b", pattern, workers=2)
    assert shard_hashes(a) == shard_hashes(b)
    assert a["digest"] == b["digest"]
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()
    c = make(tmp_path / "c", pattern, seed=8)
    assert c["digest"] != a["digest"]


def test_sample_content_independent_of_shard_size(tmp_path, pattern):
    a = make(tmp_path / "a", pattern, shard_size=5)
    b = make(tmp_path / "b", pattern, shard_size=7)
    for fmt in ("wds", "hdf5"):
        sa, sb = all_samples(tmp_path / "a", a, fmt), all_samples(tmp_path / "b", b, fmt)
        assert sa.keys() == sb.keys() and len(sa) == 23
        for k in sa:
            np.testing.assert_array_equal(sa[k][0], sb[k][0])
            assert sa[k][1] == sb[k][1]


def test_verify_names_bad_and_missing_shards(tmp_path, pattern):
    out = tmp_path / "s"
    make(out, pattern)
    assert verify_store(out) == []
    data = bytearray((out / "pattern-000002.tar").read_bytes())
    data[600] ^= 0xFF
    (out / "pattern-000002.tar").write_bytes(bytes(data))
    (out / "pattern-000003.h5").unlink()
    problems = {p.path: p.reason for p in verify_store(out)}
    assert set(problems) == {"pattern-000002.tar", "pattern-000003.h5"}
    assert "missing" in problems["pattern-000003.h5"]


def test_refuses_non_empty_out_and_foreign_folders(tmp_path, pattern):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DatagenError, match="not empty"):
        make(out, pattern)
    with pytest.raises(DatagenError, match="not a datagen store"):
        make(out, pattern, overwrite=True)
    with pytest.raises(DatagenError, match="not a datagen store"):
        make(out, pattern, resume=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_rejects_a_different_job_and_overwrite_replaces(tmp_path, pattern):
    out = tmp_path / "s"
    first = make(out, pattern)
    with pytest.raises(DatagenError, match="different datagen job.*seed"):
        make(out, pattern, seed=9, resume=True)
    assert make(out, pattern, resume=True) == first  # finished store: nothing to do
    again = make(out, pattern, seed=9, overwrite=True)
    assert again["seed"] == 9 and load_manifest(out)["seed"] == 9


def test_resume_after_partial_run_gives_identical_store(tmp_path, pattern):
    ref = make(tmp_path / "ref", pattern)
    out = tmp_path / "s"
    make(out, pattern)
    # Rewind to an interrupted state: no manifest, a journal with some tasks, a torn last line,
    # one journaled shard corrupted and one stale temp file.
    (out / MANIFEST).unlink()
    job = generation_job(
        out, pattern, {"frames": 3, "size": 6}, seed=7, n=23, shard_size=5, formats=("wds", "hdf5")
    )
    (out / JOB_FILE).write_text(json.dumps(job.record))
    lines = [
        json.dumps(
            {
                "task": "shard-000000",
                "result": {"shards": [e for e in ref["shards"] if e["path"].startswith("pattern-000000")]},
            }
        )
    ]
    lines += [
        json.dumps(
            {
                "task": "shard-000001",
                "result": {"shards": [e for e in ref["shards"] if e["path"].startswith("pattern-000001")]},
            }
        )
    ]
    (out / JOURNAL).write_text("\n".join(lines) + '\n{"task": "shard-0000')
    (out / "pattern-000001.tar").write_bytes(b"garbage")
    (out / ".pattern-000004.tar.123.tmp").write_bytes(b"partial")
    for p in ("pattern-000003.tar", "pattern-000004.h5"):
        (out / p).unlink()
    resumed = make(out, pattern, resume=True)
    assert shard_hashes(resumed) == shard_hashes(ref)
    assert (out / MANIFEST).read_bytes() == (tmp_path / "ref" / MANIFEST).read_bytes()
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"n": 0}, "--n"),
        ({"shard_size": 0}, "--shard-size"),
        ({"formats": ("zip",)}, "format"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_job_arguments(tmp_path, pattern, kw, message):
    with pytest.raises(DatagenError, match=message):
        make(tmp_path / "s", pattern, **kw)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("n", [0, 1, 17])
def test_tar_bytes_equal_what_tarfile_writes(tmp_path, n):
    """The hand-packed USTAR headers must stay byte-identical to the standard library's writer."""
    import hashlib
    import io

    from datagen.store.sample import Sample
    from datagen.store.wds import meta_bytes, npy_bytes, write_wds

    rng = np.random.default_rng(n)
    samples = [
        Sample(f"{i:09d}", rng.integers(0, 256, (3, 5, 7, 1), dtype=np.uint8), {"i": i, "x": [0.5] * i})
        for i in range(n)
    ]
    keys, sha = write_wds(tmp_path / "a.tar", samples)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for name, data in (
                (f"{s.key}.video.npy", npy_bytes(s.video)),
                (f"{s.key}.meta.json", meta_bytes(s.meta)),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    written = (tmp_path / "a.tar").read_bytes()
    assert written == buf.getvalue()
    assert sha == hashlib.sha256(written).hexdigest() and keys == [s.key for s in samples]
