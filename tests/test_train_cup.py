"""The CUP recipe: back-projection is the adjoint, PSNR/SSIM are right, smoke training learns."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from datagen.sense.cup import CupOperator, CupParams, make_mask
from recipes.metrics.psnr_ssim import _gaussian, psnr_frames, ssim_frames
from recipes.metrics.registry import MetricOptions, calc_metric
from recipes.metrics.sources import ArrayVideos
from recipes.train_cup import SMOKE, Backproject, CupConfig, CupNet, main

ROW_KEYS = ("psnr", "ssim", "adjacent_mse", "adjacent_mse_scene", "adjacent_mse_ratio", "seconds_per_clip")


def test_backprojection_summed_over_views_is_the_adjoint() -> None:
    mask = make_mask(10, 9, 0.5, 2)
    op = CupOperator(mask, frames=5, shear=2, complementary=True)
    y = np.random.default_rng(0).standard_normal((3, *op.sensor_shape))
    back = Backproject(mask, 5, 2, True)(torch.as_tensor(y, dtype=torch.float32))
    assert back.shape == (3, 10, 10, 9)
    assert np.allclose(back.unflatten(1, (2, 5)).sum(1).numpy(), op.adjoint(y), atol=1e-5)
    net = CupNet(CupParams(shear=2, complementary=True), mask, 5, width=8)
    assert net(torch.as_tensor(y, dtype=torch.float32)).shape == (3, 5, 10, 9)  # sides not divisible by 4


def test_psnr_and_ssim() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(2, 1, 3, 16, 16, generator=gen) * 1.6 - 0.8
    assert torch.isinf(psnr_frames(real, real)).all() and torch.allclose(
        ssim_frames(real, real), torch.ones(2, 3, dtype=torch.float64)
    )
    shifted = real + 0.2  # 0.1 in [0, 1]: MSE 0.01, 20 dB
    assert torch.allclose(psnr_frames(shifted, real), torch.full((2, 3), 20.0, dtype=torch.float64))
    # one 11x11 window: SSIM by its formula on weighted means, variances and covariance
    a, b = (
        torch.rand(1, 1, 1, 11, 11, generator=gen) * 2 - 1,
        torch.rand(1, 1, 1, 11, 11, generator=gen) * 2 - 1,
    )
    w = _gaussian(11, 1.5)[0, 0]
    x, y = ((a.double() + 1) / 2)[0, 0, 0], ((b.double() + 1) / 2)[0, 0, 0]
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2, (w * x * y).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    want = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert math.isclose(ssim_frames(a, b).item(), want.item(), rel_tol=1e-10)
    noisy = real + 0.3 * torch.randn(real.shape, generator=gen)
    opts = MetricOptions(sources={"real": ArrayVideos(real), "fake": ArrayVideos(noisy)})
    res = calc_metric("psnr_ssim2_3f", opts)["results"]
    assert res["fake/ssim"] < 0.9 and 10 < res["fake/psnr"] < 20


def test_smoke_training_decreases_the_loss(tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = dataclasses.replace(
        CupConfig(**SMOKE), smoke=True, out_dir=str(tmp_path), max_steps=40, eval_clips=8
    )
    result = main(cfg)
    losses = result["losses"]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    table = result["eval"]
    assert table["clips"] == 8 and table["tv_clips"] == 2 and set(table["rows"]) == {"adjoint", "tv", "net"}
    assert table["rows"]["tv"]["clips"] == 2 and table["rows"]["net"]["clips"] == 8
    for row in table["rows"].values():
        assert all(math.isfinite(row[k]) for k in ROW_KEYS), row
        assert "physics" not in row  # balls = 0: no physics asked for
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "eval.png").is_file()
    state = torch.load(result["checkpoint"], weights_only=True)
    assert state["step"] == 40 and set(state["models"]) == {"net"}


def test_compile_compiles_the_network_and_its_discriminator(tmp_path, monkeypatch) -> None:
    """`--compile` was ignored by this recipe; now the U-Net (and the adversarial term's discriminator) train
    through torch.compile, on CPU as on CUDA (here through the aot_eager backend: inductor's C++ build of the
    U-Net costs CI 40 s; tests/test_framegan_recipe.py runs inductor on CPU)."""
    from cuda_path import record_compiles

    from recipes.train_cup import PatchDiscriminator

    compiled = record_compiles(monkeypatch, backend="aot_eager")
    cfg = CupConfig(**SMOKE)
    cfg = dataclasses.replace(
        cfg, smoke=True, out_dir=str(tmp_path), max_steps=3, eval_clips=0, compile=True, adv_weight=0.01
    )
    result = main(cfg)
    assert compiled == [PatchDiscriminator, CupNet]
    assert len(result["losses"]) == 3 and all(math.isfinite(x) for x in result["losses"])
