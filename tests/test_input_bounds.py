"""Inputs that cannot give a result are one line and exit 2, not an empty store or a petabyte allocation:
`datagen stabilize` with no readable input, `datagen preview` with a size it cannot make."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from datagen.cli import main
from datagen.errors import DatagenError
from datagen.jobs import generation_job, run_store_job
from datagen.store.preview import MAX_PREVIEW_BYTES, plan_preview, write_preview
from datagen.store.sample import Sample
from datagen.store.wds import write_wds


@pytest.fixture
def unreadable(tmp_path):
    """Four inputs, none a video: random bytes named .mp4, text named .avi, an empty frame folder and a
    list naming a file that does not exist."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (root / "text.avi").write_text("not a video\n")
    (root / "frames").mkdir()
    (root / "list.txt").write_text("gone.mp4\n")
    return [str(root / n) for n in ("noise.mp4", "text.avi", "frames", "list.txt")]


def test_stabilize_with_no_readable_input_exits_2_and_leaves_out_as_it_was(tmp_path, unreadable, capsys):
    missing, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (missing, empty):
        assert main(["stabilize", *unreadable, "-o", str(out), "-w", "0", "-q", "--format", "both"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no input could be read (4 of 4 failed): ")
        assert "noise.mp4: OpenCV cannot open" in lines[0] and "and 1 more" in lines[0]
    assert not missing.exists() and list(empty.iterdir()) == []


@pytest.mark.integration
def test_stabilize_with_no_readable_input_on_dask_is_one_line_without_ffmpeg_noise(tmp_path, unreadable):
    out = tmp_path / "s"
    r = subprocess.run(
        [sys.executable, "-m", "datagen", "stabilize", *unreadable[:2], "-o", str(out), "-w", "1"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 2, r.stderr
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        f"error: no input could be read (2 of 2 failed): {unreadable[0]}: OpenCV cannot open this video; "
        f"{unreadable[1]}: OpenCV cannot open this video"
    ]
    assert not out.exists()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "s"
    job = generation_job(
        out,
        "pattern_gen:PATTERN",
        {"frames": 8, "size": 32},
        seed=1,
        n=30,
        shard_size=10,
        formats=["wds", "hdf5"],
    )
    run_store_job(job, workers=0)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_preview_refuses_what_it_cannot_allocate_in_one_line(store, tmp_path, suffix):
    out = tmp_path / f"p{suffix}"
    r = subprocess.run(
        [sys.executable, "-m", "datagen", "preview", str(store), "-o", str(out), "--scale", "100000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "lower --count or --scale" in lines[0], r.stderr
    assert ("65535 px a side" if suffix == ".gif" else "PB, over the") in lines[0]
    assert not out.exists()


def test_preview_plan_bounds_count_and_scale(store):
    manifest = json.loads((store / "manifest.json").read_text())
    plan = plan_preview(manifest, ".gif", count=10**12, scale=None)
    assert plan.count == 30 and plan.scale == 3 and plan.bytes <= MAX_PREVIEW_BYTES  # 96 px / 32 px
    huge = {**manifest, "totals": {"wds": {"n_samples": 10**9, "n_shards": 1, "bytes": 1}}}
    with pytest.raises(DatagenError, match=r"a preview of 1000000000 clips .* over the 1\.1 GB limit"):
        plan_preview(huge, ".png", count=10**12, scale=None)
    many = plan_preview(huge, ".png", count=5000, scale=None)
    assert many.scale < 3 and many.bytes <= MAX_PREVIEW_BYTES  # the default zoom shrinks to fit
    for bad, message in [({"count": 0}, "--count"), ({"scale": 0}, "--scale")]:
        with pytest.raises(DatagenError, match=message):
            plan_preview(manifest, ".gif", **{"count": 4, "scale": 1, **bad})


def test_preview_refuses_a_clip_larger_than_the_manifest_says_before_reading_it(store, tmp_path):
    """A store whose shard holds bigger clips than its manifest states: refused from the tar header."""
    import shutil

    lying = tmp_path / "lying"
    shutil.copytree(store, lying)
    big = [Sample("000000000", np.zeros((8, 512, 512, 1), np.uint8), {"index": 0})]
    write_wds(lying / "pattern-000000.tar", big)
    with pytest.raises(DatagenError, match="over"):
        write_preview(lying, tmp_path / "p.gif", count=4)
    assert not (tmp_path / "p.gif").exists()
    write_preview(store, tmp_path / "ok.gif", count=4)  # the honest store previews
    assert (tmp_path / "ok.gif").stat().st_size > 0
