"""Per-sample fields plumbing (issue 17): format, writers, manifests, pipelines; generator-agnostic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datagen.api import make_store
from datagen.errors import DatagenError
from datagen.store.format import (
    ManifestError,
    load_manifest,
    parse_fields,
    sample_schema,
    validate_manifest,
)
from datagen.store.manifest import verify_store
from datagen.store.readers import iter_samples
from pipelines.dataset import VideoDataset
from pipelines.errors import PipelineError
from pipelines.loader import make_loader
from pipelines.world import World

GEN = "fields_gen:FIELDS"
ALL = ("video", "mask", "flow")


def test_parse_fields_canonical_and_strict():
    assert parse_fields(None) == ("video",)
    assert parse_fields("flow,video,mask") == ("video", "mask", "flow")
    assert parse_fields("mask") == ("video", "mask")  # the video is always stored
    with pytest.raises(DatagenError, match="unknown field"):
        parse_fields("video,masks")
    with pytest.raises(DatagenError, match="does not make"):
        parse_fields("video,flow", supported=("video", "mask"))


def test_default_schema_has_no_field_list():
    assert set(sample_schema([4, 8, 8, 1])) == {"video", "key"}  # unchanged records and digests
    schema = sample_schema([4, 8, 8, 1], ALL)
    assert schema["fields"] == list(ALL)
    assert schema["mask"]["shape"] == [4, 8, 8] and schema["flow"]["shape"] == [3, 8, 8, 2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("fields") / "s"
    make_store(out, GEN, {"fields": "video,mask,flow"}, n=24, seed=3, shard_size=10, formats=("wds", "hdf5"))
    return out


def test_manifest_lists_fields_and_validates_names(store):
    manifest = load_manifest(store)
    assert manifest["params"]["fields"] == list(ALL)
    assert manifest["sample"]["fields"] == list(ALL)
    assert manifest["sample"]["flow"] == {"dtype": "float16", "shape": [5, 5, 5, 2], "layout": "THWC"}
    assert verify_store(store) == []
    for bad in (
        lambda s: s.update(fields=["video", "../etc"]),
        lambda s: s.update(fields=["mask", "video"]),
        lambda s: s.update(extra={"dtype": "uint8"}),
        lambda s: s["flow"].update(dtype="float32"),
        lambda s: s["mask"].update(shape=[6, 5, 5, 1]),
        lambda s: s.pop("mask"),
    ):
        m = json.loads(json.dumps(manifest))
        bad(m["sample"])
        with pytest.raises(ManifestError, match="sample"):
            validate_manifest(m)


def test_shards_hold_the_fields(store):
    for fmt, name in (("wds", "fieldsgen-000001.tar"), ("hdf5", "fieldsgen-000001.h5")):
        samples = list(iter_samples(store / name, fmt))
        s = samples[3]
        assert s.key == "000000013" and sorted(s.fields) == ["flow", "mask"]
        assert s.fields["mask"].dtype == np.uint8 and s.fields["flow"].dtype == np.float16
        assert (s.fields["mask"][:, 0, 0] == 13 + np.arange(6)).all()
        assert (s.fields["flow"][:, 0, 0, 0] == np.arange(5)).all()


def test_same_bytes_without_fields_as_before(tmp_path):
    """A job without --fields records no field list: its manifest is what it was before fields existed."""
    m = make_store(tmp_path / "a", GEN, {}, n=5, seed=3, shard_size=5)
    assert "fields" not in m["params"] and "fields" not in m["sample"]
    assert list(iter_samples(tmp_path / "a" / "fieldsgen-000000.tar", "wds"))[0].fields == {}
    with pytest.raises(DatagenError, match="does not make"):
        make_store(tmp_path / "b", "pattern_gen:PATTERN", {"fields": "video,mask"}, n=2, seed=1)


def _check_item(video, mask, flow, frames):
    """video (C, T, H, W), mask (T, H, W), flow (2, T-1, H, W) of one window: same sample, same frames."""
    v = video[0, :, 0, 0].long()
    m = mask[:, 0, 0].long()
    i = int(flow[1, 0, 0, 0])
    t0 = int(flow[0, 0, 0, 0])
    assert (v == (7 * i + t0 + torch.arange(frames)) % 256).all()
    assert (m == (i + t0 + torch.arange(frames)) % 256).all()
    assert (flow[0, :, 0, 0] == t0 + torch.arange(frames - 1)).all()


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_dataset_items_carry_windowed_fields(store, fmt):
    ds = VideoDataset(store, frames=4, fields=ALL, format=fmt, seed=1, world=World(0, 1))
    items = list(ds)
    assert len(items) == 24
    for item in items:
        assert item["mask"].shape == (4, 5, 5) and item["flow"].shape == (2, 3, 5, 5)
        _check_item(item["video"], item["mask"], item["flow"], 4)


def test_loader_batches_fields_on_device(store):
    ds = VideoDataset(store, frames=3, fields=ALL, seed=2, world=World(0, 1), block_size=7)
    batches = list(make_loader(ds, batch_size=5, num_workers=1))
    assert sum(len(b["key"]) for b in batches) == 24
    for b in batches:
        assert b["mask"].dtype == torch.uint8 and b["flow"].dtype == torch.float32
        assert b["flow"].shape[1:] == (2, 2, 5, 5) and b["mask"].shape[1:] == (3, 5, 5)
        video = ((b["video"] + 1) * 127.5).round()
        for k in range(len(b["key"])):
            _check_item(video[k], b["mask"][k], b["flow"][k], 3)
    plain = list(make_loader(VideoDataset(store, frames=3, seed=2, world=World(0, 1), block_size=7), 5, 1))
    assert [b["key"] for b in plain] == [b["key"] for b in batches]  # fields change nothing else
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(plain, batches, strict=True))


def test_dataset_refuses_what_the_store_lacks(store, tmp_path):
    with pytest.raises(PipelineError, match="unknown"):
        VideoDataset(store, fields=("video", "depth"))
    with pytest.raises(PipelineError, match="stride 1"):
        VideoDataset(store, fields=ALL, stride=2, frames=2)
    ds = VideoDataset(store, mode="frame", fields=("video", "mask"), world=World(0, 1))
    item = next(iter(ds))
    assert item["mask"].shape == (5, 5)
    make_store(tmp_path / "plain", GEN, {}, n=3, seed=1, shard_size=3)
    with pytest.raises(PipelineError, match="no field"):
        VideoDataset(tmp_path / "plain", fields=ALL)
