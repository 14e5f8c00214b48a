"""`datagen sense cup`: a sensing store from any store, byte-identical for any workers, read as pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datagen.api import load_manifest, make_store
from datagen.cli import main
from datagen.errors import DatagenError
from datagen.jobs import run_store_job
from datagen.sense.cup import CupOperator, CupParams, make_mask, sample_rng, sense
from datagen.sense.job import cup_job, unpack_mask
from datagen.store.readers import iter_samples

PARAMS = {"shear": 2, "complementary": True, "bits": 10, "photons": 60.0}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src") / "balls"
    make_store(out, "balls", {"frames": 6, "size": 12, "n_balls": 2}, n=12, seed=3, shard_size=5)
    return out


def _sensed(out: Path, source: Path, workers: int, formats=("wds", "hdf5")) -> dict:
    return run_store_job(cup_job(out, source, PARAMS, seed=7, formats=formats), workers=workers)


def test_round_trip(source: Path, tmp_path: Path) -> None:
    manifest = _sensed(tmp_path / "cup", source, workers=0)
    src = load_manifest(source)
    assert manifest["params"]["source"]["digest"] == src["digest"]
    assert manifest["sample"]["sensed"] == {"dtype": "uint16", "layout": "VHW", "shape": [2, 12 + 5 * 2, 12]}
    p = CupParams(**{k: v for k, v in manifest["params"].items() if k not in ("mask_sha256", "source")})
    mask = unpack_mask(manifest)
    assert np.array_equal(mask, make_mask(12, 12, p.fill, p.mask_seed))
    op = CupOperator(mask, 6, p.shear, p.complementary)
    scenes = {s.key: s for s in iter_samples(source / "balls-000001.tar", "wds")}
    for fmt, name in (("wds", "cup-000001.tar"), ("hdf5", "cup-000001.h5")):
        got = list(iter_samples(tmp_path / "cup" / name, fmt))
        assert [s.key for s in got] == sorted(scenes)
        for s in got:
            assert np.array_equal(s.video, scenes[s.key].video) and s.meta == scenes[s.key].meta
            assert np.array_equal(s.fields["sensed"], sense(s.video, op, p, sample_rng(7, int(s.key))))
    assert main(["verify", str(tmp_path / "cup")]) == 0
    bad = {**manifest, "sensing": {**manifest["sensing"], "mask": {**manifest["sensing"]["mask"]}}}
    bad["sensing"]["mask"]["shape"] = [1 << 20, 1 << 20]  # a stranger's manifest chooses no allocation
    with pytest.raises(DatagenError, match="not the clips"):
        unpack_mask(bad)
    bad["sensing"]["mask"] = {**manifest["sensing"]["mask"], "packbits_base64": "AAAA" * 5}
    with pytest.raises(DatagenError, match="mask"):
        unpack_mask(bad)


def test_one_or_two_workers_same_bytes(source: Path, tmp_path: Path) -> None:
    a = _sensed(tmp_path / "a", source, workers=1, formats=("wds",))
    b = _sensed(tmp_path / "b", source, workers=2, formats=("wds",))
    assert a == b
    for s in a["shards"]:
        assert (tmp_path / "a" / s["path"]).read_bytes() == (tmp_path / "b" / s["path"]).read_bytes()


def test_pairs_through_pipelines(source: Path, tmp_path: Path) -> None:
    from pipelines import VideoDataset
    from pipelines.errors import PipelineError

    _sensed(tmp_path / "cup", source, workers=0, formats=("wds",))
    items = list(VideoDataset(tmp_path / "cup", fields=("sensed", "video"), shuffle=False))
    assert len(items) == 12 and items[0]["sensed"].shape == (2, 22, 12)
    assert items[0]["video"].shape == (1, 6, 12, 12)
    with pytest.raises(PipelineError, match="whole clips"):
        VideoDataset(tmp_path / "cup", fields=("sensed", "video"), frames=3)


def test_refuses_a_damaged_source(source: Path, tmp_path: Path) -> None:
    copy = tmp_path / "src"
    copy.mkdir()
    for f in source.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    tar = copy / "balls-000000.tar"
    data = bytearray(tar.read_bytes())
    data[1000] ^= 1
    tar.write_bytes(bytes(data))
    with pytest.raises(DatagenError, match="balls-000000.tar"):
        _sensed(tmp_path / "cup", copy, workers=0)


@pytest.mark.parametrize(
    "flags,word",
    [(["--bits", "0"], "--bits"), (["--fill", "1.5"], "--fill"), (["--shear", "40"], "--shear")],
)
def test_cli_refuses_bad_params_in_one_line(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], word: str
) -> None:
    code = main(["sense", "cup", str(source), "--out", str(tmp_path / "o"), "-q", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and word in err and "\n" not in err and not (tmp_path / "o").exists()


def test_cli_writes_the_store(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert main(["sense", "cup", str(source), "--out", str(out), "-q", "-w", "0", "--shear", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["shear"] == 1 and manifest["sample"]["sensed"]["shape"] == [1, 17, 12]


def _clips(store: Path) -> list:
    shards = [s for s in load_manifest(store)["shards"] if s["format"] == "wds"]
    return [clip for s in shards for clip in iter_samples(store / s["path"], "wds")]


def _other_source(kind: str, root: Path) -> Path:
    out = root / kind
    if kind == "mnist":
        make_store(out, "mnist", {"frames": 5, "size": 32}, n=4, seed=1, shard_size=2)
    elif kind == "colour balls":
        make_store(out, "balls", {"frames": 5, "size": 12, "colors": "palette"}, n=4, seed=1, shard_size=2)
    else:  # VideoGAN-stabilized real footage (the shipped carphone clip), 16-frame clips of 24x24
        import datagen.cli.stabilize  # noqa: F401  (registers the command)
        from datagen.sources.video import shipped_sample_video

        video = str(shipped_sample_video("carphone_pristine.mp4"))
        args = [
            "stabilize",
            video,
            "-o",
            str(out),
            "-q",
            "-w",
            "0",
            "-s",
            "24",
            "-t",
            "16",
            "--max-clips",
            "2",
        ]
        assert main(args) == 0
    return out


@pytest.mark.parametrize("kind", ["mnist", "colour balls", "stabilized footage"])
def test_any_store_the_project_writes_is_sensed(kind: str, tmp_path: Path) -> None:
    """Moving MNIST, RGB balls (the channel mean is the scene) and stabilized real footage: every clip is
    sensed exactly as the operator says, with the source's keys."""
    source = _other_source(kind, tmp_path)
    manifest = _sensed(tmp_path / "cup", source, workers=0, formats=("wds",))
    assert manifest["params"]["source"]["digest"] == load_manifest(source)["digest"]
    p = CupParams(**{k: v for k, v in manifest["params"].items() if k not in ("mask_sha256", "source")})
    sensed = {s.key: s for s in _clips(tmp_path / "cup")}
    assert len(sensed) >= 2 and len({s.video.shape[-1] for s in sensed.values()}) == 1
    for s in _clips(source):
        op = CupOperator(unpack_mask(manifest), s.video.shape[0], p.shear, p.complementary)
        expected = sense(s.video, op, p, sample_rng(7, int(s.key)))
        assert np.array_equal(sensed[s.key].fields["sensed"], expected)
        assert np.array_equal(sensed.pop(s.key).video, s.video)
    assert not sensed  # no clip more, none less
