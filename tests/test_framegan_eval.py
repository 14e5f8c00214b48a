"""FrameGAN evaluation from checkpoints, end to end: the documented `--sample-only` command on smoke-trained
stage 1 and stage 2 checkpoints writes the Table 1 rows, the balls physics metrics and the isomap plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

# the smoke store and the smoke-trained stage 1 / stage 2 runs of the recipe's own tests
from test_framegan_recipe import ROOT, stage1, stage2, store  # noqa: F401

from recipes.metrics.adjacent_mse import adjacent_mse_summary
from recipes.metrics.physics_balls import physics_balls_metrics
from recipes.metrics.registry import MetricOptions, balls_geometry
from recipes.metrics.sources import StoreVideos
from recipes.models.framegan import render_video
from recipes.train_framegan import load_frame_generator

N_VIDEOS = 8
ROWS = ("real", "generated", "independent")


@pytest.fixture(scope="module")
def evaluated(
    stage1: Path,  # noqa: F811
    stage2: tuple[Path, dict],  # noqa: F811
    store: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict, Path]:
    """The command of the recipe's docstring, as a real process, on the smoke checkpoints."""
    out = tmp_path_factory.mktemp("framegan-eval")
    gf = stage1 / "checkpoints" / "ckpt-000000008.pt"
    args = [
        "--smoke", "--stage", "2", "--sample-only",
        "--gv-checkpoint", stage2[1]["checkpoint"], "--gf-checkpoint", str(gf),
        "--data", str(store), "--out-dir", str(out), "--eval-videos", str(N_VIDEOS),
    ]  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "recipes.train_framegan", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return out, json.loads((out / "eval.json").read_text()), gf


def test_table1_rows_are_the_adjacent_mse_of_the_saved_videos(evaluated: tuple[Path, dict, Path]) -> None:
    out, summary, _ = evaluated
    for row in ROWS:
        assert set(summary[row]) == {"mean", "std", "n"} and summary[row]["n"] == N_VIDEOS
    assert summary["real"]["std"] > 0  # clips move differently: their adjacent-frame MSEs differ
    assert 0 < summary["real"]["mean"] < 0.2  # one moving ball: a few pixels flip per frame
    for row, name in (("generated", "samples.npy"), ("independent", "baseline.npy")):
        videos = np.load(out / "eval" / name, allow_pickle=False)
        assert videos.shape == (N_VIDEOS, 1, 30, 30, 30) and videos.dtype == np.float32
        assert summary[row]["mean"] == pytest.approx(adjacent_mse_summary(videos)["mean"])
        assert summary[row]["std"] == pytest.approx(adjacent_mse_summary(videos)["std"])
    samples, baseline = (np.load(out / "eval" / n) for n in ("samples.npy", "baseline.npy"))
    assert not np.array_equal(samples, baseline)  # G_V's codes vs independent N(0, I) codes per frame
    report = json.loads((out / "eval" / "report.json").read_text())
    assert [m["metric"] for m in report["metrics"]] == [
        f"adjacent_mse{N_VIDEOS}_30f",
        f"physics_balls{N_VIDEOS}_30f",
    ]
    assert summary["report"] == str(out / "eval" / "report.json")
    assert summary["protocol"]["n_videos"] == N_VIDEOS and summary["protocol"]["frames"] == 30


def test_physics_metrics_for_generated_and_real(evaluated: tuple[Path, dict, Path], store: Path) -> None:  # noqa: F811
    out, summary, _ = evaluated
    physics = summary["physics"]
    assert set(physics) == set(ROWS)
    real = physics["real"]
    assert real["count_accuracy"] > 0.9 and real["mean_count"] == pytest.approx(1, abs=0.1)  # 1-ball store
    assert real["link_rate"] > 0.9 and real["ballistic_fraction"] > 0.9
    geometry = balls_geometry(MetricOptions(sources={"real": StoreVideos(store)}))
    for row, name in (("generated", "samples.npy"), ("independent", "baseline.npy")):
        assert physics[row].keys() == real.keys()  # every physics key is reported
        direct = physics_balls_metrics(np.load(out / "eval" / name, allow_pickle=False), geometry)
        for key in ("count_accuracy", "mean_count", "link_rate"):  # the figures of the saved videos
            expected = direct[key] if np.isfinite(direct[key]) else None  # NaN is null in the JSON
            assert physics[row][key] == (expected if expected is None else pytest.approx(expected)), key
    assert physics["generated"] != physics["real"]


def test_isomap_plot_of_the_latent_sequences_that_made_the_videos(evaluated: tuple[Path, dict, Path]) -> None:
    out, summary, gf_path = evaluated
    img = cv2.imread(summary["isomap"])
    assert summary["isomap"] == str(out / "eval" / "isomap.png")
    assert img is not None and img.shape == (512, 512, 3) and (img < 250).any()
    codes = np.load(out / "eval" / "codes.npy", allow_pickle=False)
    assert codes.shape == (N_VIDEOS, 30, 100) and np.abs(codes).max() <= 1  # G_V's tanh codes per frame
    gf, _ = load_frame_generator(gf_path)
    with torch.no_grad():
        rendered = render_video(gf.eval(), torch.from_numpy(codes)).numpy()
    np.testing.assert_allclose(rendered, np.load(out / "eval" / "samples.npy"), atol=1e-5)


def test_fig5_and_collapse_verdicts_next_to_table1(evaluated: tuple[Path, dict, Path]) -> None:
    """Fig. 5 (6 paths, their end-point interpolations, prior samples) and, per Table 1 row, whether the
    row's videos are collapsed (so a low adjacent-frame MSE of a collapsed model is not read as success)."""
    out, summary, _ = evaluated
    assert summary["fig5"] == str(out / "eval" / "fig5.png")
    img = cv2.imread(summary["fig5"])
    assert img.shape == (512, 512, 3) and (img == 170).all(axis=-1).any()  # grey prior samples drawn
    assert set(summary["collapse"]) == set(ROWS)
    assert summary["collapse"]["real"]["collapsed"] is False and summary["collapse"]["real"]["reasons"] == []
    for row in ROWS:
        verdict = summary["collapse"][row]
        assert verdict["collapsed"] is bool(verdict["reasons"])
        assert verdict["count_accuracy"] == summary["physics"][row]["count_accuracy"]
