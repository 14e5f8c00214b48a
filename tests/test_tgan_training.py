"""TGAN recipe: the authors' update order, SVC in training, smoke runs from real stores, resume, GAM."""

from __future__ import annotations

import copy
import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from recipes.common.config import config_from_args
from recipes.common.data import smoke_store
from recipes.common.runtime import make_scaler
from recipes.common.samples import to_uint8
from recipes.gam import GamModel, gam_score, load_tgan
from recipes.gam import main as gam_main
from recipes.losses.wgan import svc_parameters
from recipes.models.tgan import VideoCritic, VideoGenerator
from recipes.train_tgan import (
    PRESETS,
    SMOKE,
    SMOKE_STORE_PARAMS,
    TGANConfig,
    batch_condition,
    main,
    save_samples,
    train_step,
)

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def balls_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 32x32 balls store (16-frame clips) made by datagen, as --smoke makes it."""
    return smoke_store(tmp_path_factory.mktemp("tgan") / "balls", params=SMOKE_STORE_PARAMS)


def smoke_config(out: Path, data: Path, **overrides) -> TGANConfig:
    cfg = config_from_args(
        TGANConfig, {"smoke": True, "data": str(data), "out_dir": str(out)}, presets=PRESETS, smoke=SMOKE
    )
    return dataclasses.replace(cfg, **overrides)


def _tiny_models(frames: int = 4, size: int = 16) -> tuple[VideoGenerator, VideoCritic]:
    torch.manual_seed(0)
    gen = VideoGenerator(out_channels=1, size=size, n_frames=frames, z_slow_dim=8, z_fast_dim=8, conv_ch=16)
    critic = VideoCritic(in_channels=1, size=size, n_frames=frames, mid_ch=4)
    return gen, critic


@pytest.mark.parametrize("critic_batch", ["separate", "joint"])
def test_train_step_is_one_g_step_then_one_critic_step_on_the_same_fake_scores(critic_batch: str) -> None:
    """With SGD(lr=1) each update is minus the gradient; both gradients come from ONE forward pass made
    before any update (the authors' updater), the critic's from L_D = mean D(fake) - mean D(real). "joint"
    scores fake and real in one critic batch (shared BN statistics), "separate" in two."""
    gen, critic = _tiny_models()
    real = torch.rand(3, 1, 4, 16, 16) * 2 - 1
    ref_gen, ref_critic = copy.deepcopy(gen), copy.deepcopy(critic)
    torch.manual_seed(7)
    z0 = ref_gen.sample_z(3)
    fake = ref_gen(z0)
    if critic_batch == "joint":
        scores = ref_critic(torch.cat([fake, real]))
        d_fake, d_real = scores[:3], scores[3:]
        assert not torch.allclose(d_fake, ref_critic(fake))  # BN statistics differ: the test can tell
    else:
        d_fake, d_real = ref_critic(fake), ref_critic(real)
    g_grads = torch.autograd.grad(-d_fake.mean(), list(ref_gen.parameters()), retain_graph=True)
    d_grads = torch.autograd.grad(d_fake.mean() - d_real.mean(), list(ref_critic.parameters()))
    before_g = [p.detach().clone() for p in gen.parameters()]
    before_d = [p.detach().clone() for p in critic.parameters()]

    cfg = TGANConfig(constraint="none", critic_batch=critic_batch)  # type: ignore[arg-type]
    opt_g, opt_d = torch.optim.SGD(gen.parameters(), lr=1.0), torch.optim.SGD(critic.parameters(), lr=1.0)
    torch.manual_seed(7)
    metrics = train_step(
        gen, critic, opt_g, opt_d, make_scaler(torch.device("cpu"), "float32"), real, cfg=cfg, step=1
    )
    for p, b, g in zip(gen.parameters(), before_g, g_grads, strict=True):
        torch.testing.assert_close(p.detach(), b - g)
    for p, b, g in zip(critic.parameters(), before_d, d_grads, strict=True):
        torch.testing.assert_close(p.detach(), b - g)
    assert metrics["loss_g"] == pytest.approx(-d_fake.mean().item(), rel=1e-5)
    assert metrics["loss_d"] == pytest.approx((d_fake.mean() - d_real.mean()).item(), rel=1e-5)


@pytest.mark.parametrize("constraint", ["svc", "clip"])
def test_train_step_applies_the_constraint(constraint: str) -> None:
    gen, critic = _tiny_models()
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(200) if p.ndim > 1 else p.add_(3.0)
    cfg = TGANConfig(constraint=constraint)  # type: ignore[arg-type]
    opts = [
        torch.optim.RMSprop(m.parameters(), lr=cfg.lr, alpha=cfg.rms_alpha, eps=cfg.rms_eps)
        for m in (gen, critic)
    ]
    real = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    scaler = make_scaler(torch.device("cpu"), "float32")
    metrics = train_step(gen, critic, *opts, scaler, real, cfg=cfg, step=4)
    if constraint == "svc":  # not on iteration 4, on iteration 5
        assert "sv_max_before_svc" not in metrics
        assert (
            max(
                float(torch.linalg.matrix_norm(p.detach().reshape(p.shape[0], -1), ord=2))
                for p in svc_parameters(critic)
            )
            > 1
        )
        metrics = train_step(gen, critic, *opts, scaler, real, cfg=cfg, step=5)
        assert metrics["sv_max_before_svc"] > 1
        for p in svc_parameters(critic):
            assert (
                float(torch.linalg.matrix_norm(p.detach().reshape(p.shape[0], -1).double(), ord=2))
                <= 1 + 1e-5
            )
        for bn in (m for m in critic.modules() if isinstance(m, nn.BatchNorm3d)):
            std = bn.running_var.sqrt()
            assert torch.all(bn.weight <= std + 1e-6) and torch.all(bn.weight >= 0.01 * std - 1e-6)
    else:
        assert all(p.abs().max() <= 0.01 for p in critic.parameters())


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _gif_ms(gif: Image.Image) -> int:
    total = 0
    for i in range(gif.n_frames):
        gif.seek(i)
        total += gif.info["duration"]
    return total


def test_smoke_run_from_a_real_store(tmp_path: Path, balls_store: Path) -> None:
    out = tmp_path / "run"
    cfg = smoke_config(out, balls_store)
    init_critic = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8)  # same seed-free shapes
    main(cfg)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [str(s) for s in range(1, 7)]
    assert rows[4]["sv_max_before_svc"] != "" and rows[3]["sv_max_before_svc"] == ""  # SVC at iteration 5
    assert all(float(r["wasserstein"]) == -float(r["loss_d"]) for r in rows)
    state = torch.load(out / "checkpoints" / "ckpt-000000006.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 6 and state["extra"] == {"channels": 1, "size": 32, "store_size": 32}
    assert state["config"]["frames"] == 8 and state["config"]["lr"] == 5e-5
    head = state["models"]["critic"]["head.weight"]
    earlier = torch.load(out / "checkpoints" / "ckpt-000000003.pt", map_location="cpu", weights_only=True)
    assert head.shape == init_critic.head.weight.shape
    assert not torch.equal(head, earlier["models"]["critic"]["head.weight"])  # steps 4-6 trained the critic
    # Pillow merges identical consecutive frames (an untrained G barely moves), adding their durations
    gif = Image.open(out / "samples" / "step-000000006.gif")
    assert gif.size == (2 * 32 + 1, 2 * 32 + 1) and _gif_ms(gif) == 8 * 100  # 8 frames at 10 fps
    assert (
        _gif_ms(Image.open(out / "samples" / "step-000000006-interp.gif")) == 15 * 50
    )  # 2*8-1 frames, 20 fps
    png = Image.open(out / "samples" / "step-000000006.png")
    assert png.size == (8 * 33 - 1, 4 * 33 - 1)  # one row per video, frames left to right
    assert (out / "config.yaml").is_file()


def test_resume_continues_exactly(tmp_path: Path, balls_store: Path) -> None:
    straight = smoke_config(tmp_path / "a", balls_store)
    main(straight)
    first = smoke_config(tmp_path / "b", balls_store, max_steps=3)
    main(first)
    assert not (tmp_path / "b" / "checkpoints" / "ckpt-000000006.pt").exists()
    main(dataclasses.replace(first, max_steps=6, resume="auto"))
    a = torch.load(tmp_path / "a" / "checkpoints" / "ckpt-000000006.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "ckpt-000000006.pt", weights_only=True)
    for name in ("gen", "critic"):
        assert a["models"][name].keys() == b["models"][name].keys()
        for k, v in a["models"][name].items():
            assert torch.equal(v, b["models"][name][k]), (name, k)
    assert a["loader"] == b["loader"]
    assert [r["loss_d"] for r in _rows(tmp_path / "a")] == [r["loss_d"] for r in _rows(tmp_path / "b")]


def test_conditional_run_on_moving_mnist_labels(tmp_path: Path) -> None:
    from datagen.api import make_store

    store = tmp_path / "mnist"
    make_store(store, "mnist", {"frames": 8, "size": 32, "digits": 2}, n=8, seed=0, shard_size=8)
    from pipelines.dataset import VideoDataset
    from pipelines.loader import make_loader

    batch = next(
        iter(make_loader(VideoDataset(store, frames=8, with_meta=True), batch_size=4, num_workers=0))
    )
    cfg = smoke_config(tmp_path / "run", store, label_key="labels", n_classes=10, max_steps=2, batch_size=4)
    cond = batch_condition(batch, cfg, torch.device("cpu"))
    for row, meta in zip(cond, batch["meta"], strict=True):
        assert set(torch.nonzero(row).flatten().tolist()) == set(meta["labels"])  # multi-hot of both digits
    main(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "ckpt-000000002.pt", weights_only=True)
    assert state["models"]["gen"]["g0.net.0.weight"].shape[0] == 100 + 10  # z0 + one-hot into G0
    assert state["models"]["critic"]["features.0.weight"].shape[1] == 1 + 10  # video + label planes


def test_cli_config_error_is_one_line(tmp_path: Path, balls_store: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.train_tgan",
            "--smoke",
            "--data",
            str(balls_store),
            "--out-dir",
            str(tmp_path / "x"),
            "--label-key",
            "labels",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "--n-classes" in res.stderr


class _MeanGen(nn.Module):
    """Clips of constant value `level` plus noise: a generator whose quality we control."""

    n_classes = 0

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = nn.Parameter(torch.tensor(level))

    def sample_z(self, n, *, generator=None, device=None):
        return torch.rand(n, 4, generator=generator)

    def forward(self, z0):
        return self.level + 0.05 * (z0[:, :1, None, None, None] - 0.5) * torch.ones(len(z0), 1, 2, 2, 2)


class _DistanceCritic(nn.Module):
    """Score = -|clip mean - 0.5|: real clips (mean 0.5) score ~0, far-off clips score low."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, video):
        return -self.w * (video.mean(dim=(1, 2, 3, 4)) - 0.5).abs()


def test_gam_ratios_follow_im_et_al() -> None:
    real = [0.5 + 0.01 * torch.randn(8, 1, 2, 2, 2) for _ in range(2)]
    good = GamModel(_MeanGen(0.5), _DistanceCritic())  # type: ignore[arg-type]
    bad = GamModel(_MeanGen(-0.5), _DistanceCritic())  # type: ignore[arg-type]
    res = gam_score(good, bad, real, n_samples=20, batch_size=8, threshold=-0.25)
    # no critic calls a real clip fake -> r_test = 1; D_good rejects every bad sample (error 0) while D_bad
    # accepts every good sample (error 1) -> r_sample = 0 < 1 -> the first model wins
    assert res.error_test == (0.0, 0.0) and res.r_test == 1.0 and res.fair
    assert res.error_sample == (0.0, 1.0) and res.r_sample == 0.0 and res.winner == "a"
    assert res.score == float("inf")  # TGAN Table 3's orientation: > 1 = model A wins
    swapped = gam_score(bad, good, real, n_samples=20, batch_size=8, threshold=-0.25)
    assert swapped.r_sample == float("inf") and swapped.score == 0.0 and swapped.winner == "b"
    mid = gam_score(good, bad, real, n_samples=20, batch_size=8, threshold="midpoint")
    # the bad model's midpoint threshold lies between its test scores (~0) and its own samples' (-1)
    assert -0.6 < mid.thresholds[1] < -0.4 and mid.n_test == 16


def test_gam_cli_on_two_checkpoints(tmp_path: Path, balls_store: Path) -> None:
    main(smoke_config(tmp_path / "run", balls_store, max_steps=3, ckpt_every=0, sample_every=0))
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt-000000003.pt"
    model, cfg = load_tgan(ckpt)
    assert cfg.frames == 8 and model.gen.g1.up[-2].out_channels == 1
    report = gam_main(
        [
            "--a",
            str(ckpt),
            "--b",
            str(ckpt),
            "--data",
            str(balls_store),
            "--n",
            "8",
            "--batch-size",
            "4",
            "-o",
            str(tmp_path / "gam.json"),
        ]
    )
    # a model against itself: identical critics and samples -> both ratios exactly 1
    assert report["r_test"] == 1.0 and report["r_sample"] == 1.0 and report["winner"] == "tie"
    assert report["score"] == 1.0 and report["verdict"].endswith("tie")
    assert (tmp_path / "gam.json").is_file() and report["n_test"] == 4  # 4 calibrate, 4 measure


def test_batch_stat_previews_leave_the_generator_untouched(tmp_path: Path) -> None:
    gen, _ = _tiny_models(frames=4, size=16)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    z0 = gen.sample_z(3)
    files = save_samples(gen, z0, None, tmp_path / "s", interp_frames=7, bn="batch")
    assert [f.name for f in files] == ["s.gif", "s.png", "s-interp.gif"]
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())  # running stats unchanged
    assert gen.training  # mode restored
    with torch.no_grad():
        twin = copy.deepcopy(gen).train()
        first_batch = to_uint8(twin(z0)[0, 0, 0])  # video 0, frame 0, with the batch's BN statistics
        first_running = to_uint8(copy.deepcopy(gen).eval()(z0)[0, 0, 0])
    batch_png = np.asarray(Image.open(files[1]))
    running_png = np.asarray(Image.open(save_samples(gen, z0, None, tmp_path / "r", 7)[1]))
    assert np.array_equal(batch_png[:16, :16], first_batch)
    assert np.array_equal(running_png[:16, :16], first_running)
    assert not np.array_equal(first_batch, first_running)


@pytest.mark.slow
def test_paper_size_run_on_moving_mnist_64(tmp_path: Path) -> None:
    """The full paper networks (16 x 64 x 64, 512/64 channels) for a few CPU steps, past one SVC."""
    from datagen.api import make_store

    store = tmp_path / "mnist64"
    params = {"frames": 20, "size": 64, "digits": 2}
    make_store(store, "mnist", params, n=8, seed=0, shard_size=8, formats=["hdf5"])
    cfg = dataclasses.replace(
        TGANConfig(),
        data=str(store),
        out_dir=str(tmp_path / "run"),
        device="cpu",
        batch_size=2,
        max_steps=5,
        log_every=1,
        sample_every=5,
        ckpt_every=5,
        n_samples=4,
    )
    main(cfg)
    rows = _rows(tmp_path / "run")
    assert len(rows) == 5 and rows[4]["sv_max_before_svc"] != ""
    state = torch.load(tmp_path / "run" / "checkpoints" / "ckpt-000000005.pt", weights_only=True)
    assert state["extra"] == {"channels": 1, "size": 64}
    assert Image.open(tmp_path / "run" / "samples" / "step-000000005.png").size == (16 * 65 - 1, 4 * 65 - 1)
