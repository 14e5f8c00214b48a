"""Learned CUP reconstruction: a network from the sensed image to the T-frame scene, trained with MSE.

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
Variants (``recipes.models.cup``):

- ``--adv-weight W`` (default 0 = plain MSE): the slides' adversarial term, MSE + W * the non-saturating GAN
  loss of a DCGAN-style fully convolutional discriminator (a map of patch logits; BCE losses of
  ``recipes.losses.multi_d`` with K = 1), trained on scene vs (detached) reconstruction, Adam (0.5, 0.999).
- ``--prior-gf CKPT`` (a FrameGAN stage 1 checkpoint; ``--prior-gv`` a stage 2 one): the FrameGAN-prior
  variant: an encoder from the back-projection to T per-frame G_F codes (or G_V's z), rendered through the
  frozen generator, trained with MSE; ``--latent-steps N`` then refines each sample's latent at evaluation by
  Adam on the measurement misfit ||A G(z) - y||^2 (Bora et al. 2017). Frames must be G_F's size (30 or 64).

Evaluation (``eval.json`` and ``eval.png``, :func:`method_table`): one table of the best-scaled adjoint, the
classical LS + TV baseline (``datagen.sense.recon``, on the first ``tv_clips``) and the network(s) against
the scenes of the first ``eval_clips`` clips of ``--eval-data``, every figure through the metric registry:
PSNR and SSIM per frame (``psnr_ssim``), the adjacent-frame MSE of the reconstructions and the scenes'
(``adjacent_mse``), with ``--balls N`` the balls physics of both (``physics_balls``) and the seconds per
reconstruction. ``python -m recipes.reproduce cup-balls`` puts the U-Net, U-Net + adversarial and
FrameGAN-prior rows in one table (``recipes/protocols/cup.py``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datagen.api import cache_dir, load_manifest
from datagen.sense.cup import CupParams
from recipes.common import ckpt
from recipes.common.cli import run_cli
from recipes.common.config import TrainConfig, build_parser
from recipes.common.data import build_loader, epoch_batches, smoke_store
from recipes.common.dist import wrap_ddp
from recipes.common.run import Run, start_run
from recipes.common.runtime import make_scaler, maybe_compile
from recipes.common.samples import save_image_grid
from recipes.losses.multi_d import discriminator_losses, generator_losses
from recipes.models.cup import Backproject, CupForward, CupNet, PatchDiscriminator, PriorNet

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
    balls: int = 0  # ball count of a balls source: physics metrics of the reconstructions (0 = not balls)
    # the slides' adversarial term: MSE + adv_weight * the non-saturating GAN loss of a DCGAN-style D
    adv_weight: float = 0.0  # 0 = plain MSE
    d_width: int = 32  # discriminator channels after its first conv (x2, x4)
    d_lr: float = 2e-4  # discriminator Adam, betas (0.5, 0.999) (DCGAN)
    # the FrameGAN-prior variant: an encoder to the latent of a frozen trained FrameGAN generator
    prior_gf: str = ""  # FrameGAN stage 1 checkpoint (G_F); "" = the U-Net
    prior_gv: str = ""  # FrameGAN stage 2 checkpoint (G_V): encode G_V's z instead of per-frame G_F codes
    latent_steps: int = 0  # evaluation: per-sample latent optimisation steps from the encoder's latent
    latent_lr: float = 0.05  # its Adam learning rate
    latent_l2: float = 1e-3  # its weight of ||z||^2 / dim


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
    from datagen.sense.job import sensing_params, unpack_mask

    if manifest["generator"]["name"] != "cup" or "sensing" not in manifest:
        raise ValueError("--data must be a store made by `datagen sense cup` (it has no sensed field)")
    return sensing_params(manifest["params"]), unpack_mask(manifest)


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


def build_model(cfg: CupConfig, p: CupParams, mask: np.ndarray, frames: int) -> nn.Module:
    """The U-Net, or with ``prior_gf`` the FrameGAN-prior encoder through the frozen generator(s)."""
    if not cfg.prior_gf:
        return CupNet(p, mask, frames, cfg.width)
    from recipes.train_framegan import load_frame_generator, load_video_generator

    gf, gf_cfg = load_frame_generator(cfg.prior_gf)
    if gf_cfg.size != mask.shape[-1] or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"--prior-gf draws {gf_cfg.size}x{gf_cfg.size} frames, the scenes are {mask.shape}")
    gv = None
    if cfg.prior_gv:
        gv, gv_cfg = load_video_generator(cfg.prior_gv)
        if gv_cfg.frames != frames:
            raise ValueError(f"--prior-gv makes {gv_cfg.frames}-frame videos, the scenes have {frames}")
    return PriorNet(p, mask, frames, gf, gv, width=cfg.width)


def load_model(path: str) -> tuple[nn.Module, CupConfig]:
    """A trained reconstruction network (and its config) from a checkpoint, on CPU; the sensing store it was
    trained on (``cfg.data``) gives the operator."""

    def build(cfg: CupConfig, _: Any) -> dict[str, nn.Module]:
        manifest = load_manifest(cfg.data)
        p, mask = sensing_of(manifest)
        return {"net": build_model(cfg, p, mask, manifest["sample"]["video"]["shape"][0])}

    models, cfg, _ = ckpt.load_trained(path, CupConfig(), build)
    return models["net"].eval(), cfg


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    batch: dict,
    run: Run,
    scaler: torch.amp.GradScaler,
    adv: tuple[nn.Module, torch.optim.Optimizer, float] | None = None,
) -> dict[str, float]:
    """One step: MSE to the scene, plus ``weight`` x the non-saturating GAN loss of the DCGAN-style
    discriminator (trained first on scene vs detached reconstruction, as one batch) when ``adv`` is given.

    The generator's term also sees (scene, reconstruction) as one batch: D's BatchNorm normalises with the
    statistics of that batch, and a fake-only batch scored near-real (g_adv 0.5) while D separated the mixed
    batch perfectly (d_loss 0.003) in the first protocol run."""
    target = grey_scene(batch["video"])
    with run.autocast():
        out = net(batch["sensed"]).float()
        mse = F.mse_loss(out, target)
    stats = {"mse": mse.item()}
    loss = mse
    if adv is not None:
        disc, d_opt, weight = adv
        with run.autocast():
            logits = disc(torch.cat([target, out.detach()])).flatten(1)
            real, fake = logits.chunk(2)
            d_loss = discriminator_losses(real.reshape(-1, 1), fake.reshape(-1, 1)).sum()
        d_opt.zero_grad(set_to_none=True)
        scaler.scale(d_loss).backward()
        scaler.step(d_opt)
        # scene and reconstruction again as one batch: the BN statistics D was trained on
        with run.autocast():
            fake = disc(torch.cat([target, out])).flatten(1).chunk(2)[1]
            g_adv = generator_losses(fake.reshape(-1, 1)).sum()
        loss = mse + weight * g_adv
        stats |= {"d_loss": d_loss.item(), "g_adv": g_adv.item()}
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return stats


# --- evaluation: one table, every method on the same held-out clips ---


def _registry(name: str, sources: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> dict:
    from recipes.metrics.registry import MetricOptions, calc_metric
    from recipes.metrics.sources import ArrayVideos

    opts = MetricOptions(
        sources={k: ArrayVideos(v, name=k) for k, v in sources.items()}, extra=dict(extra or {})
    )
    return calc_metric(name, opts)["results"]


def table_row(scene: torch.Tensor, recon: torch.Tensor, seconds: float, balls: int = 0) -> dict[str, Any]:
    """One method's row, all from the metric registry: PSNR / SSIM per frame (``psnr_ssim``), the
    adjacent-frame MSE of the reconstructions and of the scenes (``adjacent_mse``), with ``balls`` > 0 the
    balls physics of both (``physics_balls``: ball count, link rate, ballistic motion, collapse), and
    seconds per clip.
    ``scene`` and ``recon`` are (N, 1, T, H, W) in [-1, 1], clip i against clip i."""
    n, _, t = scene.shape[:3]
    tag = f"{n}_{t}f"
    pair = {"real": scene, "fake": recon}
    scores = _registry(f"psnr_ssim{tag}", pair)
    adj = _registry(f"adjacent_mse{tag}", pair)
    row: dict[str, Any] = {
        "clips": n,
        "psnr": scores["fake/psnr"],
        "ssim": scores["fake/ssim"],
        "adjacent_mse": adj["fake/mean"],
        "adjacent_mse_scene": adj["real/mean"],
        "adjacent_mse_ratio": adj["fake/mean"] / max(adj["real/mean"], 1e-12),
        "seconds_per_clip": seconds,
    }
    if balls > 0:
        geometry = {"balls": {"n_balls": balls, "size": scene.shape[-1]}}
        physics = _registry(f"physics_balls{tag}", pair, geometry)
        row["physics"] = {k.split("/", 1)[1]: v for k, v in physics.items() if k.startswith("fake/")}
        row["physics_scene"] = {k.split("/", 1)[1]: v for k, v in physics.items() if k.startswith("real/")}
    return row


def _scores(real: torch.Tensor, videos: torch.Tensor) -> dict[str, float]:
    """Registry ``psnr_ssim`` of ``videos`` against ``real`` (both (N, 1, T, H, W) in [-1, 1])."""
    n, _, t = real.shape[:3]
    res = _registry(f"psnr_ssim{n}_{t}f", {"real": real, "fake": videos})
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


def adjoint_baseline(
    sensed: torch.Tensor, scene: torch.Tensor, back: Backproject
) -> tuple[torch.Tensor, float]:
    """A^T y scaled by its best single factor against the scenes (an oracle scale: flatters the adjoint)."""
    start = time.perf_counter()
    x = back(sensed.float()).unflatten(1, (-1, scene.shape[2])).sum(1)
    seconds = (time.perf_counter() - start) / len(sensed)
    target = (scene[:, 0] + 1) / 2
    scale = (x * target).sum() / x.square().sum().clamp_min(1e-12)
    return (scale * x * 2 - 1).clamp(-1, 1)[:, None], seconds


def optimise_latent(
    net: PriorNet, sensed: torch.Tensor, p: CupParams, steps: int, lr: float, l2: float
) -> torch.Tensor:
    """Per-sample latent optimisation (Bora et al. 2017, "compressed sensing using generative models"): from
    the encoder's latent, Adam on ||A G(z) - y / scale||^2 / ||y / scale||^2 + l2 ||z||^2 / dim, where
    G renders through the frozen generator(s); returns the reconstructions (B, T, H, W)."""
    forward = CupForward(net.back)
    y = sensed.float() / p.scale
    latent = net.encode(sensed).detach().requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=lr)
    energy = y.square().flatten(1).sum(1).clamp_min(1e-12)
    for _ in range(steps):
        with torch.enable_grad():
            x = (net.render(latent) + 1) / 2
            misfit = (forward(x) - y).square().flatten(1).sum(1) / energy
            loss = (misfit + l2 * latent.square().mean(1)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    with torch.no_grad():
        return net.render(latent)


def reconstruct(
    net: nn.Module, sensed: torch.Tensor, cfg: CupConfig, p: CupParams, batch_size: int = 16
) -> tuple[torch.Tensor, float]:
    """The network's reconstructions (N, 1, T, H, W) in [-1, 1] and seconds per clip (latent optimisation
    included when ``latent_steps`` > 0 on the prior variant)."""
    net.eval()
    out, start = [], time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(sensed), batch_size):
            y = sensed[lo : lo + batch_size]
            if isinstance(net, PriorNet) and cfg.latent_steps > 0:
                out.append(optimise_latent(net, y, p, cfg.latent_steps, cfg.latent_lr, cfg.latent_l2))
            else:
                out.append(net(y))
    seconds = (time.perf_counter() - start) / len(sensed)
    return torch.cat(out).clamp(-1, 1)[:, None].cpu(), seconds


def eval_clips(cfg: CupConfig, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``eval_clips`` clips of the evaluation store, in order: scenes (N, 1, T, H, W) in [-1, 1]
    and sensed images (N, V, H', W)."""
    data = cfg.eval_data or cfg.data
    loader = build_loader(
        dataclasses.replace(cfg, data=data, num_workers=0),
        SimpleNamespace(device=torch.device(device)),
        mode="clip",
        shuffle=False,
        drop_last=False,
        fields=FIELDS,
    )
    scene, sensed = [], []
    for batch in loader:
        scene.append(grey_scene(batch["video"]).cpu()), sensed.append(batch["sensed"].float().cpu())
        if sum(len(s) for s in scene) >= cfg.eval_clips:
            break
    return torch.cat(scene)[: cfg.eval_clips, None], torch.cat(sensed)[: cfg.eval_clips]


def method_table(cfg: CupConfig, models: dict[str, nn.Module], out_dir: Path | None = None) -> dict[str, Any]:
    """One table (``{"clips", "tv_clips", "rows": {method: row}}``): the best-scaled adjoint, the LS + TV
    baseline (on the first ``tv_clips``; with fewer than ``eval_clips`` its row is on those clips only) and
    every network in ``models``, all against the scenes of the first ``eval_clips`` held-out clips.
    ``out_dir`` gets ``eval.png`` (scene, then each method, first clips' first frames) and ``eval.json``."""
    manifest = load_manifest(cfg.eval_data or cfg.data)
    p, mask = sensing_of(manifest)
    if cfg.eval_data and sensing_of(load_manifest(cfg.data))[0] != p:
        raise ValueError("--eval-data was sensed with other parameters than --data")
    scene, sensed = eval_clips(cfg)
    frames = scene.shape[2]
    recons = {"adjoint": adjoint_baseline(sensed, scene, Backproject(mask, frames, p.shear, p.complementary))}
    k = min(cfg.tv_clips, len(scene))
    if k > 0:
        recons["tv"] = tv_baseline(sensed[:k], p, mask, frames, cfg.tv_iters)
    for name, net in models.items():
        recons[name] = reconstruct(net.cpu(), sensed, cfg, p)
    rows = {
        name: table_row(scene[: len(videos)], videos, seconds, cfg.balls)
        for name, (videos, seconds) in recons.items()
    }
    table = {"clips": len(scene), "tv_clips": k, "rows": rows}
    if out_dir is not None:
        n = min(4, k or 4, len(scene))
        grid = torch.cat([scene[:n, 0, :8]] + [v[:n, 0, :8] for v, _ in recons.values()])
        save_image_grid(
            grid.reshape(-1, 1, *scene.shape[-2:]), Path(out_dir) / "eval.png", nrow=min(8, frames)
        )
        (Path(out_dir) / "eval.json").write_text(json.dumps(table, indent=1))
    return table


def main(cfg: CupConfig) -> dict[str, Any]:
    """Train the network on (sensed, video) pairs; returns the losses, the checkpoint and the evaluation."""
    if cfg.smoke and not cfg.data:
        cfg = dataclasses.replace(cfg, data=smoke_data())
    if cfg.adv_weight < 0:
        raise ValueError(f"--adv-weight must be >= 0, got {cfg.adv_weight}")
    manifest = load_manifest(cfg.data)
    p, mask = sensing_of(manifest)
    frames = manifest["sample"]["video"]["shape"][0]
    run = start_run(cfg)
    try:
        net = build_model(cfg, p, mask, frames).to(run.device)
        opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=cfg.lr)
        scaler = make_scaler(run.device, cfg.precision)
        loader = build_loader(cfg, run, mode="clip", fields=FIELDS)
        models, optimizers = {"net": net}, {"net": opt}
        adv = None
        if cfg.adv_weight > 0:
            disc = PatchDiscriminator(frames, cfg.d_width).to(run.device)
            d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
            models["d"], optimizers["d"] = disc, d_opt
            adv = (
                wrap_ddp(maybe_compile(disc, cfg.compile, run.device), run.world, run.device),
                d_opt,
                cfg.adv_weight,
            )
        step, start_epoch, _ = run.restore(models=models, optimizers=optimizers, scaler=scaler, loader=loader)
        train_net = wrap_ddp(maybe_compile(net, cfg.compile, run.device), run.world, run.device)
        losses: list[float] = []
        epoch = start_epoch

        def checkpoint() -> None:
            run.save(
                step=step, epoch=epoch, models=models, optimizers=optimizers, scaler=scaler, loader=loader
            )

        done = bool(cfg.max_steps) and step >= cfg.max_steps
        batches = iter(()) if done else epoch_batches(loader, start_epoch, cfg.epochs, resumed=bool(step))
        for epoch, batch in batches:
            stats = train_step(train_net, opt, batch, run, scaler, adv)
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
            table = method_table(cfg, {"net": net}, run.run_dir)
            net.to(run.device).train()
            result["eval"] = table
        return result
    finally:
        run.close()


def get_args_parser(add_help: bool = True):
    return build_parser(CupConfig, presets=PRESETS, add_help=add_help, description=__doc__)


if __name__ == "__main__":
    run_cli(main, get_args_parser(), CupConfig, presets=PRESETS, smoke=SMOKE)
