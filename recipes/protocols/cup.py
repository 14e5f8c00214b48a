"""Reproduction protocol for the CUP reconstruction recipe (issue #19), registered with recipes.reproduce.

    python -m recipes.reproduce cup-balls --out runs/repro-cup [--quick] [--device cuda]

Makes (or reuses, after checking every shard) a 3-ball 30x30, 16-frame training store and a held-out one
of another seed, senses both with ``datagen sense cup`` (default sensor, complementary second view), then
trains ``recipes.train_cup.main`` three ways: the U-Net with MSE (``unet``), the same with the slides'
adversarial term (``unet_adv``, DCGAN-style patch discriminator, ``ADV_WEIGHT``), and the FrameGAN-prior
variant (``framegan_prior``: an encoder to the per-frame codes of a FrameGAN G_F, trained here by a short
``recipes.train_framegan`` stage 1 on the training store's frames, rendered through it frozen; evaluated
with ``latent_steps`` of per-sample latent optimisation). One table (``recipes.train_cup.method_table``)
scores the best-scaled adjoint, the LS + TV ADMM baseline and the three networks on the same held-out clips:
PSNR/SSIM per frame, adjacent-frame MSE against the scenes', the balls physics of the reconstructions and
seconds per clip.

Targets: the issue's ordering (learned > baseline > adjoint in PSNR on held-out clips, and the U-Net over the
baseline in SSIM) and the U-Net's PSNR (>= 20 dB in --quick). The adversarial and prior rows are measured and
reported, not targeted.

Measured (--quick, 48 held-out clips; PSNR dB / SSIM, adjacent-frame MSE as a ratio to the scenes' 0.0356,
balls physics: count accuracy, link rate, ballistic fraction; seconds per clip, 1 thread, loaded machine):

    adjoint (best scale)  13.04 / 0.400   0.79   0.27 / 0.93 / 0.22   0.0002 s
    LS + TV (300 iters)   17.98 / 0.714   0.85   0.96 / 0.99 / 0.44   1.93 s
    U-Net, MSE            20.27 / 0.756   0.78   0.99 / 1.00 / 0.71   0.006 s
    U-Net + adv 0.01      16.77 / 0.562   1.05   0.89 / 0.96 / 0.26   0.006 s
    FrameGAN prior        10.32 / 0.204   2.03   0.23 / 0.28 / 0.07   0.36 s (30 latent steps)
    (scenes                                      1.00 / 1.00 / 1.00)

Every target holds (20.27 dB: a 0.27 dB margin). The slides' observations hold at this scale: MSE blurs
(adjacent MSE 0.78 of the scenes', balls shrink under the binarisation), the adversarial term sharpens (1.05)
but adds artifacts (2.3 dB / 0.19 SSIM lost, ballistic fraction 0.71 -> 0.26: jittery centres); at weight
0.001 (same run otherwise) it is close to plain MSE: 20.38 dB / 0.751, adjacent MSE 0.82, ballistic 0.69,
count accuracy 0.997. The prior is worse than the adjoint: an 800-step 3-ball G_F (a 3-ball G_F draws exactly
three balls in most frames only after about 2,500 steps, in 0.9 of them after 6,500) and a 600-step encoder
(train MSE 0.36 against the U-Net's 0.04) cannot represent the scenes. About 17 CPU-min (41 min wall on the
shared, loaded 2 cores: G_F 369 CPU-s, U-Net 193, U-Net + adv 242, prior 142, table 69). The full mode has not
been run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from recipes.reproduce import Context, Outcome, Protocol, Target, register, timed

SEED, HELDOUT_SEED = 19, 1019  # store seeds (the protocol's ``--seed`` seeds training)
N_BALLS, SIZE, FRAMES = 3, 30, 16  # 30x30: FrameGAN's frame size, so G_F can be the prior
SENSING: dict[str, Any] = {"complementary": True}  # the rest: datagen.sense.cup.CupParams defaults
ADV_WEIGHT = 0.01  # the adversarial term's weight (MSE ~0.01-0.02 near convergence, the GAN loss ~1)

CPU_SCALE: dict[bool, dict[str, Any]] = {
    True: {  # --quick
        "store": 2048,
        "heldout": 48,
        "unet": {"max_steps": 1500},
        "gf": {"max_steps": 800},
        "prior": {"max_steps": 600, "latent_steps": 30},
    },
    False: {  # full: not run yet
        "store": 8192,
        "heldout": 128,
        "unet": {"max_steps": 6000},
        "gf": {"max_steps": 3000},
        "prior": {"max_steps": 3000, "latent_steps": 100},
    },
}
# G_F at CPU scale: the framegan protocols' stage 1 (R1 10 keeps it off mode collapse, issue #15)
GF_CONFIG: dict[str, Any] = {"k": 8, "g_width": 128, "d_width": 32, "r1_gamma": 10.0}


def _stores(ctx: Context, n: int, heldout: int) -> tuple[Path, Path]:
    """(training, held-out) sensing stores: balls made once, sensed once; later runs check and reuse them."""
    from datagen.api import generator_version, make_store
    from datagen.jobs import run_store_job
    from datagen.sense.job import cup_job

    out = []
    for seed, count in ((SEED, n), (HELDOUT_SEED, heldout)):
        name = f"balls{N_BALLS}-v{generator_version('balls')}-{SIZE}px-{FRAMES}f-{count}-s{seed}"
        source = ctx.data_dir / name
        params = {"n_balls": N_BALLS, "size": SIZE, "frames": FRAMES}
        make_store(source, "balls", params, n=count, seed=seed, shard_size=1024, resume=True)
        sensed = ctx.data_dir / f"{name}-cup"
        run_store_job(cup_job(sensed, source, dict(SENSING)), workers=0, resume=True)
        out.append(sensed)
    return out[0], out[1]


def _cup_config(ctx: Context, name: str, train: Path, heldout: Path, **overrides: Any) -> Any:
    from recipes.train_cup import CupConfig

    return CupConfig(
        data=str(train),
        eval_data=str(heldout),
        out_dir=str(ctx.out / name),
        device=ctx.device,
        seed=ctx.seed,
        epochs=10**6,  # max_steps ends the run
        batch_size=16,
        width=32,
        log_every=50,
        sample_every=0,
        ckpt_every=0,
        resume="auto",
        eval_clips=0,  # one table at the end instead
        balls=N_BALLS,
        **overrides,
    )


def _frame_generator(ctx: Context, train: Path) -> str:
    """A short FrameGAN stage 1 on the training store's frames; returns its last checkpoint."""
    from recipes.train_framegan import FrameGANConfig, main

    steps = CPU_SCALE[ctx.quick]["gf"]["max_steps"]
    cfg = FrameGANConfig(
        stage=1,
        data=str(train),
        out_dir=str(ctx.out / "framegan_gf"),
        device=ctx.device,
        seed=ctx.seed,
        epochs=10**6,
        log_every=50,
        sample_every=0,
        ckpt_every=0,
        resume="auto",
        max_steps=steps,
        **GF_CONFIG,
    )
    return str(main(cfg)["checkpoint"])


def run_cup(ctx: Context) -> Outcome:
    """Stores, three trainings, G_F, one table; metrics from the table."""
    from recipes.train_cup import load_model, main, method_table

    scale = CPU_SCALE[ctx.quick]
    steps: dict[str, Any] = {}
    train, heldout = timed(steps, "data", lambda: _stores(ctx, scale["store"], scale["heldout"]))
    runs = {
        "unet": _cup_config(ctx, "unet", train, heldout, **scale["unet"]),
        "unet_adv": _cup_config(ctx, "unet_adv", train, heldout, adv_weight=ADV_WEIGHT, **scale["unet"]),
    }
    gf = timed(steps, "framegan_gf", lambda: _frame_generator(ctx, train))
    prior = {k: v for k, v in scale["prior"].items() if k != "latent_steps"}
    runs["framegan_prior"] = _cup_config(ctx, "framegan_prior", train, heldout, prior_gf=gf, **prior)
    models = {}
    for name, cfg in runs.items():
        result = timed(steps, name, lambda cfg=cfg: main(cfg))
        steps[name]["steps"] = result["step"]
        models[name] = load_model(result["checkpoint"])[0]
    table_cfg = dataclasses.replace(
        runs["framegan_prior"], eval_clips=scale["heldout"], tv_clips=scale["heldout"],
        latent_steps=scale["prior"]["latent_steps"],
    )  # fmt: skip
    table = timed(steps, "table", lambda: method_table(table_cfg, models, ctx.out))
    (ctx.out / "protocol_config.json").write_text(
        json.dumps({"sensing": SENSING, "scale": scale, "gf": GF_CONFIG, "adv_weight": ADV_WEIGHT}, indent=1)
    )
    return Outcome(steps=steps, metrics=cup_metrics(table), files={"eval_png": "eval.png"})


def cup_metrics(table: dict[str, Any]) -> dict[str, Any]:
    """The table, plus the PSNR margins the targets read."""
    rows = table["rows"]
    psnr = {name: row["psnr"] for name, row in rows.items()}
    return {
        "table": table,
        "psnr": psnr,
        "margin": {
            "unet_over_tv_db": psnr["unet"] - psnr["tv"],
            "tv_over_adjoint_db": psnr["tv"] - psnr["adjoint"],
            "unet_ssim_over_tv": rows["unet"]["ssim"] - rows["tv"]["ssim"],
        },
    }


def cup_targets(quick: bool) -> dict[str, Target]:
    why = "issue #19: learned PSNR > baseline PSNR > adjoint PSNR on held-out clips"
    return {
        "learned_over_baseline": Target("margin.unet_over_tv_db", ">", 0.0, why),
        "baseline_over_adjoint": Target("margin.tv_over_adjoint_db", ">", 0.0, why),
        "learned_ssim_over_baseline": Target(
            "margin.unet_ssim_over_tv", ">", 0.0, "issue #19: the same in SSIM"
        ),
        "unet_psnr": Target(
            "psnr.unet",
            ">=",
            20.0 if quick else 22.0,
            "README: 22.5 dB at 1,500 steps on held-out 32x32 3-ball clips (2 views)",
        ),  # fmt: skip
    }


register(
    Protocol(
        name="cup-balls",
        summary="CUP reconstruction of 3-ball clips: adjoint, LS+TV baseline, U-Net (MSE, +adversarial), "
        "FrameGAN prior, in one table",
        run=run_cup,
        targets=cup_targets,
    )
)
