"""The checked-in canonical dataset specs, and `datagen build` that regenerates and checks them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen.cli import main
from datagen.jobs import write_generated_shard
from datagen.store.format import load_spec

SPECS = sorted((Path(__file__).parents[1] / "data_manifests").glob("*.json"))


def test_specs_exist_and_are_complete():
    assert {p.stem for p in SPECS} >= {"balls-1", "balls-3"}
    for p in SPECS:
        spec = load_spec(p)  # validates every field
        assert spec["n"] == 100_000
        if spec["generator"] == "balls":  # Moving MNIST specs keep Srivastava's 20 frames of 64x64
            assert spec["params"]["frames"] == 30 and spec["params"]["size"] == 30


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_first_shard_still_matches_the_spec(tmp_path, spec_path):
    """Cheap guard that the canonical data has not drifted: regenerate shard 0 and compare its sha256."""
    s = json.loads(spec_path.read_text())
    first = s["first_shard"]
    r = write_generated_shard(
        str(tmp_path),
        s["generator"],
        s["params"],
        s["seed"],
        s["generator"],
        s["formats"],
        0,
        0,
        s["shard_size"],
    )
    entry = r["shards"][0]
    assert (entry["path"], entry["n_samples"], entry["sha256"]) == (
        first["path"],
        first["n_samples"],
        first["sha256"],
    )


def test_build_checks_the_digest(tmp_path, capsys):
    spec = {
        "name": "tiny",
        "generator": "balls",
        "generator_version": "2",
        "params": {"n_balls": 2, "frames": 5, "size": 16, "radius": 1.2, "box": 10.0},
        "seed": 4,
        "n": 12,
        "shard_size": 5,
        "formats": ["wds"],
        "digest": "sha256:" + "0" * 64,
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    assert main(["build", str(path), "--out", str(tmp_path / "a"), "--workers", "0", "--quiet"]) == 1
    assert "DIGEST MISMATCH" in capsys.readouterr().err
    spec["digest"] = json.loads((tmp_path / "a" / "manifest.json").read_text())["digest"]
    path.write_text(json.dumps(spec))
    assert main(["build", str(path), "--out", str(tmp_path / "b"), "--workers", "0", "--quiet"]) == 0
    spec["generator_version"] = "0"
    path.write_text(json.dumps(spec))
    assert main(["build", str(path), "--out", str(tmp_path / "c"), "--workers", "0", "--quiet"]) == 2
    path.write_text("{")
    assert main(["build", str(path), "--out", str(tmp_path / "d")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_full_canonical_build_matches_digest(tmp_path, spec_path):
    """Regenerates a whole 100,000-video set (~3 GB, ~20 s on 2 cores) and checks the dataset digest."""
    assert main(["build", str(spec_path), "--out", str(tmp_path / "set"), "--quiet"]) == 0
