"""FrameGAN (Albuquerque, Monteiro & Falk 2019): frame generator, then a video "navigator" through it.

Stage 1 trains G_F on single frames against K random-projection discriminators; stage 2 trains G_V, whose
per-frame latents drive the FROZEN G_F, against K 3-D random-projection discriminators. Models:
`recipes/models/framegan.py`; losses: `recipes/losses/multi_d.py`; plumbing: `recipes/common`.

Run (one process; `--device cuda` or `auto` on a GPU machine):

    python -m recipes.train_framegan --stage 1 --data stores/balls-1b-30px --out-dir runs/gf-1b
    python -m recipes.train_framegan --stage 2 --data stores/balls-1b-30px --out-dir runs/gv-1b \\
        --gf-checkpoint runs/gf-1b/checkpoints/ckpt-000031250.pt --eval-videos 256
    python -m recipes.train_framegan --smoke                 # CI: a few CPU steps on a tiny generated store
    python -m recipes.train_framegan --stage 1 --preset authors   # the authors' code defaults (see below)
    python -m recipes.train_framegan --config run.yaml --lr 1e-4  # YAML keys, flags override them
    python -m recipes.train_framegan --resume auto --out-dir runs/gf-1b   # continue the latest checkpoint

DDP (per-rank batch size; gloo on CPU, nccl on CUDA):

    torchrun --standalone --nproc_per_node=8 -m recipes.train_framegan --stage 1 --data ... --out-dir ...
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST --master_port=29500 \\
        -m recipes.train_framegan ...      # and --node_rank=1 on the second node

Evaluation of a stage 2 checkpoint through its G_F (the paper's Table 1 rows, physics metrics, Fig. 5):

    python -m recipes.train_framegan --stage 2 --sample-only \\
        --gv-checkpoint runs/gv-1b/checkpoints/ckpt-X.pt --gf-checkpoint runs/gf-1b/checkpoints/ckpt-Y.pt \\
        --data stores/balls-1b-30px --out-dir runs/eval-1b --eval-videos 256

writes `eval.json` (adjacent-frame MSE mean/std of `real` clips, `generated` videos and the `independent`
latents baseline; `physics` of the same three when the store was made by the balls generator; the paths of
the isomap plot and the full report) and `eval/`: `samples.npy`, `baseline.npy`, `codes.npy` (G_V's latent
sequences), `report.json`, `metric-*.jsonl` and `isomap.png`, all through `recipes.evaluate` (metrics
`adjacent_mse<N>_30f`, `physics_balls<N>_30f`; the same `--eval-videos` after stage 2 training does the same).
For the 3-ball row use the 3-ball checkpoints and store. More metrics from the saved samples, e.g. FVD:
`python -m recipes.evaluate --real STORE --fake runs/eval-1b/eval/samples.npy --metrics fvd256_16f -o DIR`.

`eval.json` also holds `collapse` (per row: `collapsed` and the reasons: near-identical videos from
independent latents or the wrong ball count in most frames; see `recipes.metrics.diversity`), because the
adjacent-frame MSE alone rewards a static, collapsed model; and `fig5` (`eval/fig5.png`: 6 of G_V's latent
paths, the straight lines between their end points and prior samples in one Isomap, the paper's Fig. 5).
Stage 1 with `--eval-videos N` evaluates N frames from independent z against N real frames (one random frame
per clip): `eval.json` {"generated", "real", "collapse"} with the ball count accuracy, the diversity
figures and their ratios to real.

G_F swap (a G_V trained with one G_F samples through another, e.g. 3-ball G_V through a 1-ball G_F): the
same command with `--gv-checkpoint runs/gv-3b/...` and `--gf-checkpoint runs/gf-1b/...`.

Defaults, paper vs code (`--defaults`/`--preset`, resolved per stage and recorded in config.yaml;
x / y = stage 1 / stage 2):

    key         paper (default)              authors (--preset authors)       follows
    k           48 / 16                      8 / 8                            paper | train.py
    optimizer   RMSprop 3e-4 / 2e-4          Adam 2e-4 / 3e-4, betas .5 .999  paper | train.py
    batch       64 / 8                       64 / 128                         paper | train.py
    epochs      50 / 15                      50 / 200                         paper | train.py
    g_loss      mean / mean                  sum / hypervolume (delta 1.5)    paper (1) | code `vanilla`, HV
    g_noise     fresh / fresh                fresh / reuse                    code (2) | code
    init        dcgan                        dcgan                            code (3)
    projection  gaussian                     uniform                          rpgan | code (weight_norm conv)
    G_V view    per sample                   raw view(30, B, 128)             - | code (mixes batch items)
    r1_gamma    0 (off)                      0 (off)                          beyond both (4)
    g_ema       0 (off)                      0 (off)                          beyond both (5)

(1) "when updating the generator parameters, the average of discriminator losses is considered" (stage 1)
    and "the scheme proposed in [11]" (Neyshabur et al.: the mean) for stage 2; `--g-loss hypervolume`
    (delta `--nadir-slack` 1.5) is the authors' hypervolume option.
(2) The paper does not say; frames_generator/train_loop.py draws a new z for the G step (`fresh`),
    bouncing_balls/train_loop.py reuses the D step's fake batch (`reuse`).
(3) The paper does not say; DCGAN and the authors' code draw G_F and D weights from N(0, 0.02) with zero
    biases (`--init pytorch`: PyTorch's defaults). G_V keeps PyTorch's default init in both (as the code).
(4) Neither the paper nor the code: `--r1-gamma G` adds the R1 penalty (Mescheder et al. 2018) of each
    discriminator on its own projected real input; the only CPU-scale change that moved stage 1 off its
    collapse in the ablations of issue #15 (see recipes/protocols/framegan.py). `--r1-every N`: lazily, on
    every N-th step at N x G (StyleGAN2's lazy regularisation; about a third less CPU per stage 1 step at
    N = 4, but that 1-ball stage 1 was still collapsed at 800 steps, R1 on every step not from 700 on:
    not used by the protocols). `--r1-split`: the same penalty with D's real and fake halves in separate
    graphs, so R1's input gradient and double backward run on the real half only (the joint batch runs
    them on zeros for the fake half): another order of the same sums, 1.26x the stage 1 steps/s at
    framegan-3ball's settings, no gain at stage 2's batch of 8 (bench/bench_framegan.py).
(5) Neither the paper nor the code: `--g-ema 0.999` also keeps an exponential moving average of the stage's
    generator (`recipes.common.ema`), which samples, evaluation and the checkpoint loaders use (so stage 2
    renders through a stage 1 run's averaged G_F); the raw generator still trains and is checkpointed for
    resuming. The framegan-3ball full protocol samples G_V's average (measured: it linked where the raw G_V
    did not; recipes.protocols.framegan).
An epoch is one pass of the loader: frame mode draws one random frame per clip (as the authors' frame loader),
clip mode one random 30-frame window per clip (as their video loader). Any single key can be overridden.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from datagen.store.atomic import write_json_atomic
from recipes.common import ckpt
from recipes.common.cli import run_cli
from recipes.common.config import TrainConfig, build_parser
from recipes.common.data import build_loader, data_source, epoch_batches
from recipes.common.dist import wrap_ddp
from recipes.common.ema import ema_update
from recipes.common.run import Run, start_run
from recipes.common.runtime import make_scaler, maybe_compile
from recipes.common.samples import save_image_grid, save_video_gif
from recipes.losses.multi_d import (
    combine_generator_losses,
    discriminator_losses,
    generator_losses,
    r1_penalties,
)
from recipes.models.framegan import (
    FrameGenerator,
    LoopDiscriminators,
    VideoGenerator,
    frame_discriminators,
    freeze,
    render_video,
    video_discriminators,
)


@dataclasses.dataclass
class FrameGANConfig(TrainConfig):
    out_dir: str = "runs/framegan"
    stage: Literal[1, 2] = 1  # 1 = frame generator G_F, 2 = video generator G_V through a frozen G_F
    defaults: Literal["paper", "authors"] = "paper"  # table that fills the None fields below, per stage
    # None = the stage's default from STAGE_DEFAULTS[defaults][stage]
    batch_size: int | None = None
    epochs: int | None = None
    k: int | None = None  # number of discriminators (each behind its own fixed random projection)
    optimizer: Literal["rmsprop", "adam"] | None = None  # same kind for G and the discriminators
    lr: float | None = None
    g_loss: Literal["mean", "sum", "hypervolume"] | None = None  # how G combines the K losses
    g_noise: Literal["fresh", "reuse"] | None = None  # G step: a fresh z, or the D step's fake batch again
    init: Literal["dcgan", "pytorch"] = "dcgan"  # G_F and D weights: N(0, 0.02), zero bias / PyTorch default
    betas: tuple[float, float] = (0.5, 0.999)  # Adam only
    nadir_slack: float = 1.5  # hypervolume delta: eta = delta * max_k l_k
    r1_gamma: float = 0.0  # beyond the paper (0 = off): R1 penalty on each D's projected real input
    r1_every: int = 1  # lazy R1 (StyleGAN2): the penalty on every N-th D step only, weighted N x gamma
    g_ema: float = 0.0  # beyond both (0 = off): decay of the generator's weight average that samples use
    # data and model shapes
    size: int = 30  # frame size: 30 (paper) or 64
    channels: int = 1
    z_dim: int = 100
    frames: int = 30  # stage 2 clip length (G_V emits frames * 128 before the LSTM)
    g_width: int = 1024  # G_F channels after the first linear layer (paper 1024)
    d_width: int = 256  # first discriminator conv's channels (paper 256; later layers x2, x4 / x2, x3)
    gv_width: int = 512  # G_V's first FC width (paper 512; then x2, x4, and frames * 128)
    projection_init: Literal["gaussian", "uniform"] = "gaussian"  # rpgan Gaussian / authors' default uniform
    raw_view: bool = False  # stage 2: reproduce the authors' batch-mixing view(30, B, 128)
    # stage 2, beyond the paper: "spread" rescales G_V's output layer at init so its codes cover G_F's latent
    # space (VideoGenerator.spread_codes_); "pytorch" (paper and code) starts them near 0, at blank frames
    gv_init: Literal["pytorch", "spread"] = "pytorch"
    # stage 2: G_V's codes through tanh (paper and code: in [-1, 1]) or, beyond the paper, on the sphere of
    # radius sqrt(z_dim) where G_F's N(0, I) training codes lie (VideoGenerator)
    gv_output: Literal["tanh", "sphere"] = "tanh"
    # the K discriminators: grouped convs; "batched_dot": the same with the last conv (one output position) as
    # a dot product, faster on CPU; "loop": K modules. The same maths in other orders (bench_framegan)
    d_impl: Literal["batched", "batched_dot", "loop"] = "batched"
    # with R1: D runs the real and the fake half of its batch through separate graphs in its one forward, so
    # R1's backward and double backward skip the fake half (whose gradient is zero); the same sums in another
    # order, faster on CPU. Off: one joint batch, as most measured protocol runs trained (bench_framegan)
    r1_split: bool = False
    # stage 2 inputs, sampling and evaluation
    gf_checkpoint: str = ""  # stage 1 checkpoint whose G_F stage 2 trains through / samples through
    gv_checkpoint: str = ""  # stage 2 checkpoint to start G_V from (with --sample-only: to sample from)
    sample_only: bool = (
        False  # stage 2: no training; samples + evaluation of gv_checkpoint through gf_checkpoint
    )
    n_samples: int = 16  # frames (stage 1) or videos (stage 2) in each sample grid
    eval_videos: int = 0  # evaluate this many videos (stage 2: Table 1, physics, Fig. 5) / frames (stage 1)


STAGE_DEFAULTS: dict[str, dict[int, dict[str, Any]]] = {
    "paper": {
        1: {
            "k": 48,
            "optimizer": "rmsprop",
            "lr": 3e-4,
            "batch_size": 64,
            "epochs": 50,
            "g_loss": "mean",
            "g_noise": "fresh",
        },
        2: {
            "k": 16,
            "optimizer": "rmsprop",
            "lr": 2e-4,
            "batch_size": 8,
            "epochs": 15,
            "g_loss": "mean",
            "g_noise": "fresh",
        },
    },
    "authors": {  # belaalb/frameGAN frames_generator/train.py and bouncing_balls/train.py argparse defaults
        1: {
            "k": 8,
            "optimizer": "adam",
            "lr": 2e-4,
            "batch_size": 64,
            "epochs": 50,
            "g_loss": "sum",
            "g_noise": "fresh",
        },
        2: {
            "k": 8,
            "optimizer": "adam",
            "lr": 3e-4,
            "batch_size": 128,
            "epochs": 200,
            "g_loss": "hypervolume",
            "g_noise": "reuse",
        },
    },
}
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"defaults": "paper"},
    "authors": {"defaults": "authors", "projection_init": "uniform", "raw_view": True},
}
SMOKE: dict[str, Any] = {
    "device": "cpu",
    "out_dir": "runs/framegan-smoke",
    "epochs": 2,
    "max_steps": 8,
    "batch_size": 8,
    "k": 4,
    "g_width": 32,
    "d_width": 8,
    "gv_width": 32,
    "log_every": 2,
    "sample_every": 4,
    "ckpt_every": 4,
    "n_samples": 4,
}


def resolve_defaults(cfg: FrameGANConfig) -> FrameGANConfig:
    """Fill the None fields from STAGE_DEFAULTS[cfg.defaults][cfg.stage]; check the values that matter."""
    if cfg.stage not in (1, 2):
        raise ValueError(f"--stage must be 1 or 2, got {cfg.stage}")
    table = STAGE_DEFAULTS[cfg.defaults][cfg.stage]
    cfg = dataclasses.replace(cfg, **{k: v for k, v in table.items() if getattr(cfg, k) is None})
    if cfg.k < 1 or cfg.batch_size < 2:
        raise ValueError(
            f"need k >= 1 and batch_size >= 2 (BatchNorm), got k={cfg.k}, batch {cfg.batch_size}"
        )
    if cfg.r1_every < 1:
        raise ValueError(f"--r1-every must be >= 1, got {cfg.r1_every}")
    if cfg.r1_split and cfg.r1_gamma <= 0:  # it arranges R1's graph: without R1 it would silently do nothing
        raise ValueError("--r1-split needs the R1 penalty (--r1-gamma > 0)")
    if not 0 <= cfg.g_ema < 1:
        raise ValueError(f"--g-ema must be in [0, 1) (0 = off), got {cfg.g_ema}")
    if cfg.size not in (30, 64):
        raise ValueError(f"--size must be 30 or 64, got {cfg.size}")
    if cfg.g_loss == "hypervolume" and cfg.nadir_slack <= 1:
        raise ValueError(f"--nadir-slack must be > 1, got {cfg.nadir_slack}")
    return cfg


# --- models and optimizers --------------------------------------------------------------------------------


def build_discriminators(cfg: FrameGANConfig) -> nn.Module:
    """K discriminators of the stage, batched (grouped convs) or as the per-discriminator loop reference."""
    kw = {
        "channels": cfg.channels,
        "width": cfg.d_width,
        "projection_init": cfg.projection_init,
        "projection_seed": cfg.seed,
        "init": cfg.init,
        "dot_head": cfg.d_impl == "batched_dot",
    }
    d = (
        frame_discriminators(cfg.k, size=cfg.size, **kw)
        if cfg.stage == 1
        else video_discriminators(cfg.k, **kw)
    )
    return LoopDiscriminators.from_batched(d) if cfg.d_impl == "loop" else d


def build_frame_generator(cfg: FrameGANConfig) -> FrameGenerator:
    return FrameGenerator(
        size=cfg.size, channels=cfg.channels, z_dim=cfg.z_dim, width=cfg.g_width, init=cfg.init
    )


def load_frame_generator(path: str | Path) -> tuple[FrameGenerator, FrameGANConfig]:
    """G_F (and the config it was trained with) from a stage 1 checkpoint, on CPU."""
    return _load_generator(path, 1, "--gf-checkpoint", build_frame_generator)


def build_video_generator(cfg: FrameGANConfig) -> VideoGenerator:
    w = cfg.gv_width
    return VideoGenerator(
        z_dim=cfg.z_dim,
        code_dim=cfg.z_dim,
        frames=cfg.frames,
        hidden=(w, 2 * w, 4 * w),
        raw_view=cfg.raw_view,
        output=cfg.gv_output,
    )


def load_video_generator(path: str | Path) -> tuple[VideoGenerator, FrameGANConfig]:
    """G_V (built from the config it was trained with) from a stage 2 checkpoint, on CPU.

    With `load_frame_generator` this is what evaluation needs: `render_video(gf, sample(gv, z))` gives videos,
    `sample(gv, z)` the latent sequences (for isomap plots); any stage 1 G_F can stand in (the G_F swap).
    """
    return _load_generator(path, 2, "--gv-checkpoint", build_video_generator)


def _load_generator(path: str | Path, stage: int, flag: str, build: Callable[[FrameGANConfig], Any]) -> Any:
    """(generator, config) from a checkpoint of `stage`, built from the config it was trained with: the weight
    average where the run kept one (`--g-ema`), else the trained weights."""

    def build_g(cfg: FrameGANConfig, _: Any) -> dict[str, torch.nn.Module]:
        if cfg.stage != stage:
            raise ValueError(f"{path} is a stage {cfg.stage} checkpoint; {flag} needs a stage {stage} one")
        return {sampled_generator_key(cfg): build(cfg)}

    models, cfg, _ = ckpt.load_trained(path, FrameGANConfig(), build_g)
    return models[sampled_generator_key(cfg)], cfg


def sampled_generator_key(cfg: FrameGANConfig) -> str:
    """The checkpoint entry samples come from: `g_ema` (the weight average) if the run kept one, else `g`."""
    return "g_ema" if cfg.g_ema > 0 else "g"


def make_optimizer(cfg: FrameGANConfig, params) -> torch.optim.Optimizer:
    """One optimizer for all K discriminators equals K optimizers: Adam/RMSprop act element-wise."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.RMSprop(params, lr=cfg.lr)


# --- one iteration ----------------------------------------------------------------------------------------


def make_fake_fn(g: nn.Module, gf: nn.Module | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Stage 1: G_F itself. Stage 2: G_V's per-frame codes rendered through the frozen G_F."""
    if gf is None:
        return g
    return lambda z: render_video(gf, g(z))


def train_step(
    fake_fn: Callable[[torch.Tensor], torch.Tensor],
    d: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    *,
    g_loss: str,
    nadir_slack: float,
    scaler: torch.amp.GradScaler,
    autocast: Callable[[], Any],
    z_g: torch.Tensor | None = None,
    r1_gamma: float = 0.0,
    r1_split: bool = False,
) -> dict[str, float]:
    """One D update (all K at once) on real + detached G(z), then one G update on G(z_g).

    `z_g` is the G step's fresh noise (as the authors' stage 1 code); None reuses the D step's fake batch (as
    their stage 2 code), which saves a generator forward. Real and fake go through D as one concatenated
    batch (D has no BatchNorm, so this is exact) and the G step calls the unwrapped D with its weights'
    gradients off, so DDP sees one forward/backward per module. `r1_gamma` > 0 adds the R1 penalty of each
    discriminator on its own (projected) real input (beyond the paper; `recipes.losses.multi_d`);
    `r1_split` runs the real and the fake half through separate graphs (`forward_in_parts`) so that R1's
    gradients skip the fake half.
    """
    with autocast(), torch.no_grad() if z_g is not None else contextlib.nullcontext():
        fake = fake_fn(z)
    n = len(real)
    r1 = None
    with autocast():
        if r1_gamma > 0:  # the projections are fixed buffers: project outside D, one D forward (DDP) on both
            projected = ckpt.unwrap(d).project(torch.cat([real, fake.detach()])).detach()
            p_real = projected[:n].requires_grad_(True)
            parts = (p_real, projected[n:])
            logits = d(parts if r1_split else torch.cat(parts), projected=True)
            r1 = r1_penalties(logits[:n], p_real)
        else:
            logits = d(torch.cat([real, fake.detach()]))
        d_losses = discriminator_losses(logits[:n], logits[n:])
    d_obj = d_losses.sum() if r1 is None else d_losses.sum() + r1_gamma / 2 * r1.sum()
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(d_obj).backward()
    scaler.step(opt_d)

    d_plain = ckpt.unwrap(d)
    d_plain.requires_grad_(False)
    with autocast():
        if z_g is not None:
            fake = fake_fn(z_g)
        g_losses = generator_losses(d_plain(fake))
        g_obj = combine_generator_losses(g_losses, g_loss, nadir_slack)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(g_obj).backward()
    scaler.step(opt_g)
    scaler.update()
    d_plain.requires_grad_(True)
    return {
        **({"r1": r1.mean().item()} if r1 is not None else {}),
        "d_loss": d_losses.mean().item(),
        "g_loss": g_losses.mean().item(),
        "g_objective": g_obj.item(),
        "g_loss_max": g_losses.max().item(),
    }


def compile_discriminators(cfg: FrameGANConfig) -> bool:
    """Whether `--compile` may compile D too: R1 differentiates D's input gradient (a double backward), which
    torch.compile's AOTAutograd does not support ("does not currently support double backward"), so with R1
    D runs eagerly and only G is compiled."""
    return cfg.compile and cfg.r1_gamma == 0


def lazy_r1_gamma(gamma: float, every: int, step: int) -> float:
    """The R1 weight of iteration `step` (1-based) under lazy regularisation (Karras et al. 2020, StyleGAN2):
    the penalty on every `every`-th step only, scaled by `every` so its average weight stays `gamma`; the
    double backward it needs is about a third of a stage 1 step's CPU time."""
    return gamma * every if step % every == 0 else 0.0


# --- sampling and evaluation ------------------------------------------------------------------------------


def fixed_noise(n: int, z_dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """The same z for every sample grid of a run (own generator: the training RNG stream is untouched)."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def sample(g: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Run a generator in eval mode (BN running statistics) and restore its mode."""
    g = ckpt.unwrap(g)
    was_training = g.training
    g.eval()
    out = g(z)
    g.train(was_training)
    return out


def save_samples(run: Run, step: int, frames_or_videos: torch.Tensor) -> None:
    """Stage 1: a PNG grid of frames. Stage 2: an animated GIF grid, plus a PNG with one row per video."""
    folder = run.run_dir / "samples"
    x = frames_or_videos.float()
    if x.ndim == 4:
        save_image_grid(x, folder / f"frames-{step:09d}.png")
        return
    save_video_gif(x, folder / f"videos-{step:09d}.gif")
    n, c, t, h, w = x.shape
    save_image_grid(
        x[: min(n, 4)].transpose(1, 2).reshape(-1, c, h, w), folder / f"videos-{step:09d}.png", nrow=t
    )


EVAL_CHUNK = 32  # videos per G_F call in evaluation: bounds memory (256 x 30 frames at once is GBs)


@torch.no_grad()
def eval_samples(
    gv: nn.Module, gf: nn.Module, *, n_videos: int, z_dim: int, seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """What the paper's evaluation looks at, on CPU: G_V's latent sequences (`codes`, (N, T, z_dim), Fig. 5),
    the videos they render through G_F (`generated`) and the baseline of independent N(0, I) latents per frame
    through the same G_F (`independent`), all (N, C, T, H, W) in [-1, 1]."""
    from recipes.metrics.adjacent_mse import independent_latent_videos

    z = torch.randn(n_videos, z_dim, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    codes = sample(gv, z)
    generated = torch.cat([render_video(gf, c).cpu() for c in codes.split(EVAL_CHUNK)])
    n_frames = generated.shape[2]
    independent = independent_latent_videos(
        lambda zs: torch.cat([gf(c).cpu() for c in zs.split(EVAL_CHUNK * n_frames)]),
        n_videos=n_videos,
        n_frames=n_frames,
        z_dim=z_dim,
        seed=seed + 2,
        device=device,
    )
    return {"codes": codes.cpu(), "generated": generated, "independent": independent}


def check_batch(real: torch.Tensor, cfg: FrameGANConfig) -> None:
    want = (
        (cfg.channels, cfg.size, cfg.size)
        if cfg.stage == 1
        else (cfg.channels, cfg.frames, cfg.size, cfg.size)
    )
    if tuple(real.shape[1:]) != want:
        raise ValueError(
            f"data batches have shape {tuple(real.shape[1:])} per sample but the models expect {want} "
            "(set --size/--channels/--frames to match the store)"
        )


# --- main -------------------------------------------------------------------------------------------------


def main(cfg: FrameGANConfig, loader: Any = None) -> dict[str, Any]:
    """Train (or, with --sample-only, sample/evaluate) one stage; returns the last metrics and paths."""
    cfg = resolve_defaults(cfg)
    if cfg.smoke and not cfg.data:
        cfg = dataclasses.replace(cfg, data=data_source(cfg))  # generate the tiny store; record its path
    run = start_run(cfg)
    device = run.device
    try:
        if cfg.stage == 1:
            g, gf = build_frame_generator(cfg).to(device), None
        else:
            gf = _stage2_frame_generator(cfg).to(device)
            if cfg.gv_checkpoint:
                g = load_video_generator(cfg.gv_checkpoint)[0].to(device)
            else:
                g = build_video_generator(cfg).to(device)
                if cfg.gv_init == "spread":
                    z = torch.randn(256, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
                    g.spread_codes_(z.to(device))
        d = build_discriminators(cfg).to(device)
        if cfg.sample_only:
            return _sample_only(cfg, run, g, gf)

        opt_g, opt_d = make_optimizer(cfg, g.parameters()), make_optimizer(cfg, d.parameters())
        scaler = make_scaler(device, cfg.precision)
        if loader is None:
            loader = build_loader(
                cfg,
                run,
                mode="frame" if cfg.stage == 1 else "clip",
                frames=None if cfg.stage == 1 else cfg.frames,
            )
        models = {"g": g, "d": d} | ({"gf": gf} if gf is not None else {})
        g_s = g  # the generator that samples and evaluation use: the weight average when there is one
        if cfg.g_ema > 0:
            g_s = models["g_ema"] = copy.deepcopy(g)
        optimizers = {"g": opt_g, "d": opt_d}
        step, start_epoch, _ = run.restore(models=models, optimizers=optimizers, scaler=scaler, loader=loader)
        g_train = wrap_ddp(maybe_compile(g, cfg.compile, device), run.world, device)
        d_train = wrap_ddp(maybe_compile(d, compile_discriminators(cfg), device), run.world, device)
        # the frozen G_F too: stage 2 renders batch x frames through it twice a step (with G_V, 1.13-1.26x
        # stage 2's steps/s on CPU at the 3-ball protocol's sizes: bench/bench_framegan.py --compile)
        gf_train = None if gf is None else maybe_compile(gf, cfg.compile, device)
        fake_fn = make_fake_fn(g_train, gf_train)
        z_fixed = fixed_noise(cfg.n_samples, cfg.z_dim, cfg.seed, device)
        saved_at, stats, epoch = -1, {}, start_epoch

        def checkpoint() -> None:
            nonlocal saved_at
            run.save(
                step=step, epoch=epoch, models=models, optimizers=optimizers, scaler=scaler, loader=loader
            )
            saved_at = step

        def samples() -> None:
            if run.is_main:
                save_samples(
                    run, step, sample(g_s, z_fixed) if gf is None else render_video(gf, sample(g_s, z_fixed))
                )

        done = bool(cfg.max_steps) and step >= cfg.max_steps
        resumed = run.resume_state is not None
        batches = iter(()) if done else epoch_batches(loader, start_epoch, cfg.epochs, resumed=resumed)
        for epoch, batch in batches:
            real = batch["video"]
            check_batch(real, cfg)
            noise = run.step_noise(step + 1)  # iteration step + 1's own stream: resumes bitwise
            z = torch.randn(real.shape[0], cfg.z_dim, generator=noise, device=run.device)
            fresh = cfg.g_noise == "fresh"
            z_g = torch.randn(real.shape[0], cfg.z_dim, generator=noise, device=run.device) if fresh else None
            stats = train_step(
                fake_fn,
                d_train,
                opt_g,
                opt_d,
                real,
                z,
                g_loss=cfg.g_loss,
                nadir_slack=cfg.nadir_slack,
                scaler=scaler,
                autocast=run.autocast,
                z_g=z_g,
                r1_gamma=lazy_r1_gamma(cfg.r1_gamma, cfg.r1_every, step + 1),
                r1_split=cfg.r1_split,
            )
            step += 1
            if cfg.g_ema > 0:
                ema_update(g_s, g, cfg.g_ema, step)
            if run.after_step(step, stats, epoch=epoch, samples=samples, checkpoint=checkpoint):
                break
        if saved_at != step:
            checkpoint()
        samples()
        result: dict[str, Any] = {
            "step": step,
            "stats": stats,
            "checkpoint": str(ckpt.checkpoint_path(run.run_dir, step)),
        }
        if cfg.eval_videos > 0:
            result["eval"] = (
                _evaluate_frames(cfg, run, g_s) if cfg.stage == 1 else _evaluate_and_record(cfg, run, g_s, gf)
            )
        return result
    finally:
        run.close()


def _stage2_frame_generator(cfg: FrameGANConfig) -> FrameGenerator:
    """The frozen G_F of stage 2: from --gf-checkpoint (sizes from its config), random only under --smoke."""
    if cfg.gf_checkpoint:
        gf, gf_cfg = load_frame_generator(cfg.gf_checkpoint)
        if (gf_cfg.size, gf_cfg.channels, gf_cfg.z_dim) != (cfg.size, cfg.channels, cfg.z_dim):
            raise ValueError(
                f"G_F in {cfg.gf_checkpoint} makes {gf_cfg.channels}x{gf_cfg.size}x{gf_cfg.size} "
                f"frames from z_dim {gf_cfg.z_dim}; this run expects {cfg.channels}x{cfg.size}x"
                f"{cfg.size} from {cfg.z_dim}"
            )
    elif cfg.smoke:
        print("--smoke without --gf-checkpoint: stage 2 runs through a randomly initialised G_F", flush=True)
        gf = build_frame_generator(cfg)
    else:
        raise ValueError("stage 2 needs --gf-checkpoint (a stage 1 checkpoint)")
    return freeze(gf)


def _sample_only(cfg: FrameGANConfig, run: Run, gv: nn.Module, gf: nn.Module) -> dict[str, Any]:
    if cfg.stage != 2 or not cfg.gv_checkpoint:
        raise ValueError(
            "--sample-only needs --stage 2 and --gv-checkpoint (and --gf-checkpoint to swap G_F)"
        )
    z = fixed_noise(cfg.n_samples, cfg.z_dim, cfg.seed, run.device)
    if run.is_main:
        save_samples(run, 0, render_video(gf, sample(gv, z)))
    result: dict[str, Any] = {"step": 0}
    if cfg.eval_videos > 0:
        result["eval"] = _evaluate_and_record(cfg, run, gv, gf)
    return result


# Table 1 row -> the source it is computed on in recipes.evaluate's report
TABLE1_SOURCES = {"real": "real", "generated": "fake", "independent": "baseline"}


def _evaluate_and_record(cfg: FrameGANConfig, run: Run, gv: nn.Module, gf: nn.Module) -> dict[str, Any]:
    """Sample, save and evaluate with `recipes.evaluate` (main rank only); returns the eval.json summary.

    `<run>/eval/` gets `samples.npy`, `baseline.npy` (N, C, T, H, W float32) and `codes.npy` (N, T, z_dim),
    then `report.json`, `metric-*.jsonl` and `isomap.png` from `recipes.evaluate.evaluate` (the same files
    `python -m recipes.evaluate --real STORE --fake samples.npy --baseline baseline.npy --latents codes.npy`
    writes, so FVD can be added later from the saved samples). `<run>/eval.json` holds the Table 1 rows.
    """
    if not run.is_main:
        return {}
    from recipes.evaluate import evaluate_samples, open_real

    data = data_source(cfg)
    real, n = open_real(data, cfg.eval_videos)
    videos = eval_samples(gv, gf, n_videos=n, z_dim=cfg.z_dim, seed=cfg.seed, device=run.device)
    out = run.run_dir / "eval"
    frames = videos["generated"].shape[2]
    metrics = [f"adjacent_mse{n}_{frames}f"]
    if getattr(real, "generator", None) == "balls":  # physics needs the simulator's geometry (store params)
        metrics.append(f"physics_balls{n}_{frames}f")
    report = evaluate_samples(
        data,
        {"fake": videos["generated"].float().numpy(), "baseline": videos["independent"].float().numpy()},
        metrics,
        out,
        latents=videos["codes"].float().numpy(),
        latents_title=f"G_V latent sequences ({Path(cfg.gv_checkpoint).name or 'this run'})",
        seed=cfg.seed,
    )
    mse, *physics = (m["results"] for m in report["metrics"])
    summary: dict[str, Any] = {row: _source_results(mse, src) for row, src in TABLE1_SOURCES.items()}
    if physics:
        summary["physics"] = {row: _source_results(physics[0], src) for row, src in TABLE1_SOURCES.items()}
    if "collapse" in report:  # near-identical samples or wrong counts: Table 1's MSE would reward them
        summary["collapse"] = {row: report["collapse"][src] for row, src in TABLE1_SOURCES.items()}
    summary["isomap"] = report["plots"]["isomap"]
    summary["fig5"] = str(_write_fig5(videos["codes"].float().numpy(), out / "fig5.png", cfg))
    summary["report"] = str(out / "report.json")
    summary["protocol"] = {
        "metrics": metrics,
        "adjacent_mse": "binarised frames (x > 0), population std over videos",
        "frames": frames,
        "n_videos": n,
        "seed": cfg.seed,
        "data": data,
        "gf_checkpoint": cfg.gf_checkpoint,
        "gv_checkpoint": cfg.gv_checkpoint,
    }
    write_json_atomic(run.run_dir / "eval.json", summary)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


FIG5_PRIOR_SAMPLES = 200


def _write_fig5(codes: Any, path: Path, cfg: FrameGANConfig) -> Path:
    """The paper's Fig. 5: 6 of G_V's latent paths, the straight lines between their end points and samples of
    G_F's prior N(0, I), embedded by one Isomap."""
    from recipes.metrics.isomap import write_fig5_png

    prior = torch.randn(FIG5_PRIOR_SAMPLES, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 3))
    title = "Fig. 5: G_V paths (solid), end-point interpolations (dotted), prior samples (grey)"
    return write_fig5_png(codes, prior.numpy(), path, title=title)


@torch.no_grad()
def _evaluate_frames(cfg: FrameGANConfig, run: Run, g: nn.Module) -> dict[str, Any]:
    """Stage 1: `eval_videos` frames from independent z against as many real frames (one random frame per
    clip), through `recipes.evaluate` (main rank only): on balls stores the ball count accuracy, the diversity
    figures and the `collapsed` flag of `recipes.metrics.diversity`. Writes `<run>/eval/` (`samples.npy`
    (N, C, 1, H, W), `report.json`) and `<run>/eval.json` ({"generated", "real", "collapse", ...})."""
    if not run.is_main:
        return {}
    from recipes.evaluate import evaluate_samples, open_real
    from recipes.metrics.diversity import DIVERSITY_KEYS

    data = data_source(cfg)
    real, n = open_real(data, cfg.eval_videos)
    if getattr(real, "generator", None) != "balls":
        print("stage 1 evaluation needs a balls store (ball detection); skipped", flush=True)
        return {}
    z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(run.device)
    frames = torch.cat([sample(g, c).cpu() for c in z.split(EVAL_CHUNK * cfg.frames)])
    out = run.run_dir / "eval"
    metric = f"physics_balls{n}_1f"
    report = evaluate_samples(
        data, {"fake": frames[:, :, None].float().numpy()}, [metric], out, seed=cfg.seed
    )
    results = report["metrics"][0]["results"]
    keep = {
        "count_accuracy",
        "mean_count",
        "collapsed",
        *DIVERSITY_KEYS,
        *(f"{k}_ratio" for k in DIVERSITY_KEYS),
    }
    summary: dict[str, Any] = {
        row: {k: v for k, v in _source_results(results, src).items() if k in keep}
        for row, src in (("real", "real"), ("generated", "fake"))
    }
    summary["collapse"] = {"real": report["collapse"]["real"], "generated": report["collapse"]["fake"]}
    summary["report"] = str(out / "report.json")
    summary["protocol"] = {"metrics": [metric], "n_frames": n, "seed": cfg.seed, "data": data}
    write_json_atomic(run.run_dir / "eval.json", summary)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


def _source_results(results: dict[str, Any], source: str) -> dict[str, Any]:
    """`{"fake/mean": x, ...}` -> `{"mean": x, ...}` for one source of a recipes.evaluate metric."""
    prefix = f"{source}/"
    return {k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)}


def get_args_parser(add_help: bool = True):
    return build_parser(FrameGANConfig, presets=PRESETS, add_help=add_help, description=__doc__)


if __name__ == "__main__":
    run_cli(main, get_args_parser(), FrameGANConfig, presets=PRESETS, smoke=SMOKE)
