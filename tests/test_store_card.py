"""The dataset card (README.md) written with every store: Hub metadata, regeneration spec, ownership."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from datagen.errors import DatagenError
from datagen.jobs import generation_job, run_store_job
from datagen.store.card import dataset_card, front_matter, regeneration_spec
from datagen.store.format import CARD, CARD_MARK, MANIFEST, load_manifest, validate_spec
from datagen.store.ownership import owned_files, remove_store
from datagen.store.readers import iter_samples

PARAMS = {"frames": 3, "size": 6}


def make(out, pattern, formats=("wds",), seed=7, **kw):
    job = generation_job(out, pattern, PARAMS, seed=seed, n=12, shard_size=5, formats=list(formats))
    return run_store_job(job, workers=0, **kw)


def card_meta(text: str) -> dict:
    head, sep, _ = text.partition("\n---\n")
    assert head.startswith("---\n") and sep, "no YAML front matter"
    return yaml.safe_load(head[4:])


def test_card_is_written_with_the_manifest_and_describes_the_store(tmp_path, pattern):
    m = make(tmp_path / "s", pattern, formats=("wds", "hdf5"))
    text = (tmp_path / "s" / CARD).read_text()
    meta = card_meta(text)
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "pattern-*.tar"}]}
    ]
    assert "license" not in meta and meta["size_categories"] == ["n<1K"]
    assert CARD_MARK in text and m["digest"] in text and "(3, 6, 6, 1)" in text
    spec = regeneration_spec(m)
    validate_spec(spec, "card spec")  # what `datagen build` accepts
    assert (spec["seed"], spec["n"], spec["shard_size"], spec["params"]) == (7, 12, 5, m["params"])
    assert text == dataset_card(load_manifest(tmp_path / "s"))  # canonical: a pure function of the manifest


def test_card_leaves_the_digest_alone(tmp_path, pattern):
    a = make(tmp_path / "a", pattern)
    make(tmp_path / "b", pattern, seed=8)
    (tmp_path / "b" / CARD).write_text(CARD_MARK + "\nedited\n")  # still recognisably our card
    b = make(tmp_path / "b", pattern, overwrite=True)
    assert a["digest"] == b["digest"]
    assert (tmp_path / "a" / CARD).read_bytes() == (tmp_path / "b" / CARD).read_bytes()


def test_mnist_based_cards_carry_the_digit_licence(tmp_path, pattern):
    m = copy.deepcopy(make(tmp_path / "s", pattern))
    m["generator"]["name"] = "mnist"
    assert front_matter(m)["license"] == "cc-by-sa-3.0"
    assert "LeCun" in dataset_card(m) and "CC BY-SA 3.0" in dataset_card(m)
    hdf5_only = copy.deepcopy(m)
    hdf5_only["layout"]["formats"] = ["hdf5"]
    assert "configs" not in front_matter(hdf5_only)  # the Hub has no builder for our .h5 shards


def test_overwrite_removes_our_card_but_never_a_users_readme(tmp_path, pattern):
    out = tmp_path / "s"
    make(out, pattern)
    assert out / CARD in owned_files(out)[0]
    (out / CARD).write_text("# my notes on this data\n")
    with pytest.raises(DatagenError, match="README.md is not part of the datagen store"):
        remove_store(out)
    assert (out / CARD).read_text() == "# my notes on this data\n" and (out / MANIFEST).exists()
    (out / CARD).unlink()
    remove_store(out)
    assert list(out.iterdir()) == []


def test_hub_webdataset_builder_reads_our_tars_offline(tmp_path, pattern, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "s"
    m = make(out, pattern)
    files = [str(out / s["path"]) for s in m["shards"]]
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds.num_rows == 12
    ours = {s.key: s for f in files for s in iter_samples(f, "wds")}
    for row in ds:
        video = np.asarray(row["video.npy"], dtype=np.uint8)
        assert video.shape == (3, 6, 6, 1)
        assert np.array_equal(video, ours[row["__key__"]].video)
        assert row["meta.json"]["index"] == int(row["__key__"])
