"""Learned CUP reconstruction: a U-Net from the sensed image to the T-frame scene, trained with MSE.

    # sense a store (datagen sense cup), then train on its (sensed, video) pairs
    datagen sense cup stores/balls --out stores/balls-cup --complementary
    python -m recipes.train_cup --data stores/balls-cup --out-dir runs/cup
    torchrun --standalone --nproc_per_node 4 -m recipes.train_cup --data stores/balls-cup --out-dir runs/cup4
    # CPU smoke run: a tiny balls store, sensed once and cached
    python -m recipes.train_cup --smoke --out-dir /tmp/cup_smoke

The network sees the measurement through the known operator: the sensed image y (V, H + (T - 1) s, W),
divided by the sensor's scale (gain * photons, so in units of A x) and by T * fill, is back-projected per
view without the sum over views (y_v(h + t s, w) * M_v(h, w): V * T channels of H x W), and a 2-D U-Net
(frames as channels; Ronneberger et al. 2015, two downsamplings) maps that to the T frames of the grey
scene in [-1, 1]. The mask and sensing parameters come from the store's manifest (`sensing`, `params`).
Evaluation (``eval.json``): PSNR and SSIM per frame against the scene (metric registry ``psnr_ssim``) of
the network, of the best-scaled adjoint and of the classical LS + TV baseline (``datagen.sense.recon``, on the
first ``tv_clips``), and the time per reconstruction. Not here yet (issue #19): the adversarial term and the
FrameGAN-prior variant.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datagen.api import cache_dir, load_manifest
from datagen.sense.cup import CupParams, check_params
from recipes.common import ckpt
from recipes.common.cli import run_cli
from recipes.common.config import TrainConfig, build_parser
from recipes.common.data import build_loader, epoch_batches, smoke_store
from recipes.common.dist import wrap_ddp
from recipes.common.run import Run, start_run
from recipes.common.runtime import make_scaler
from recipes.common.samples import save_image_grid

SMOKE_SENSING: dict[str, Any] = {"shear": 1, "complementary": True}
FIELDS = ("video", "sensed")


@dataclasses.dataclass
class CupConfig(TrainConfig):
    lr: float = 2e-4  # Adam, betas (0.9, 0.999)
    width: int = 32  # U-Net channels at full resolution (x2 per level)
    eval_clips: int = 64  # clips (the store's first, in order) for PSNR/SSIM at the end
    eval_data: str = ""  # held-out sensing store for the evaluation ("" = the training store)
    tv_clips: int = (
        8  # of those, clips also reconstructed by the LS + TV baseline (~1 CPU-s each at 32x32x16)
    )
    tv_iters: int = 300  # ADMM iterations of the baseline


PRESETS: dict[str, dict[str, Any]] = {}
SMOKE: dict[str, Any] = {
    "device": "cpu",
    "out_dir": "runs/cup-smoke",
    "epochs": 100,
    "max_steps": 60,
    "batch_size": 8,
    "width": 16,
    "lr": 2e-3,
    "log_every": 5,
    "sample_every": 0,
    "ckpt_every": 0,
    "eval_clips": 16,
    "tv_clips": 2,
    "tv_iters": 30,
}


def sensing_of(manifest: dict) -> tuple[CupParams, np.ndarray]:
    """A sensing store's parameters and mask (checked against its sha256)."""
    from datagen.sense.job import unpack_mask

    if manifest["generator"]["name"] != "cup" or "sensing" not in manifest:
        raise ValueError("--data must be a store made by `datagen sense cup` (it has no sensed field)")
    params = {k: v for k, v in manifest["params"].items() if k not in ("mask_sha256", "source")}
    return check_params(params), unpack_mask(manifest)


class Backproject(nn.Module):
    """The fixed per-view adjoint: (B, V, H + (T - 1) s, W) -> (B, V * T, H, W)."""

    def __init__(self, mask: np.ndarray, frames: int, shear: int, complementary: bool) -> None:
        super().__init__()
        m = torch.as_tensor(mask, dtype=torch.float32)
        masks = torch.stack([m, 1 - m]) if complementary else m[None]
        self.register_buffer("masks", masks[:, None])  # (V, 1, H, W)
        rows = torch.arange(frames)[:, None] * shear + torch.arange(m.shape[0])[None]
        self.register_buffer("rows", rows, persistent=False)  # (T, H)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y[:, :, self.rows, :] * self.masks).flatten(1, 2)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class CupNet(nn.Module):
    """Back-projection, then a two-level U-Net with skips: sensed (B, V, H', W) -> scene (B, T, H, W)."""

    def __init__(self, p: CupParams, mask: np.ndarray, frames: int, width: int = 32) -> None:
        super().__init__()
        self.frames, self.norm = frames, 1.0 / (p.scale * frames * p.fill)
        self.back = Backproject(mask, frames, p.shear, p.complementary)
        cin, w = p.views * frames, width
        self.enc1, self.enc2, self.mid = _block(cin, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _block(2 * w, w)
        self.out = nn.Conv2d(w, frames, 1)

    def forward(self, sensed: torch.Tensor) -> torch.Tensor:
        x = self.back(sensed.float() * self.norm)
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 4, 0, -h % 4))  # two halvings need sides divisible by 4
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)[..., :h, :w]


def grey_scene(video: torch.Tensor) -> torch.Tensor:
    """A batch (B, C, T, H, W) in [-1, 1] -> the sensed scene (B, T, H, W): the channel mean."""
    return video.mean(dim=1)


def smoke_data() -> str:
    """The tiny balls store, sensed once (cached next to it) with :data:`SMOKE_SENSING`."""
    from datagen.jobs import run_store_job
    from datagen.sense.job import cup_job

    source = smoke_store()
    tag = hashlib.sha256(json.dumps([str(source), SMOKE_SENSING]).encode()).hexdigest()[:12]
    out = cache_dir("smoke") / f"cup-{tag}"
    if not (out / "manifest.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f".{out.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / "manifest.json").is_file():
                run_store_job(cup_job(out, source, SMOKE_SENSING), workers=0, resume=True)
    return str(out)


def train_step(
    net: nn.Module, opt: torch.optim.Optimizer, batch: dict, run: Run, scaler: torch.amp.GradScaler
) -> dict[str, float]:
    target = grey_scene(batch["video"])
    with run.autocast():
        loss = F.mse_loss(net(batch["sensed"]).float(), target)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return {"mse": loss.item()}


def _scores(real: torch.Tensor, videos: torch.Tensor) -> dict[str, float]:
    """Registry ``psnr_ssim`` of ``videos`` against ``real`` (both (N, 1, T, H, W) in [-1, 1])."""
    from recipes.metrics.registry import MetricOptions, calc_metric
    from recipes.metrics.sources import ArrayVideos

    n, _, t = real.shape[:3]
    opts = MetricOptions(sources={"real": ArrayVideos(real), "fake": ArrayVideos(videos)})
    res = calc_metric(f"psnr_ssim{n}_{t}f", opts)["results"]
    return {"psnr": res["fake/psnr"], "ssim": res["fake/ssim"]}


def tv_baseline(
    sensed: torch.Tensor, p: CupParams, mask: np.ndarray, frames: int, iters: int
) -> tuple[torch.Tensor, float]:
    """The classical LS + TV reconstructions (N, 1, T, H, W) in [-1, 1] of sensed images; seconds per clip."""
    from datagen.sense.cup import CupOperator
    from datagen.sense.recon import TVConfig, measurement, reconstruct_tv

    op = CupOperator(mask, frames, p.shear, p.complementary)
    cfg = TVConfig(lam=0.01, rho=0.1, iters=iters, cg_iters=10)
    start = time.perf_counter()
    out = [reconstruct_tv(measurement(y.numpy(), p.scale), op, cfg) for y in sensed]
    seconds = (time.perf_counter() - start) / max(len(out), 1)
    return torch.as_tensor(np.stack(out), dtype=torch.float32)[:, None] * 2 - 1, seconds


@torch.no_grad()
def evaluate(cfg: CupConfig, run: Run, net: CupNet, p: CupParams, mask: np.ndarray) -> dict[str, Any]:
    """PSNR/SSIM per frame of the network, the best-scaled adjoint and (on the first ``tv_clips``) the LS + TV
    baseline against the scenes of the store's first clips, and the seconds per reconstruction."""
    data = cfg.eval_data or cfg.data
    if sensing_of(load_manifest(data))[0] != p:
        raise ValueError("--eval-data was sensed with other parameters than --data")
    loader = build_loader(
        dataclasses.replace(cfg, data=data), run, mode="clip", shuffle=False, drop_last=False, fields=FIELDS
    )
    real, fake, naive, sensed, seconds = [], [], [], [], 0.0
    net.eval()
    for batch in loader:
        target = grey_scene(batch["video"])
        start = time.perf_counter()
        out = net(batch["sensed"]).clamp(-1, 1)
        seconds += time.perf_counter() - start
        back = net.back(batch["sensed"].float()).unflatten(1, (-1, target.shape[1])).sum(1)  # A^T y
        scale = (back * (target + 1) / 2).sum() / back.square().sum().clamp_min(1e-12)  # its best scale
        naive.append((scale * back * 2 - 1).clamp(-1, 1).cpu())
        real.append(target.cpu()), fake.append(out.cpu()), sensed.append(batch["sensed"].cpu())
        if sum(len(r) for r in real) >= cfg.eval_clips:
            break
    net.train()
    real_t, fake_t, naive_t = (torch.cat(v)[: cfg.eval_clips, None] for v in (real, fake, naive))
    n, t = len(real_t), real_t.shape[2]
    result: dict[str, Any] = {
        "clips": n,
        "net": {**_scores(real_t, fake_t), "seconds_per_clip": seconds / n},
        "adjoint": _scores(real_t, naive_t),
    }
    k = min(cfg.tv_clips, n)
    if k > 0:
        tv, tv_seconds = tv_baseline(torch.cat(sensed)[:k], p, mask, t, cfg.tv_iters)
        result["tv"] = {**_scores(real_t[:k], tv), "seconds_per_clip": tv_seconds, "clips": k}
        result["net_on_tv_clips"] = _scores(real_t[:k], fake_t[:k])
    grid = torch.cat([real_t[:4, 0, :8], fake_t[:4, 0, :8]]).reshape(-1, 1, *real_t.shape[-2:])
    save_image_grid(grid, run.run_dir / "samples" / "eval.png", nrow=min(8, t))
    (run.run_dir / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def main(cfg: CupConfig) -> dict[str, Any]:
    """Train the network on (sensed, video) pairs; returns the losses, the checkpoint and the evaluation."""
    if cfg.smoke and not cfg.data:
        cfg = dataclasses.replace(cfg, data=smoke_data())
    p, mask = sensing_of(load_manifest(cfg.data))
    frames = load_manifest(cfg.data)["sample"]["video"]["shape"][0]
    run = start_run(cfg)
    try:
        net = CupNet(p, mask, frames, cfg.width).to(run.device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        scaler = make_scaler(run.device, cfg.precision)
        loader = build_loader(cfg, run, mode="clip", fields=FIELDS)
        models, optimizers = {"net": net}, {"net": opt}
        step, start_epoch, _ = run.restore(models=models, optimizers=optimizers, scaler=scaler, loader=loader)
        train_net = wrap_ddp(net, run.world, run.device)
        losses: list[float] = []
        epoch = start_epoch

        def checkpoint() -> None:
            run.save(
                step=step, epoch=epoch, models=models, optimizers=optimizers, scaler=scaler, loader=loader
            )

        done = bool(cfg.max_steps) and step >= cfg.max_steps
        batches = iter(()) if done else epoch_batches(loader, start_epoch, cfg.epochs, resumed=bool(step))
        for epoch, batch in batches:
            stats = train_step(train_net, opt, batch, run, scaler)
            losses.append(stats["mse"])
            step += 1
            if run.after_step(step, stats, epoch=epoch, samples=lambda: None, checkpoint=checkpoint):
                break
        checkpoint()
        result = {
            "step": step,
            "losses": losses,
            "checkpoint": str(ckpt.checkpoint_path(run.run_dir, step)),
        }
        if cfg.eval_clips > 0 and run.is_main:
            result["eval"] = evaluate(cfg, run, net, p, mask)
        return result
    finally:
        run.close()


def get_args_parser(add_help: bool = True):
    return build_parser(CupConfig, presets=PRESETS, add_help=add_help, description=__doc__)


if __name__ == "__main__":
    run_cli(main, get_args_parser(), CupConfig, presets=PRESETS, smoke=SMOKE)
