"""TGAN's CPU-scale options: reduced frame size, resize-convolution upsampling, G weight average, lr decay,
the critic's minibatch stddev, the R1 penalty."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.common.config import config_from_args
from recipes.common.data import smoke_store
from recipes.common.ema import ema_update
from recipes.models.tgan import ImageGenerator, upsample_stage
from recipes.train_tgan import (
    PRESETS,
    SMOKE,
    SMOKE_STORE_PARAMS,
    TGANConfig,
    critic_objective,
    downsample,
    generate_videos,
    load_models,
    lr_at,
    main,
    upsample,
    with_input_grad,
)


def test_downsample_area_averages_each_block_of_every_frame() -> None:
    video = torch.arange(2 * 1 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 1, 3, 4, 4)
    small = downsample(video, 2)
    assert small.shape == (2, 1, 3, 2, 2)
    assert small[1, 0, 2, 1, 0] == video[1, 0, 2, 2:4, 0:2].mean()  # frames are never mixed
    assert downsample(video, 4) is video
    with pytest.raises(ValueError, match="must divide"):
        downsample(video, 3)


def test_upsample_restores_the_store_size_and_keeps_flat_regions() -> None:
    videos = np.full((2, 1, 3, 8, 8), -1.0, np.float32)
    videos[0, 0, 1, 2:6, 2:6] = 1.0
    big = upsample(videos, 16)
    assert big.shape == (2, 1, 3, 16, 16) and big.dtype == np.float32
    assert np.all(big[1] == -1.0) and big[0, 0, 1, 7, 7] == 1.0 and big.max() <= 1.0
    assert upsample(videos, 8) is videos


@pytest.mark.parametrize("how", ["deconv", "resize"])
def test_only_the_transposed_conv_draws_a_checkerboard_from_a_flat_input(how: str) -> None:
    """Why `gen_upsample="resize"`: with kernel 4 and stride 2, neighbouring output pixels of a transposed
    conv sum different kernel taps, so even a spatially constant input comes out as a period-2 pattern;
    nearest x2 + 3x3 conv maps it to a constant (away from the zero-padded border)."""
    torch.manual_seed(0)
    stage = upsample_stage(8, 4, how)
    out = stage(torch.ones(1, 8, 6, 6))[0, :, 2:-2, 2:-2]  # interior
    spread = (out.amax(dim=(1, 2)) - out.amin(dim=(1, 2))).max().item()
    assert (spread < 1e-5) if how == "resize" else (spread > 1e-2)


def test_resize_generator_has_the_paper_shapes() -> None:
    g = ImageGenerator(size=32, conv_ch=32, z_slow_dim=8, z_fast_dim=8, upsample="resize")
    assert g(torch.rand(3, 8), torch.rand(3, 8)).shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="upsample"):
        ImageGenerator(size=32, conv_ch=32, upsample="pixelshuffle")


def test_reduced_frame_size_run_trains_and_loads_at_that_size(tmp_path: Path) -> None:
    store = smoke_store(tmp_path / "balls", params=SMOKE_STORE_PARAMS)  # 32x32 clips
    cfg = config_from_args(
        TGANConfig,
        {"smoke": True, "data": str(store), "out_dir": str(tmp_path / "run")},
        presets=PRESETS,
        smoke=SMOKE,
    )
    options = {
        "frame_size": 16,
        "gen_upsample": "resize",
        "g_ema": 0.9,
        "mbstd_group": 2,
        "r1_gamma": 5.0,
        "frame_critic_ch": 4,
    }
    main(dataclasses.replace(cfg, **options, max_steps=2, ckpt_every=2))
    state = torch.load(tmp_path / "run" / "checkpoints" / "ckpt-000000002.pt", weights_only=True)
    assert state["extra"] == {"channels": 1, "size": 16, "store_size": 32}
    assert set(state["models"]) == {"gen", "gen_ema", "critic"}
    assert not torch.equal(
        state["models"]["gen"]["g1.slow.0.weight"], state["models"]["gen_ema"]["g1.slow.0.weight"]
    )
    gen, critic, loaded = load_models(tmp_path / "run" / "checkpoints" / "ckpt-000000002.pt")
    assert loaded.frame_size == 16 and loaded.gen_upsample == "resize" and loaded.mbstd_group == 2
    assert loaded.r1_gamma == 5.0
    assert critic.mbstd_group == 2 and critic.head.in_channels == SMOKE["critic_ch"] * 2 + 1  # 16x16
    assert loaded.frame_critic_ch == 4 and critic.frame_critic is not None
    assert any(k.startswith("frame_critic.") for k in state["models"]["critic"])  # trained and saved
    assert torch.equal(gen.g1.slow[0].weight, state["models"]["gen_ema"]["g1.slow.0.weight"])  # samples: EMA
    assert generate_videos(gen, 2, seed=0, device=torch.device("cpu")).shape == (2, 1, 8, 16, 16)
    with pytest.raises(ValueError, match="frame_size"):
        main(dataclasses.replace(cfg, frame_size=24, out_dir=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="mbstd_group"):
        main(dataclasses.replace(cfg, mbstd_group=-1, out_dir=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="r1_gamma"):
        main(dataclasses.replace(cfg, r1_gamma=-1.0, out_dir=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="frame_critic_ch"):
        main(dataclasses.replace(cfg, frame_critic_ch=-1, out_dir=str(tmp_path / "bad")))


def test_r1_adds_half_gamma_times_the_squared_input_gradient_of_the_real_scores() -> None:
    """A linear critic D(x) = <w, x> has input gradient w for every clip: R1 = ||w||^2 exactly, and the
    objective the critic minimises is L_D + gamma / 2 * R1 (L_D itself unchanged, so the logged Wasserstein
    estimate stays comparable); with gamma 0 the real clips are left as they came and nothing is added."""
    torch.manual_seed(0)
    w = torch.randn(1, 2, 3, 4)
    real, fake = torch.randn(5, 1, 2, 3, 4), torch.randn(5, 1, 2, 3, 4)
    cfg = TGANConfig(r1_gamma=4.0)
    x = with_input_grad(real, cfg)
    d_real, d_fake = (x * w).flatten(1).sum(1), (fake * w).flatten(1).sum(1)
    loss_d, objective, logged = critic_objective(d_fake, d_real, x, cfg)
    assert torch.allclose(loss_d, d_fake.mean() - d_real.mean())
    assert logged["r1"] == pytest.approx(w.square().sum().item(), rel=1e-5)
    assert torch.allclose(objective, loss_d + 2.0 * w.square().sum())
    objective.backward()  # the penalty is differentiable (create_graph): the critic can be trained on it
    off = TGANConfig()
    assert with_input_grad(real, off) is real
    plain = critic_objective(d_fake.detach(), d_real.detach(), real, off)
    assert plain[0] is plain[1] and plain[2] == {}


def test_ema_update_averages_parameters_and_copies_buffers() -> None:
    model, ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema_update(ema, model, decay=0.9, step=0)  # early steps: decay (1 + 0) / (10 + 0) = 0.1
    assert torch.allclose(ema.weight, torch.full((3,), 0.1 * 1.0 + 0.9 * 2.0))
    ema_update(ema, model, decay=0.9, step=10**6)  # later: the given decay
    assert torch.allclose(ema.weight, torch.full((3,), 0.9 * 1.9 + 0.1 * 2.0))
    assert torch.equal(ema.running_mean, model.running_mean)
    assert torch.equal(model.weight, torch.full((3,), 2.0))  # the trained model is never touched


def test_linear_lr_decay_is_a_function_of_the_step_and_off_by_default() -> None:
    paper = TGANConfig(max_steps=100)
    assert lr_at(1e-3, 1, paper) == lr_at(1e-3, 100, paper) == 1e-3  # the paper: constant
    decay = dataclasses.replace(paper, lr_decay="linear")
    assert lr_at(1e-3, 1, decay) == 1e-3 and lr_at(1e-3, 51, decay) == pytest.approx(5e-4)
    assert lr_at(1e-3, 100, decay) == pytest.approx(1e-5) and lr_at(1e-3, 101, decay) == 0.0
    chunked = dataclasses.replace(decay, max_steps=10, lr_decay_steps=100)  # a run resumed in chunks
    assert lr_at(1e-3, 51, chunked) == lr_at(1e-3, 51, decay)


def test_the_cuda_path_compile_and_bf16_autocast_trains_through_svc_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the paper-scale protocol runs on a GPU (torch.compile, bf16 autocast), here on CPU (see
    tests/cuda_path.py): two SVC events (every 5th step), then a resume, with finite weights."""
    from cuda_path import use_cuda_path_on_cpu

    import recipes.train_tgan as recipe

    use_cuda_path_on_cpu(monkeypatch, recipe)
    store = smoke_store(tmp_path / "balls", params=SMOKE_STORE_PARAMS)
    given = {"smoke": True, "data": str(store), "out_dir": str(tmp_path / "run")}
    cfg = config_from_args(TGANConfig, given, presets=PRESETS, smoke=SMOKE)
    cfg = dataclasses.replace(cfg, precision="bfloat16", compile=True, epochs=100, max_steps=10, ckpt_every=5)
    main(cfg)
    main(dataclasses.replace(cfg, max_steps=11, resume="auto"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "ckpt-000000011.pt", weights_only=True)
    for name, model in state["models"].items():
        for key, value in model.items():
            assert not value.is_floating_point() or torch.isfinite(value.float()).all(), (name, key)
