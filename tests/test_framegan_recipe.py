"""FrameGAN recipe end to end on a tiny balls store made by datagen: smoke training of both stages, bitwise
resume, weights_only checkpoints, the G_F swap, presets and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recipes.common.config import config_from_args
from recipes.common.data import smoke_store
from recipes.metrics.physics_balls import BallsGeometry, balls_diversity_metrics
from recipes.train_framegan import (
    PRESETS,
    SMOKE,
    FrameGANConfig,
    compile_discriminators,
    lazy_r1_gamma,
    load_frame_generator,
    load_video_generator,
    main,
    resolve_defaults,
    sample,
)

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smoke_store(tmp_path_factory.mktemp("framegan") / "balls")


def smoke_cfg(store: Path, out: Path, **overrides: Any) -> FrameGANConfig:
    given = {"smoke": True, "data": str(store), "out_dir": str(out)} | overrides
    return config_from_args(FrameGANConfig, given, presets=PRESETS, smoke=SMOKE)


def d_losses(run_dir: Path) -> list[float]:
    return [float(r["d_loss"]) for r in csv.DictReader(open(run_dir / "metrics.csv"))]


def load(path: Path | str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_resumed_equal(a: dict, b: dict) -> None:
    """Everything bitwise equal except the global torch RNG state: a DataLoader iterator consumes one global
    draw when created, and the resumed run creates one more; training noise comes from `run.step_noise(step)`
    instead (a function of seed, rank and step). Configs differ only in where and how the runs were made."""
    for state in (a, b):
        for r in state["rng"]:
            r.pop("torch")
        for key in ("out_dir", "resume", "ckpt_every", "log_every", "eval_videos"):
            state["config"].pop(key)
    assert_state_equal(a, b)


def assert_state_equal(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_state_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def stage1(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke stage 1 run: 8 steps over 2 epochs, checkpoints at 3, 6 and 8, 16 frames evaluated."""
    out = tmp_path_factory.mktemp("stage1")
    result = main(smoke_cfg(store, out, ckpt_every=3, log_every=1, max_steps=8, eval_videos=16))
    assert result["step"] == 8
    return out


def test_stage1_smoke_trains_discriminators(stage1: Path) -> None:
    losses = d_losses(stage1)
    assert len(losses) == 8
    assert sum(losses[-2:]) < sum(losses[:2])  # the discriminators learn on real balls vs G_F's frames
    assert sorted(p.name for p in (stage1 / "checkpoints").iterdir()) == [
        "ckpt-000000003.pt",
        "ckpt-000000006.pt",
        "ckpt-000000008.pt",
    ]
    assert (stage1 / "config.yaml").is_file() and list((stage1 / "samples").glob("frames-*.png"))


def test_stage1_evaluation_counts_balls_and_flags_collapse(stage1: Path) -> None:
    """Stage 1 evaluation: frames from independent z vs real frames, ball count and the collapse verdict."""
    summary = json.loads((stage1 / "eval.json").read_text())
    real, generated = summary["real"], summary["generated"]
    assert real["count_accuracy"] == 1.0 and real["collapsed"] is False  # the 1-ball store
    assert real["centre_spread_ratio"] == 1.0 and real["centre_spread"] > 5
    assert summary["collapse"]["real"] == {**summary["collapse"]["real"], "collapsed": False, "reasons": []}
    samples = np.load(stage1 / "eval" / "samples.npy", allow_pickle=False)
    assert samples.shape == (16, 1, 1, 30, 30)  # one frame per independent z
    geometry = BallsGeometry.for_simulator(30, n_balls=1)
    again = balls_diversity_metrics(samples, geometry)
    assert generated["count_accuracy"] == again["count_accuracy"]
    assert generated["pixel_std"] == pytest.approx(again["pixel_std"])
    verdict = summary["collapse"]["generated"]
    assert verdict["collapsed"] is generated["collapsed"] is bool(verdict["reasons"])
    assert verdict["collapsed"]  # 8 steps from init: no ball-like frames yet, and flagged as such


def test_checkpoint_is_weights_only_and_complete(stage1: Path) -> None:
    state = load(stage1 / "checkpoints" / "ckpt-000000008.pt")
    assert set(state) >= {"models", "optimizers", "scaler", "step", "epoch", "loader", "rng", "config"}
    assert set(state["models"]) == {"g", "d"} and state["step"] == 8 and state["epoch"] == 1
    assert state["loader"]["epoch"] == 1 and state["loader"]["sample_in_epoch"] == 32
    assert "projection" in state["models"]["d"]
    assert state["config"]["k"] == 4 and state["config"]["optimizer"] == "rmsprop"  # resolved, recorded


@pytest.mark.parametrize("resume_at", [3, 6])
def test_resume_continues_bitwise(stage1: Path, store: Path, tmp_path: Path, resume_at: int) -> None:
    ckpt = stage1 / "checkpoints" / f"ckpt-{resume_at:09d}.pt"
    main(smoke_cfg(store, tmp_path, resume=str(ckpt), ckpt_every=0, log_every=1, max_steps=8))
    assert_resumed_equal(
        load(stage1 / "checkpoints" / "ckpt-000000008.pt"),
        load(tmp_path / "checkpoints" / "ckpt-000000008.pt"),
    )
    assert d_losses(tmp_path) == d_losses(stage1)[resume_at:]


def test_lazy_r1_penalises_every_nth_step_at_n_times_gamma_and_resumes_bitwise(
    store: Path, tmp_path: Path
) -> None:
    """`--r1-every 3`: R1 on steps 3 and 6 only (logged there), weighted 3 x gamma; a resume between two R1
    steps ends on the same weights; `--r1-every 1` (the default) is R1 on every step."""
    assert [lazy_r1_gamma(2.0, 3, s) for s in range(1, 7)] == [0.0, 0.0, 6.0, 0.0, 0.0, 6.0]
    assert [lazy_r1_gamma(2.0, 1, s) for s in range(1, 4)] == [2.0, 2.0, 2.0]
    cfg = {"r1_gamma": 2.0, "r1_every": 3, "log_every": 1, "max_steps": 7}
    main(smoke_cfg(store, tmp_path / "a", ckpt_every=4, **cfg))
    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r["r1"]] == [3, 6]
    ckpt = tmp_path / "a" / "checkpoints" / "ckpt-000000004.pt"
    main(smoke_cfg(store, tmp_path / "b", resume=str(ckpt), ckpt_every=0, **cfg))
    assert_resumed_equal(
        load(tmp_path / "a" / "checkpoints" / "ckpt-000000007.pt"),
        load(tmp_path / "b" / "checkpoints" / "ckpt-000000007.pt"),
    )
    with pytest.raises(ValueError, match="--r1-every must be >= 1"):
        main(smoke_cfg(store, tmp_path / "c", r1_every=0))


def test_r1_split_without_r1_is_a_user_error(store: Path, tmp_path: Path) -> None:
    """`--r1-split` arranges R1's graph; without R1 it would do nothing: refused, before any output."""
    with pytest.raises(ValueError, match="--r1-split needs the R1 penalty"):
        main(smoke_cfg(store, tmp_path / "run", r1_split=True, r1_gamma=0.0))
    assert not (tmp_path / "run").exists()


def test_generator_weight_average_samples_resumes_bitwise_and_is_what_loaders_return(
    store: Path, tmp_path: Path
) -> None:
    """`--g-ema`: the checkpoint keeps the raw G_F (training goes on from it) and its average; evaluation and
    `load_frame_generator` (hence stage 2's --gf-checkpoint) use the average; a resume ends bitwise equal."""
    cfg = {"g_ema": 0.5, "log_every": 1, "max_steps": 5, "eval_videos": 8}
    main(smoke_cfg(store, tmp_path / "a", ckpt_every=2, **cfg))
    last = tmp_path / "a" / "checkpoints" / "ckpt-000000005.pt"
    models = load(last)["models"]
    assert set(models) == {"g", "g_ema", "d"}
    assert not torch.equal(models["g"]["fc.0.weight"], models["g_ema"]["fc.0.weight"])
    gf, gf_cfg = load_frame_generator(last)
    assert gf_cfg.g_ema == 0.5
    assert_state_equal(gf.state_dict(), models["g_ema"])
    z = torch.randn(8, gf_cfg.z_dim, generator=torch.Generator().manual_seed(gf_cfg.seed + 1))
    evaluated = np.load(tmp_path / "a" / "eval" / "samples.npy", allow_pickle=False)
    assert np.array_equal(evaluated[:, :, 0], sample(gf, z).numpy())  # the average's frames, not G_F's
    main(
        smoke_cfg(
            store,
            tmp_path / "b",
            resume=str(tmp_path / "a" / "checkpoints" / "ckpt-000000002.pt"),
            ckpt_every=0,
            **{**cfg, "eval_videos": 0},
        )
    )
    assert_resumed_equal(load(last), load(tmp_path / "b" / "checkpoints" / "ckpt-000000005.pt"))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="--g-ema must be in"):
            main(smoke_cfg(store, tmp_path / "c", g_ema=bad))


@pytest.fixture(scope="module")
def stage2(stage1: Path, store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A smoke stage 2 run through the stage 1 G_F: 6 steps, checkpoints at 3 and 6, evaluated on 4 videos."""
    out = tmp_path_factory.mktemp("stage2")
    gf = str(stage1 / "checkpoints" / "ckpt-000000008.pt")
    result = main(
        smoke_cfg(
            store, out, stage=2, gf_checkpoint=gf, log_every=1, max_steps=6, ckpt_every=3, eval_videos=4
        )
    )
    return out, result


def test_stage2_smoke_trains_with_frozen_gf(stage1: Path, stage2: tuple[Path, dict]) -> None:
    out, result = stage2
    losses = d_losses(out)
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])
    state = load(result["checkpoint"])
    gf_path = stage1 / "checkpoints" / "ckpt-000000008.pt"
    assert_state_equal(state["models"]["gf"], load(gf_path)["models"]["g"])  # G_F stayed frozen
    assert "gf" not in state["optimizers"] and state["config"]["g_loss"] == "mean"  # paper: the average
    assert set(result["eval"]) >= {"real", "generated", "independent"} and result["eval"]["real"]["n"] == 4
    assert 0 < result["eval"]["real"]["mean"] < 0.2  # one moving ball: a few pixels flip per frame
    assert list((out / "samples").glob("videos-*.gif")) and (out / "eval.json").is_file()


def test_stage2_resume_bitwise(stage1: Path, stage2: tuple[Path, dict], store: Path, tmp_path: Path) -> None:
    out, _ = stage2
    gf = str(stage1 / "checkpoints" / "ckpt-000000008.pt")
    resume = str(out / "checkpoints" / "ckpt-000000003.pt")
    main(smoke_cfg(store, tmp_path, stage=2, gf_checkpoint=gf, max_steps=6, log_every=1, resume=resume))
    assert_resumed_equal(
        load(out / "checkpoints" / "ckpt-000000006.pt"), load(tmp_path / "checkpoints" / "ckpt-000000006.pt")
    )
    assert d_losses(tmp_path) == d_losses(out)[3:]


def test_gf_swap_samples_through_another_gf(
    stage1: Path, stage2: tuple[Path, dict], store: Path, tmp_path: Path
) -> None:
    """The same G_V through another G_F (here the stage 1 G_F from step 3) gives other videos."""
    gv = stage2[1]["checkpoint"]
    gifs = {}
    for name, step in (("same", 8), ("swap", 3)):
        gf = str(stage1 / "checkpoints" / f"ckpt-{step:09d}.pt")
        main(smoke_cfg(store, tmp_path / name, stage=2, sample_only=True, gv_checkpoint=gv, gf_checkpoint=gf))
        gifs[name] = (tmp_path / name / "samples" / "videos-000000000.gif").read_bytes()
    assert gifs["same"] != gifs["swap"]
    gv_model, gv_cfg = load_video_generator(gv)
    assert gv_cfg.stage == 2 and gv_model.frames == 30
    with pytest.raises(ValueError, match="needs a stage 2"):
        load_video_generator(stage1 / "checkpoints" / "ckpt-000000003.pt")
    with pytest.raises(ValueError, match="needs a stage 1"):
        load_frame_generator(gv)


def test_presets_paper_vs_authors() -> None:
    paper1 = resolve_defaults(FrameGANConfig())
    assert (paper1.k, paper1.optimizer, paper1.lr, paper1.batch_size, paper1.epochs, paper1.g_loss) == (
        48,
        "rmsprop",
        3e-4,
        64,
        50,
        "mean",  # the paper: "the average of discriminator losses"
    )
    assert (paper1.g_noise, paper1.init) == ("fresh", "dcgan")
    paper2 = resolve_defaults(FrameGANConfig(stage=2))
    assert (paper2.k, paper2.optimizer, paper2.lr, paper2.batch_size, paper2.epochs) == (
        16,
        "rmsprop",
        2e-4,
        8,
        15,
    )
    assert (paper2.g_loss, paper2.g_noise) == ("mean", "fresh")  # Neyshabur et al.'s scheme: the mean
    authors = resolve_defaults(config_from_args(FrameGANConfig, {"preset": "authors"}, presets=PRESETS))
    assert (authors.k, authors.optimizer, authors.lr, authors.betas, authors.g_loss) == (
        8,
        "adam",
        2e-4,
        (0.5, 0.999),
        "sum",
    )
    assert authors.projection_init == "uniform" and authors.raw_view and authors.g_noise == "fresh"
    authors2 = resolve_defaults(
        config_from_args(FrameGANConfig, {"preset": "authors", "stage": 2}, presets=PRESETS)
    )
    assert (authors2.g_loss, authors2.nadir_slack, authors2.g_noise) == ("hypervolume", 1.5, "reuse")
    hv = resolve_defaults(FrameGANConfig(g_loss="hypervolume"))  # hypervolume stays an option
    assert hv.g_loss == "hypervolume" and hv.nadir_slack == 1.5
    override = resolve_defaults(
        config_from_args(FrameGANConfig, {"preset": "authors", "k": 3}, presets=PRESETS)
    )
    assert override.k == 3


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """`python -m recipes.train_framegan ARGS` as a real process (with `env` added to the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "recipes.train_framegan", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, **env},
    )


def test_cli_errors_are_one_line(tmp_path: Path, store: Path) -> None:
    res = run_cli(["--stage", "2", "--data", str(store), "--out-dir", str(tmp_path / "x"), "--device", "cpu"])
    assert res.returncode == 2
    assert res.stderr.strip().endswith("stage 2 needs --gf-checkpoint (a stage 1 checkpoint)")
    assert res.stderr.strip().count("\n") == 0


def test_data_shape_mismatch_is_a_clear_error(tmp_path: Path, store: Path) -> None:
    with pytest.raises(ValueError, match=r"models expect \(1, 64, 64\).*--size"):
        main(smoke_cfg(store, tmp_path, size=64))


@pytest.mark.slow
def test_torchrun_two_ranks_gloo_and_resume(store: Path, tmp_path: Path) -> None:
    """DDP on CPU (gloo) through torchrun: 2 ranks train, rank 0 checkpoints, a second launch resumes; with R1
    on D's real and fake halves in separate graphs (`--r1-split`: one DDP forward, each weight used twice)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    base = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "recipes.train_framegan",
        "--smoke",
        "--data",
        str(store),
        "--out-dir",
        str(tmp_path),
        "--log-every",
        "1",
        "--r1-gamma",
        "10",
        "--r1-split",
    ]
    first = subprocess.run([*base, "--max-steps", "3"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    state = load(tmp_path / "checkpoints" / "ckpt-000000003.pt")
    assert len(state["rng"]) == 2 and state["loader"]["world_size"] == 2  # one RNG state per rank
    second = subprocess.run(
        [*base, "--resume", "auto"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert second.returncode == 0, second.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(float(r["r1"]) > 0 for r in rows)


def test_with_r1_compile_leaves_the_discriminators_eager() -> None:
    """R1 needs a double backward through D, which torch.compile's AOTAutograd refuses (shown below on the
    CPU with the aot_eager backend, the same autograd path as inductor on CUDA): with R1 only G compiles."""
    assert compile_discriminators(FrameGANConfig(compile=True, r1_gamma=0.0))
    assert not compile_discriminators(FrameGANConfig(compile=True, r1_gamma=10.0))
    assert not compile_discriminators(FrameGANConfig(compile=False, r1_gamma=0.0))
    d = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 1))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(torch.compile(d, backend="aot_eager")(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.square().sum().backward()


def test_the_cuda_path_compile_and_bf16_autocast_trains_both_stages_with_r1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `--device cuda --precision bfloat16 --compile` runs (the paper-scale protocol's path), here on
    CPU: torch.compile through AOTAutograd (the aot_eager backend; inductor on CUDA shares its autograd) and
    bf16 autocast, with R1 in both stages, then a resume. Without the eager discriminators it stops at step 1
    (the double backward above)."""
    from cuda_path import use_cuda_path_on_cpu

    import recipes.train_framegan as recipe

    use_cuda_path_on_cpu(monkeypatch, recipe)
    store = smoke_store(tmp_path / "store")
    cuda_like = {"precision": "bfloat16", "compile": True, "r1_gamma": 10.0, "max_steps": 2, "eval_videos": 0}
    first = main(smoke_cfg(store, tmp_path / "s1", stage=1, **cuda_like))
    two = {"stage": 2, "gf_checkpoint": first["checkpoint"], "gv_init": "spread", "gv_output": "sphere"}
    main(smoke_cfg(store, tmp_path / "s2", **two, **cuda_like))
    resumed = main(smoke_cfg(store, tmp_path / "s2", **two, **{**cuda_like, "max_steps": 3}, resume="auto"))
    assert resumed["step"] == 3
    for key, value in load(resumed["checkpoint"])["models"]["g"].items():
        assert torch.isfinite(value.float()).all(), key


def test_compile_on_cpu_trains_stage2_through_inductor_and_resumes_bitwise(
    stage1: Path, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--compile` on CPU (the 3-ball full protocol's stage 2): G_V and the frozen G_F run as inductor's C++
    kernels (D stays eager: R1's double backward); a compiled run resumes bitwise, and it trains the eager
    run's function in another floating-point order (weights within rounding noise of the eager run's)."""
    from cuda_path import record_compiles
    from torch._dynamo.utils import counters

    from recipes.models.framegan import FrameGenerator, VideoGenerator

    compiled_types = record_compiles(monkeypatch)
    gf = str(stage1 / "checkpoints" / "ckpt-000000008.pt")
    kw = {"stage": 2, "gf_checkpoint": gf, "max_steps": 4, "ckpt_every": 2, "eval_videos": 0, "r1_gamma": 1.0}
    counters.clear()
    main(smoke_cfg(store, tmp_path / "a", compile=True, **kw))
    assert compiled_types == [VideoGenerator, FrameGenerator]
    assert counters["stats"]["unique_graphs"] >= 2  # dynamo traced them: they ran compiled, not eagerly
    main(smoke_cfg(store, tmp_path / "b", compile=True, **{**kw, "max_steps": 2}))
    main(smoke_cfg(store, tmp_path / "b", compile=True, **kw, resume="auto"))
    last = "checkpoints/ckpt-000000004.pt"
    assert_resumed_equal(load(tmp_path / "a" / last), load(tmp_path / "b" / last))
    main(smoke_cfg(store, tmp_path / "eager", **kw))
    compiled, eager = (load(tmp_path / run / last)["models"]["g"] for run in ("a", "eager"))
    for key, value in eager.items():
        if value.is_floating_point():
            assert torch.allclose(compiled[key], value, atol=5e-3), key


def test_compile_on_cpu_without_a_cpp_compiler_is_a_one_line_user_error(tmp_path: Path, store: Path) -> None:
    """Inductor needs a C++ compiler on CPU: without one, --compile stops before anything is written instead
    of failing at the first step deep in a traceback."""
    out = tmp_path / "run"
    args = ["--smoke", "--data", str(store), "--out-dir", str(out), "--device", "cpu", "--compile"]
    res = run_cli(args, CXX="no-such-c++-compiler")
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().count("\n") == 0
    assert "--compile on CPU needs a C++ compiler" in res.stderr and "no-such-c++-compiler" in res.stderr
    assert not out.exists()
