"""Never destroy, run or trust what the user did not ask for: --overwrite, specs, manifests, resume, space."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from datagen.cli import main
from datagen.errors import DatagenError
from datagen.jobs import JOB_FILE, JOURNAL, generation_job, run_store_job
from datagen.store.format import CARD, MANIFEST, ManifestError, load_manifest, validate_manifest
from datagen.store.ownership import refuse_protected, remove_store

PARAMS = {"frames": 3, "size": 6}


def make(out, pattern, *, n=12, shard_size=5, seed=7, **kw):
    job = generation_job(out, pattern, PARAMS, seed=seed, n=n, shard_size=shard_size, formats=["wds"])
    return run_store_job(job, workers=0, **kw)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- --overwrite only ever removes a recognisable datagen store ----------------------------------------


def test_overwrite_replaces_a_store(tmp_path, pattern):
    out = tmp_path / "s"
    make(out, pattern)
    again = make(out, pattern, seed=8, overwrite=True)
    assert again["seed"] == 8 and load_manifest(out)["seed"] == 8
    files = [MANIFEST, CARD] + [s["path"] for s in again["shards"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)


@pytest.mark.parametrize(
    "intruder",
    ["notes.txt", "pattern-000099.tar", ".hidden", "sub/"],
    ids=["user-file", "unlisted-shard-name", "dotfile", "folder"],
)
def test_overwrite_refuses_a_store_with_anything_else(tmp_path, pattern, intruder):
    out = tmp_path / "s"
    make(out, pattern)
    if intruder.endswith("/"):
        (out / intruder).mkdir()
        (out / intruder / "thesis.tex").write_text("years of work")
    else:
        (out / intruder).write_text("years of work")
    before = snapshot(out)
    with pytest.raises(DatagenError, match="refusing to overwrite.*not part of the datagen store"):
        make(out, pattern, seed=8, overwrite=True)
    assert snapshot(out) == before


def test_overwrite_refuses_a_symlink_even_to_a_shard(tmp_path, pattern):
    out = tmp_path / "s"
    m = make(out, pattern)
    victim = tmp_path / "precious.tar"
    victim.write_text("keep me")
    shard = out / m["shards"][0]["path"]
    shard.unlink()
    shard.symlink_to(victim)
    with pytest.raises(DatagenError, match="refusing to overwrite"):
        make(out, pattern, seed=8, overwrite=True)
    assert victim.read_text() == "keep me" and shard.is_symlink()


def test_overwrite_refuses_a_manifest_that_is_not_ours(tmp_path, pattern):
    out = tmp_path / "s"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"name": "my web app", "version": "1.0"}))
    (out / "index.js").write_text("console.log(1)")
    before = snapshot(out)
    with pytest.raises(DatagenError, match="is not a datagen manifest"):
        make(out, pattern, overwrite=True)
    assert snapshot(out) == before


def test_overwrite_of_an_unfinished_run_removes_only_its_files(tmp_path, pattern):
    out = tmp_path / "s"
    make(out, pattern)
    (out / MANIFEST).unlink()  # as if killed before the manifest: job file, journal-less shards, a temp
    job = generation_job(out, pattern, PARAMS, seed=7, n=12, shard_size=5, formats=["wds"])
    (out / JOB_FILE).write_text(json.dumps({k: job.record[k] for k in job.record}))
    (out / ".pattern-000002.tar.1234.tmp").write_bytes(b"partial")
    (out / f".{JOB_FILE}.1234.tmp").write_bytes(b"partial")
    remove_store(out)
    assert list(out.iterdir()) == []


def test_overwrite_refuses_protected_folders(tmp_path, pattern, monkeypatch):
    store = tmp_path / "home" / "s"
    make(store, pattern)
    monkeypatch.chdir(store)
    with pytest.raises(DatagenError, match="the current directory"):
        make(Path("."), pattern, seed=8, overwrite=True)
    with pytest.raises(DatagenError, match="a parent of the current directory"):
        refuse_protected(store.parent)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatagenError, match="your home folder"):
        refuse_protected(tmp_path / "home")
    with pytest.raises(DatagenError, match="file system root"):
        refuse_protected(Path("/"))
    assert load_manifest(store)["seed"] == 7


def test_overwrite_cli_refusal_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("1,2,3")
    code = main(["balls", "--n", "4", "--frames", "3", "--out", str(out), "--overwrite", "--workers", "0"])
    assert code == 2 and "refusing to overwrite" in one_line_error(capsys)
    assert (out / "data.csv").read_text() == "1,2,3"


# --- re-running into a finished store -------------------------------------------------------------------


def test_same_job_into_a_complete_store_checks_instead_of_not_empty(tmp_path, pattern):
    out = tmp_path / "s"
    first = make(out, pattern)
    assert make(out, pattern) == first  # no flags: the store is this job's, every shard checks out
    with pytest.raises(DatagenError, match=r"holds a different datagen job \(seed: 7 -> 9\).*--overwrite"):
        make(out, pattern, seed=9)


def test_leftovers_after_a_kill_past_the_manifest_are_removed(tmp_path, pattern, capsys):
    out = tmp_path / "s"
    m = make(out, pattern)
    record = {k: m[k] for k in ("generator", "params", "seed", "layout", "sample")}
    for cleanup in ("rerun", "verify"):
        (out / JOB_FILE).write_text(json.dumps(record))
        (out / JOURNAL).write_text("")
        if cleanup == "rerun":
            assert make(out, pattern) == m
        else:
            assert main(["verify", str(out)]) == 0
            assert "leftover" in capsys.readouterr().err
        assert not (out / JOB_FILE).exists() and not (out / JOURNAL).exists()


def test_a_damaged_complete_store_is_never_ok_and_resume_repairs_it(tmp_path, pattern):
    out = tmp_path / "s"
    m = make(out, pattern)
    before = snapshot(out)
    shard = out / m["shards"][1]["path"]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # same size, different bytes: only the sha256 tells
    shard.write_bytes(bytes(data))
    (out / m["shards"][2]["path"]).unlink()
    with pytest.raises(DatagenError, match="2 damaged or missing shards.*--resume"):
        make(out, pattern)
    assert make(out, pattern, resume=True) == m
    assert snapshot(out) == before


# --- specs and manifests are validated before use ------------------------------------------------------


def _spec(tmp_path: Path, **change) -> Path:
    spec = {
        "name": "tiny",
        "generator": "balls",
        "params": {"n_balls": 1, "size": 8, "frames": 3},
        "seed": 1,
        "n": 4,
        "shard_size": 2,
        "formats": ["wds"],
        "digest": "sha256:" + "0" * 64,
    }
    spec.update(change)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "../escape"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "/abs"}, "name"),
        ({"name": ".."}, "name"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": -1}, "seed must be in"),
        ({"seed": True}, "seed must be an integer"),
        ({"n": "4"}, "n must be an integer"),
        ({"formats": ["zip"]}, "formats"),
        ({"digest": "md5:abc"}, "digest"),
        ({"params": [1, 2]}, "params must be an object"),
        ({"nmae": "typo"}, "'nmae' is not a spec field"),
    ],
)
def test_bad_specs_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    path = _spec(tmp_path, **change)
    assert main(["build", str(path), "--workers", "0", "--quiet"]) == 2
    assert message in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


def test_a_spec_that_is_not_an_object_is_one_line(tmp_path, capsys):
    path = tmp_path / "spec.json"
    for text in ("[1, 2]", "{", '"x"', "[" * 100_000):
        path.write_text(text)
        assert main(["build", str(path)]) == 2
        one_line_error(capsys)


def test_build_writes_under_the_spec_name_and_resume_checks_every_shard(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(_spec(tmp_path)), "--workers", "0", "--quiet"]) == 1  # digest differs
    assert "DIGEST MISMATCH" in capsys.readouterr().err
    store = tmp_path / "data" / "tiny"
    manifest = load_manifest(store)
    spec = _spec(tmp_path, digest=manifest["digest"])
    before = snapshot(store)
    shard = store / manifest["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[-600] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["build", str(spec), "--workers", "0", "--quiet"]) == 2
    assert "1 damaged or missing shards" in one_line_error(capsys)
    assert main(["build", str(spec), "--resume", "--workers", "0", "--quiet"]) == 0
    assert "ok: tiny matches" in capsys.readouterr().err
    assert snapshot(store) == before


HOSTILE_PATHS = [
    "../pattern-000000.tar",
    "/etc/passwd",
    "pipe:rm -rf ~",
    "http://example.com/pattern-000000.tar",
    "pattern-000000.tar; rm -rf ~",
    "sub/pattern-000000.tar",
    "pattern-000000.tar\n",
    "$(reboot)-000000.tar",
    "pattern-000000.h5",  # a wds entry must end in .tar
    "other-000000.tar",  # not this store's prefix
]


@pytest.mark.parametrize("bad", HOSTILE_PATHS)
def test_every_store_command_refuses_a_hostile_shard_path(tmp_path, pattern, capsys, bad):
    out = tmp_path / "s"
    make(out, pattern)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"][0]["path"] = bad
    (out / MANIFEST).write_text(json.dumps(manifest))
    for command in (
        ["verify", str(out)],
        ["info", str(out)],
        ["preview", str(out), "-o", str(tmp_path / "p.gif")],
    ):
        assert main(command) == 2, command
        line = one_line_error(capsys)
        assert str(out / MANIFEST) in line and "shards[0].path" in line
    assert not (tmp_path / "p.gif").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed", 1.5, "seed must be an integer"),
        ("schema_version", 2, "schema_version"),
        ("shards", {}, "shards must be a list"),
        ("totals", {"wds": {"n_shards": 1, "n_samples": 1, "bytes": 1}}, "totals do not equal"),
    ],
)
def test_structurally_wrong_manifests_are_one_line(tmp_path, pattern, capsys, field, value, message):
    out = tmp_path / "s"
    make(out, pattern)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest[field] = value
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert main(["info", str(out)]) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_samples", 0, "n_samples must be in 1..5"),
        ("n_samples", 6, "n_samples must be in 1..5"),
        ("n_samples", 4, "cannot hold 4 samples"),
        ("first_key", "000000001", "cannot hold"),
        ("sha256", "abc", "sha256"),
        ("bytes", -1, "bytes must be >= 0"),
        ("format", "zip", "not a known format"),
    ],
)
def test_shard_entries_are_checked_against_the_layout(tmp_path, pattern, key, value, message):
    manifest = make(tmp_path / "s", pattern)
    manifest["shards"][0][key] = value
    with pytest.raises(ManifestError, match=message):
        validate_manifest(manifest, "m")


# --- space and size -------------------------------------------------------------------------------------


def test_a_job_too_big_for_the_disk_is_refused_up_front_and_plans_lazily(tmp_path, pattern, capsys):
    out = tmp_path / "huge"
    start = time.perf_counter()
    job = generation_job(out, pattern, PARAMS, seed=1, n=10**12, shard_size=1000, formats=["wds"])
    assert len(job.tasks) == 10**9 and job.tasks[-1].args[-2:] == (10**12 - 1000, 10**12)
    with pytest.raises(DatagenError, match=r"not enough space in .*needs at least 108\.0 TB"):
        run_store_job(job, workers=0)
    assert time.perf_counter() - start < 5 and not out.exists()
    assert main(["balls", "--n", str(10**12), "--out", str(out), "--workers", "0"]) == 2
    assert "not enough space" in one_line_error(capsys) and not out.exists()


def test_free_space_is_checked_on_the_file_system_the_store_goes_to(tmp_path, pattern, monkeypatch):
    real = os.statvfs(tmp_path)
    seen = []

    def fake_statvfs(path):
        seen.append(Path(path))
        return real

    monkeypatch.setattr(os, "statvfs", fake_statvfs)
    make(tmp_path / "a" / "b" / "c", pattern)
    assert seen and seen[0] == tmp_path


def test_overwrite_of_a_videogan_store_removes_its_strips_and_nothing_else(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from datagen.sources.video import FrameReader, VideoSource, shipped_sample_video

    frames = tmp_path / "frames"
    frames.mkdir()
    for k, f in enumerate(
        FrameReader(VideoSource(str(shipped_sample_video("carphone_pristine.mp4")), "video"))
    ):
        cv2.imwrite(str(frames / f"{k:03d}.png"), f)
        if k == 19:
            break
    out = tmp_path / "golf"
    cmd = ["stabilize", str(frames), "-o", str(out), "-q", "-w", "0", "--videogan", "--min-frames", "16"]
    assert main(cmd) == 0
    assert (out / "videogan" / "list.txt").exists()
    stray = out / "videogan" / "000000" / "my-notes.txt"
    stray.write_text("mine")
    before = snapshot(out)
    assert main([*cmd, "--overwrite"]) == 2
    assert snapshot(out) == before
    stray.unlink()
    assert main([*cmd, "--overwrite"]) == 0
    assert (out / "videogan" / "list.txt").exists() and load_manifest(out)["stabilize"]["clips_kept"] >= 1


def test_stabilize_resume_retries_an_input_that_could_not_be_read(tmp_path):
    """Killed after an unreadable input was journaled; the input turns up; --resume reads it this time."""
    import shutil

    pytest.importorskip("cv2")
    from datagen.sources.video import expand_inputs, shipped_sample_video
    from datagen.stabilize.job import stabilization_job, write_stabilized_shard

    real = str(shipped_sample_video("carphone_pristine.mp4"))
    late = tmp_path / "late.mp4"
    out = tmp_path / "golf"
    out.mkdir()
    listing = tmp_path / "inputs.txt"
    listing.write_text("late.mp4\n")
    job = stabilization_job(out, expand_inputs([str(listing)]), {"min_frames": 16}, seed=0, formats=["wds"])
    task = job.tasks[0]
    failed = write_stabilized_shard(*task.args)
    assert failed["video"]["error"]
    (out / JOB_FILE).write_text(json.dumps({k: job.record[k] for k in job.record}))
    (out / JOURNAL).write_text(json.dumps({"task": task.id, "result": failed}) + "\n")
    shutil.copy(real, late)
    cmd = ["stabilize", str(listing), "-o", str(out), "-q", "-w", "0", "--min-frames", "16", "--seed", "0"]
    assert main([*cmd, "--format", "wds", "--resume"]) == 0
    summary = load_manifest(out)["stabilize"]
    assert summary["unreadable"] == [] and summary["clips_kept"] >= 1


def test_public_make_store_is_the_cli_job_and_reuses_a_finished_store(tmp_path):
    from datagen.api import make_store

    params = {"n_balls": 1, "size": 16, "frames": 4}
    first = make_store(tmp_path / "api", "balls", params, n=5, seed=1, shard_size=3)
    cli = ["balls", "--balls", "1", "--size", "16", "--frames", "4", "--n", "5", "--seed", "1"]
    assert main([*cli, "--shard-size", "3", "--out", str(tmp_path / "cli"), "--workers", "0", "--quiet"]) == 0
    assert first["digest"] == load_manifest(tmp_path / "cli")["digest"]
    assert make_store(tmp_path / "api", "balls", params, n=5, seed=1, shard_size=3) == first
