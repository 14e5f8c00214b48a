"""Metric names as protocols, frozen options, sources, the stats cache and the evaluate entry point."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from datagen.api import make_store
from datagen.errors import DatagenError
from recipes import evaluate
from recipes.metrics.fvd import cached_stats
from recipes.metrics.registry import MetricOptions, calc_metric, families, parse_metric
from recipes.metrics.sources import ArrayVideos, StoreVideos

SIZE, FRAMES = 32, 30


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "balls"
    make_store(out, "balls", {"size": SIZE, "frames": FRAMES}, n=12, seed=4, shard_size=6)
    return out


def test_metric_names_carry_their_protocol():
    fn, clips, frames = parse_metric("fvd2048_16f")
    assert (fn.__name__, clips, frames) == ("fvd", 2048, 16)
    fn, clips, frames = parse_metric("adjacent_mse4_30f")
    assert (fn.__name__, clips, frames) == ("adjacent_mse", 4, 30)
    assert {"fvd", "adjacent_mse", "physics_balls", "mnist_identity"} <= set(families())
    for bad in ("fvd", "fid50k_full", "fvd2048_16"):
        with pytest.raises(DatagenError, match="unknown metric"):
            parse_metric(bad)


def test_options_are_frozen_and_copied_not_mutated():
    opts = MetricOptions(seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 2  # type: ignore[misc]
    other = dataclasses.replace(opts, seed=2)
    assert (opts.seed, other.seed) == (1, 2)


def test_array_source_windows_are_seeded_and_checked():
    videos = torch.arange(5 * 1 * 10 * 2 * 2, dtype=torch.float32).reshape(5, 1, 10, 2, 2) / 200 - 1
    src = ArrayVideos(videos)
    a, b = src.clips(3, 4, seed=7), src.clips(3, 4, seed=7)
    assert a.shape == (3, 1, 4, 2, 2) and torch.equal(a, b)
    assert not torch.equal(a, src.clips(3, 4, seed=8))
    u8 = ArrayVideos(np.full((2, 3, 2, 2, 1), 255, np.uint8))  # store layout THWC -> model layout in [-1, 1]
    assert u8.shape == (1, 3, 2, 2) and float(u8.clips(2, None, seed=0).min()) == 1.0
    with pytest.raises(DatagenError, match="holds 5 clips"):
        src.clips(6, 4, seed=0)


def test_store_source_reads_through_the_loader(store):
    src = StoreVideos(store)
    assert len(src) == 12 and src.generator == "balls" and src.params["size"] == SIZE
    clips = src.clips(4, 16, seed=0)
    assert clips.shape == (4, 1, 16, SIZE, SIZE)
    # the store's uint8 levels scaled to [-1, 1]: background 0 -> -1, ball centres 255 -> 1
    levels = (clips + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-3) and (clips.min(), clips.max()) == (-1, 1)
    assert torch.equal(clips, src.clips(4, 16, seed=0))


def test_real_stats_cache_is_npz_and_computed_once(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOGEN_CACHE", str(tmp_path))
    calls = []
    feats = np.random.default_rng(0).normal(size=(10, 4))

    def compute():
        calls.append(1)
        return feats

    key = {"digest": "sha256:x", "detector": "d", "clips": 10, "frames": 16}
    first, second = cached_stats(key, compute), cached_stats(key, compute)
    assert len(calls) == 1 and np.array_equal(first.sigma, second.sigma)
    (path,) = (tmp_path / "fvd").glob("*.npz")
    np.load(path, allow_pickle=False).close()
    cached_stats({**key, "clips": 11}, compute)
    assert len(calls) == 2


def test_evaluate_store_vs_samples_writes_report_and_plot(store, tmp_path):
    real = StoreVideos(store).clips(8, FRAMES, seed=3).numpy()
    np.save(tmp_path / "good.npy", real)
    np.save(tmp_path / "shuffled.npy", real[:, :, np.random.default_rng(0).permutation(FRAMES)])
    rng = np.random.default_rng(1)
    np.save(tmp_path / "codes.npy", np.cumsum(rng.normal(size=(6, FRAMES, 16)) * 0.1, axis=1))
    out = tmp_path / "eval"
    code = evaluate.main(
        [
            "--real", str(store),
            "--fake", str(tmp_path / "shuffled.npy"),
            "--baseline", str(tmp_path / "good.npy"),
            "--metrics", "adjacent_mse8_30f,physics_balls8_30f", "--latents", str(tmp_path / "codes.npy"),
            "-o", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sources"]["real"]["digest"].startswith("sha256:")
    mse, physics = report["metrics"]
    assert mse["protocol"]["clips"] == 8 and mse["protocol"]["frames"] == FRAMES
    assert mse["results"]["fake/mean"] > 2 * mse["results"]["real/mean"]
    assert physics["protocol"]["geometry"]["radius_px"] == pytest.approx(1.2 * SIZE / 10)
    r = physics["results"]
    assert r["real/ballistic_fraction"] > 0.99 and r["baseline/ballistic_fraction"] > 0.99
    assert r["fake/ballistic_fraction"] < 0.5 and r["fake/link_rate"] < 0.5
    logged = json.loads((out / "metric-physics_balls8_30f.jsonl").read_text().splitlines()[-1])
    assert logged["results"] == physics["results"]
    img = cv2.imread(str(out / "isomap.png"))
    assert img.shape == (512, 512, 3) and (img < 250).any()


def test_evaluate_errors_are_one_line_and_exit_2(store, tmp_path, capsys):
    assert evaluate.main(["--real", str(store), "--metrics", "nope1_2f", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown metric") and "\n" not in err
    assert evaluate.main(["--real", str(store), "--metrics", "adjacent_mse99_30f", "-o", str(tmp_path)]) == 2
    assert "holds 12 clips" in capsys.readouterr().err
    assert evaluate.main(["--real", str(store), "--metrics", "fvd4_16f", "-o", str(tmp_path)]) == 2
    assert "needs a 'real' and a 'fake'" in capsys.readouterr().err
    # the file system's refusal (a file where -o's folder should go): one line, not a traceback
    (tmp_path / "a-file").write_text("someone's notes\n")
    args = ["--real", str(store), "--fake", str(store), "--metrics", "adjacent_mse4_30f", "-o"]
    assert evaluate.main([*args, str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "a-file") in err and err.count("\n") == 1
    assert (tmp_path / "a-file").read_text() == "someone's notes\n"


def test_calc_metric_reports_nan_as_null():
    static = ArrayVideos(-torch.ones(2, 1, 5, 8, 8))  # no balls at all
    result = calc_metric("physics_balls2_5f", MetricOptions(sources={"fake": static}))
    assert result["results"]["fake/count_accuracy"] == 0.0
    assert result["results"]["fake/ballistic_fraction"] is None
    json.dumps(result, allow_nan=False)


def test_chunked_clips_equal_the_whole_protocol(store):
    for src in (StoreVideos(store), ArrayVideos(torch.rand(7, 1, 12, 4, 4) * 2 - 1)):
        whole = src.clips(5, 8, seed=3)
        chunks = list(src.iter_clips(5, 8, seed=3, chunk=2))
        assert [len(c) for c in chunks] == [2, 2, 1]
        assert torch.equal(torch.cat(chunks), whole)


def test_the_digit_count_of_array_sources_is_given_on_the_command_line(tmp_path):
    """Arrays carry no store params: mnist_identity takes the digit count from --n-digits (else 2)."""
    mnist = tmp_path / "mnist1"
    make_store(mnist, "mnist", {"digits": 1, "size": 64, "frames": 16}, n=4, seed=0)
    np.save(tmp_path / "one.npy", StoreVideos(mnist).clips(4, 16, seed=0).numpy())
    args = ["--real", str(tmp_path / "one.npy"), "--fake", str(tmp_path / "one.npy"), "--metrics"]

    def valid(out, *more):
        assert evaluate.main([*args, "mnist_identity4_16f", "-o", str(tmp_path / out), *more]) == 0
        report = json.loads((tmp_path / out / "report.json").read_text())
        return report["metrics"][0]["protocol"]["n_digits"], report["metrics"][0]["results"][
            "real/valid_frame_fraction"
        ]

    assert valid("told", "--n-digits", "1") == (1, 1.0)
    assert valid("default") == (2, 0.0)  # the default, two digits, finds none in one-digit frames
    with pytest.raises(SystemExit) as refused:
        evaluate.main([*args, "mnist_identity4_16f", "-o", str(tmp_path / "bad"), "--n-digits", "0"])
    assert refused.value.code == 2 and not (tmp_path / "bad").exists()
