"""The video-prediction split (Moving MNIST's standard 10 -> 10) as a loader option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datagen.api import make_store
from pipelines import VideoDataset, make_loader
from pipelines.errors import PipelineError


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("split") / "mnist"
    make_store(out, "mnist", {"digits": 2, "frames": 20, "size": 32}, n=24, seed=3, workers=0)
    return out


def test_context_and_target_are_the_first_and_last_frames_of_each_clip(store: Path) -> None:
    ds = VideoDataset(store, frames=20, seed=1)
    plain = list(make_loader(ds, batch_size=8, num_workers=0))
    split = list(make_loader(VideoDataset(store, frames=20, seed=1), 8, 0, context=10, target=10))
    assert len(plain) == len(split) == 3
    for a, b in zip(plain, split, strict=True):
        assert a["key"] == b["key"]
        assert b["context"].shape == b["target"].shape == (8, 1, 10, 32, 32)
        assert torch.equal(b["context"], a["video"][:, :, :10])
        assert torch.equal(b["target"], a["video"][:, :, 10:])
        assert not torch.equal(b["context"], b["target"])


def test_uneven_split_of_a_window(store: Path) -> None:
    (batch,) = list(make_loader(VideoDataset(store, frames=15, seed=0), 24, 0, context=5, target=10))
    assert batch["context"].shape[2] == 5 and batch["target"].shape[2] == 10
    assert torch.equal(torch.cat([batch["context"], batch["target"]], dim=2), batch["video"])


@pytest.mark.parametrize(
    ("kwargs", "frames", "mode", "message"),
    [
        ({"context": 10}, 20, "clip", "both context and target"),
        ({"context": 10, "target": 5}, 20, "clip", "20 frames long"),
        ({"context": 0, "target": 20}, 20, "clip", "context must be an integer >= 1"),
        ({"context": 10, "target": True}, 20, "clip", "target must be an integer"),
        ({"context": 1, "target": 1}, None, "frame", "mode='clip'"),
    ],
)
def test_bad_splits_are_one_line_errors(store: Path, kwargs, frames, mode, message) -> None:
    ds = VideoDataset(store, frames=frames, mode=mode, seed=0)
    with pytest.raises(PipelineError, match=message) as err:
        make_loader(ds, 8, 0, **kwargs)
    assert "\n" not in str(err.value)


def test_a_mix_is_split_like_a_single_store(store: Path, tmp_path: Path) -> None:
    from pipelines import mix

    other = tmp_path / "other"
    make_store(other, "mnist", {"digits": 1, "frames": 20, "size": 32}, n=16, seed=4, workers=0)
    mixed = mix([VideoDataset(store, frames=20, seed=0), VideoDataset(other, frames=20, seed=1)], [1, 1])
    for batch in make_loader(mixed, 8, 0, context=10, target=10):
        assert batch["context"].shape == (8, 1, 10, 32, 32)
        assert torch.equal(torch.cat([batch["context"], batch["target"]], dim=2), batch["video"])
    sources = [VideoDataset(store, mode="frame", seed=0), VideoDataset(other, mode="frame", seed=1)]
    frames = mix(sources, [1, 1])
    with pytest.raises(PipelineError, match="mode='clip'"):
        make_loader(frames, 8, 0, context=1, target=1)
