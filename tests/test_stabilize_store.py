"""`datagen stabilize` end to end on real footage: stores, manifest summary, bad inputs, determinism."""

from __future__ import annotations

import io
import json
import tarfile

import cv2
import h5py
import numpy as np
import pytest

import datagen.cli.stabilize  # noqa: F401  (registers the command)
from datagen.cli import main
from datagen.sources.video import FrameReader, VideoSource, shipped_sample_video
from datagen.stabilize.params import StabilizeParams
from datagen.stabilize.task import stabilize_video
from datagen.stabilize.videogan_format import read_list, read_strip

CARPHONE = shipped_sample_video("carphone_pristine.mp4")


def carphone_frames(n: int) -> list[np.ndarray]:
    out = []
    for f in FrameReader(VideoSource(str(CARPHONE), "video")):
        out.append(f)
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A real video, a frame folder, a corrupt file, a truncated AVI and a list naming a missing file."""
    root = tmp_path_factory.mktemp("inputs")
    frames = carphone_frames(40)
    folder = root / "frames"
    folder.mkdir()
    for k, f in enumerate(frames[:20]):
        cv2.imwrite(str(folder / f"{k}.png"), f)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    avi = root / "full.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 25, (176, 144))
    for f in frames:
        writer.write(f)
    writer.release()
    data = avi.read_bytes()
    (root / "truncated.avi").write_bytes(data[: len(data) // 2])
    avi.unlink()
    (root / "more.txt").write_text("truncated.avi\ngone.mp4\n")
    return [str(CARPHONE), str(folder), str(root / "corrupt.mp4"), str(root / "more.txt")]


def run(out, inputs, *extra):
    return main(["stabilize", *inputs, "-o", str(out), "-q", "-w", "0", "--format", "both", *extra])


def test_store_summary_and_bad_inputs(tmp_path, inputs):
    out = tmp_path / "store"
    assert run(out, inputs, "--videogan", "--min-frames", "16") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["stabilize"]
    assert s["videos"] == 5
    unreadable = {u["source"].rsplit("/", 1)[-1]: u["reason"] for u in s["unreadable"]}
    assert set(unreadable) == {"corrupt.mp4", "gone.mp4"}
    assert "cannot open" in unreadable["corrupt.mp4"] and "no such file" in unreadable["gone.mp4"]
    assert [w["source"].rsplit("/", 1)[-1] for w in s["warnings"]] == ["truncated.avi"]
    assert "of 40 frames" in s["warnings"][0]["warning"]
    # carphone: 118 usable frames -> 3 clips of 32 (+ a 22-frame tail clip): kept + rejected == 4
    assert s["clips_kept"] + s["clips_rejected"] >= 3 and s["clips_kept"] >= 1
    assert (
        s["clips_kept"] == manifest["totals"]["wds"]["n_samples"] == manifest["totals"]["hdf5"]["n_samples"]
    )
    assert len(manifest["shards"]) == 2 * 5  # one shard per video and format, empty ones included
    q = s["quality"]
    assert q["itf_after"] > q["itf_before"]  # a steadier clip: consecutive frames agree more
    assert q["residual_motion_after_mean"] < q["residual_motion_before_mean"]

    with tarfile.open(out / "stabilize-000000.tar") as tar:
        names = tar.getnames()
        key = names[0].split(".")[0]
        video = np.load(io.BytesIO(tar.extractfile(f"{key}.video.npy").read()), allow_pickle=False)
        meta = json.loads(tar.extractfile(f"{key}.meta.json").read())
    assert key == "000000000" and video.shape == (32, 64, 64, 3) and video.dtype == np.uint8
    assert meta["frame_start"] == 2 and meta["frame_stop"] == 34 and meta["source"] == str(CARPHONE)
    assert len(meta["homographies"]) == len(meta["matches"]) == len(meta["inliers"]) == 31
    assert all(i <= m for i, m in zip(meta["inliers"], meta["matches"], strict=True))
    assert len(meta["filled_fraction"]) == 32 and meta["filled_fraction"][0] == 0.0
    with h5py.File(out / "stabilize-000000.h5") as f:
        assert np.array_equal(f["video"][0], video)
        assert f["key"].asstr()[0] == key
    # VideoGAN's format: a list of stacked strips, 64 px wide
    strips = read_list(out / "videogan" / "list.txt")
    assert len(strips) == s["clips_kept"]
    strip = read_strip(strips[0])
    assert strip.shape == (meta["n_frames"], 64, 64, 3)
    assert np.abs(strip.astype(int) - video[: meta["n_frames"]]).mean() < 3.0


@pytest.mark.integration
def test_same_input_gives_identical_bytes_on_dask(tmp_path, inputs):
    """In-process and on a one-worker Dask cluster: same digest, same shard hashes."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(a, inputs[:1]) == 0
    assert main(["stabilize", *inputs[:1], "-o", str(b), "-q", "-w", "1", "--format", "both"]) == 0
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["digest"] == mb["digest"] and ma["shards"] == mb["shards"]
    assert ma["stabilize"] == mb["stabilize"]
    # resuming a finished store is a no-op; resuming with other inputs is refused
    assert run(a, inputs[:1], "--resume") == 0
    assert run(a, inputs[:2], "--resume") == 2


def test_stabilize_video_is_deterministic_and_flann_option_runs():
    source = VideoSource(str(CARPHONE), "video")
    p = StabilizeParams(max_clips=1, skip_frames=0)
    r1, r2 = stabilize_video(source, 3, p, seed=7), stabilize_video(source, 3, p, seed=7)
    assert len(r1.samples) + len(r1.rejected) == 1 and r1.error is None
    for s1, s2 in zip(r1.samples, r2.samples, strict=True):
        assert s1.key == s2.key == "000003000" and np.array_equal(s1.video, s2.video) and s1.meta == s2.meta
    flann = stabilize_video(source, 3, StabilizeParams(max_clips=1, skip_frames=0, matcher="flann"), seed=7)
    assert flann.error is None and len(flann.samples) + len(flann.rejected) == 1


def test_crop_mode_keeps_only_covered_pixels():
    source = VideoSource(str(CARPHONE), "video")
    r = stabilize_video(source, 0, StabilizeParams(max_clips=1, fill="crop", max_filled_fraction=0.0), seed=0)
    assert r.error is None and len(r.samples) == 1
    meta = r.samples[0].meta
    assert 0.5 < meta["crop_side_fraction"] < 1.0 and meta["filled_fraction_mean"] == 0.0


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["stabilize", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: input") and "\n" not in err


def test_resume_after_an_interrupted_run_gives_the_same_store(tmp_path, inputs):
    """Rewind a finished store to 'killed after video 0': resuming redoes video 1 only, and the manifest
    (summary included, which the journal carries) comes out byte-identical."""
    from datagen.jobs import JOB_FILE, JOURNAL
    from datagen.sources.video import expand_inputs
    from datagen.stabilize.job import stabilization_job, write_stabilized_shard

    out = tmp_path / "s"
    assert run(out, inputs[:2]) == 0
    reference = (out / "manifest.json").read_bytes()
    job = stabilization_job(out, expand_inputs(inputs[:2]), {}, seed=0, formats=["wds", "hdf5"])
    (out / "manifest.json").unlink()
    (out / JOB_FILE).write_text(json.dumps(job.record))
    first = job.tasks[0]
    result = write_stabilized_shard(*first.args)
    (out / JOURNAL).write_text(json.dumps({"task": first.id, "result": result}) + "\n" + '{"task": "vid')
    for shard in out.glob("stabilize-000001.*"):
        shard.unlink()
    before = (out / "stabilize-000000.tar").stat().st_mtime_ns
    assert run(out, inputs[:2], "--resume") == 0
    assert (out / "manifest.json").read_bytes() == reference
    assert (out / "stabilize-000000.tar").stat().st_mtime_ns == before  # the journaled shard was kept
