"""Reproduction protocol for the TGAN-SVC recipe (registered with recipes.reproduce.register).

    python -m recipes.reproduce tgan-mnist --out runs/repro-tgan [--quick] [--device cuda]

TGAN-SVC on Moving MNIST, the TGAN paper's data: a ``datagen mnist`` store (built-in digits, 64x64, 20-frame
clips, 16-frame random windows as the paper) is made under ``ctx.data_dir`` (or reused after every shard
checks out), ``recipes.train_tgan.main`` trains on it, and the trained generator is compared with

* the same network at its initialisation ("untrained"),
* real clips with their frames shuffled (right frames, wrong motion: a clip-level FVD baseline), and
* real held-out clips (the floor: real against real; full mode only),

by FVD (Kinetics-400 I3D, ``recipes.metrics.fvd`` via ``recipes.evaluate``; frames of any size, 64x64 here,
are resized to 224 bilinearly, so small frames need no special case; I3D needs >= 9 frames) against the same
real reference clips (every real set taken to the model's frame size and back, see ``evaluation_sets``), and
by the project's digit classifier (``recipes.metrics.mnist_identity``: the fraction of frames whose digit it
labels with max softmax >= 0.8, identity persistence along tracks). GAM (``recipes.gam``) battles the final
model against its half-way checkpoint (reported, no target).

CPU scale: one digit instead of two (with two 28-px digits on 64x64 the digits touch in about half of the
real frames, so "confident on >= 60% of frames" cannot hold even for real data: 43% measured, 95% with one
digit), narrower networks, batch 8 and far fewer steps than the paper's 100,000 iterations of batch 32, and
the ``TRAIN`` settings below, each chosen from short measured runs (2 CPU cores shared with other jobs):

* the paper's U(-0.01, 0.01) init and separate critic batches (with Adam 2e-4): after 250 steps the critic
  scored every clip alike (L_D = -0.0000) and G drew flat grey clips;
* separate critic batches at any lr tried (RMSprop 2e-4/5e-4, 1e-3): grey backgrounds after 200-300 steps;
  one joint critic batch: black backgrounds within 100 steps (``--critic-batch joint``);
* RMSprop 1e-3 (joint) drove G to all-black clips within 100-200 steps; Adam 2e-4 (both nets) did not;
* G from U(-0.01, 0.01) learned to darken but drew no pixel above 0.5 in 600 steps (DCGAN's N(0, 0.02): none
  in 100); PyTorch's default init draws white from the start.

Learning curve at 64x64, the protocol's size until commit 4daef89 (a --quick run resumed 1,000 steps at a
time, one thread, 0.33-0.38 CPU s/step; it is the protocol's run: a 2,000-step --quick checkpoint is
byte-identical, and the 5,000-step --quick run below logs the same losses and scores the same FVD). Per
checkpoint, 64 clips from the protocol's seed: FVD (untrained 644, frame-shuffled real 183) and the
confident-frame fraction (real 0.95):

    step        2,000  3,000  4,000  5,000  6,000
    FVD          1190    445    587    367    745
    confident   0.119  0.081  0.084  0.089  0.053
    WGAN est.     3.5    1.8    1.6    1.5    1.3

The critic's Wasserstein estimate keeps falling, FVD improves from 2k steps but swings by 2x between
checkpoints 1,000 steps apart, and the digit metric does not improve: samples are digit-sized blobs that move
smoothly, but their strokes are speckled (holes, a checkerboard texture; a few clips are grey grids), so the
blob detector splits them (frames with exactly one blob: 15-34%, real 100%) and the classifier is rarely
sure. G's BN on batch statistics instead of running ones changes little (confident 0.155 at 2k, 0.079 at 6k).
``--quick`` therefore trains 5,000 steps (about 31 CPU min + 5 of evaluation, within the 45 CPU-minute
budget given to it; 6,000 measured worse), and its targets are kept and reported as failing; reaching them
needs far more samples than CPU scale allows (5,000 x 8 clips is 1.3% of the paper's 100,000 x 32) and
probably a wider critic (16 channels here, 64 in the paper), i.e. the GPU protocol. A wider critic alone (32
channels, one thread, 0.7 CPU s/step) was worse over the first 2,000 steps: confident frames 0.004 / 0.016 at
1,000 / 2,000 steps (16 channels: 0.119 at 2,000), frames with one blob 0.017 / 0.04.

Measured ``--quick`` at 64x64 (commit 0536b6e, one thread, 2 CPU cores shared with other jobs): FVD 367 =
0.57 of the untrained model's 644 (target <= 0.5) and 2.0 of frame-shuffled real's 183 (target <= 1);
confident frames 0.089 (target >= 0.3; real 0.95), identity persistence 0.02 (real 1.0); GAM: final beats
half-way. All three targets FAIL. Training 1,885 CPU s (2,283 s wall), evaluation 320 CPU s; 2,619 s wall and
2,214 CPU s in all, the store included.

32x32 frames (``frame_size: 32``, the issue's "size reduced as needed for CPU"; our choice, the paper trains
at 64x64). The real clips are area-averaged 2x (14-px digits, 1.8 px/frame); G and the critic get one
up/down-sampling stage fewer (critic T' = 2 time steps, summed). Evaluation resizes the samples back to 64x64
bilinearly, so FVD's real reference and the digit CNN (28-px digits) stay as before; real clips taken down to
32x32 and back keep confident frames 0.915 (64x64: 0.969; 16x16: 0.57, too small). Short runs, one thread,
seed 0, digit metrics of 64 clips (the protocol's first 64) after every 500 steps (``--quick`` figures above
at 64x64 for comparison: confident 0.119 at 2,000 steps, ~0.35 CPU s/step):

    run (all 32x32)                  CPU s/step  conf. 1k   1.5k    2k    frames with one blob at 2k
    deconv G (the paper's), 16-ch D     0.13       0.042  0.102  0.228    0.37
    resize-conv G (``gen_upsample``)    0.20       0.17   0.105  0.159    0.42
    critic 32 ch                        0.22       (0.015 at 500 steps; stopped for time)
    deconv G, critic lr 6e-4 (TTUR)     0.13       0.047  0.029  0.023    0.13
    deconv G, EMA of G (0.999)          0.13       0.027  0.101  0.170    0.39
    deconv G, batch 16                  0.27       0.128  0.105  0.154    0.36
    deconv G, width 256 (G only)        0.33       0.0    0.017  0.007    0.04
    deconv G, seed 1                    0.13       0.0    0.090  0.123    0.32
    n_critic 2                          0.19       0.100  0.080  0.054    0.24
    n_critic 2, seed 1                  0.18       0.141  0.075  0.093    0.24
    n_critic 5                          0.34       0.062  0.089  0.052    0.16
    n_critic 2 to 1k steps, then 1:1    0.16       0.100  0.079  0.086    0.32
    the same, seed 1                    0.16       0.141  0.101  0.131    0.36

* 32x32 alone learns about twice as fast per step at a third of the cost: confident 0.228 at 2,000 steps
  (64x64: 0.119) after 261 CPU s (64x64: ~700).
* The checkerboard: at 500 steps the 32x32 deconv G drew the same dotted grid in every clip; a transposed
  conv with kernel 4 and stride 2 maps even a flat input to a period-2 pattern (tests/test_tgan_cpu_scale.py),
  and the critic (SVC-bounded, 16 channels) is slow to penalise it. Nearest-upsampling + 3x3 conv
  (``gen_upsample: resize``) removed the grid (confident 0.135 at 500 steps vs 0.0) but the strokes stayed
  thin and broken, and it was no better by 2,000 steps at 1.5x the CPU per step: not adopted, kept as an
  option. By 2,000 steps the deconv G's grid has mostly gone too (strokes still dotted).
* A faster critic (lr 6e-4 vs G's 2e-4) was worse throughout.
* G's weight average (``g_ema``; same training as the deconv run, so it isolates the averaging): blurrier,
  smoother blobs without speckle, but no more confident frames by 2,000 steps.

Learning curve of the deconv 32x32 run (confident frames of 64 clips; of 128 clips in brackets):

    step        2,000  2,500  3,000  3,500  4,000  4,500  5,000
    confident   0.228  0.087  0.122  0.189  0.260  0.238  0.176
                (0.18) (0.07) (0.13) (0.19) (0.23) (0.24) (0.17)
    one blob    0.37   0.26   0.26   0.51   0.73   0.45   0.44

Better than at 64x64 at every checkpoint (0.05-0.12 there), but still swinging between checkpoints 500 steps
apart, and short of 0.3. The samples show why: different z often give near-identical clips (partial mode
collapse), G0's trajectory jumps (a digit's shape changes abruptly between two frames), and strokes are
still dotted. G's weight average did not help later either: 0.063 at 2,500 steps (raw G 0.087; stopped for
time). A linear lr decay to 0 over 5,000 steps (``lr_decay: linear``, both nets; 0.13 CPU s/step) was no
steadier and lower throughout: confident 0.092 / 0.049 / 0.107 / 0.138 / 0.180 / 0.144 / 0.128 at 2,000 ...
5,000 steps (64 clips; frames with one blob 0.39 at 5,000): not adopted, kept as an option. Twice the batch
(16 clips a step, twice the CPU) was ahead at 1,000 steps (0.128) but not after, and behind at equal CPU
(0.128 at 285 CPU s against 0.228 at 261); a G twice as wide (256 channels) overpowered the 16-channel critic
(Wasserstein estimate 20-25 within 200 steps, against about 1-2) and drew almost no digits by 2,000 steps.

More critic updates per G update (``n_critic``, WGAN's Algorithm 1 uses 5; the paper and the authors' code
update 1:1; SVC every 5th critic update): not adopted, kept as an option. First, a second seed of the 1:1 run
(0.123 at 2,000 steps against seed 0's 0.228): one run's figure at 2,000 steps moves by ~0.1 with the seed.
n_critic 2 was ahead per G step early (confident 0.100 / 0.141 at 1,000 steps, seeds 0 / 1, against 0.042 /
0.0) and behind by 2,000 (0.054 / 0.093 against 0.228 / 0.123); at equal CPU it was even early (0.100 / 0.141
at 185 CPU s against 0.102 / 0.090 at 197) and behind later: 0.080 / 0.075 at about 275 CPU s (1:1 at 262:
0.228 / 0.123); continued to 3,500 steps (seed 0, 644 CPU s, the --quick run's training budget): 0.085 / 0.079
/ 0.116 at 2,500 / 3,000 / 3,500, against 0.176 for 1:1 at 5,000 steps (650 CPU s; 0.19-0.26 between 3,500 and
4,500). n_critic 5 costs 2.6x the CPU per G step and was behind throughout at equal CPU (0.012 at 184 CPU s,
0.062 at 353). The stronger critic (Wasserstein estimate 5-9 at step 100, 1:1 0.3-0.8; alike after 1,000
steps) did not fix the collapse across z with digits: n_critic 2's clips differ more (mean nearest-neighbour
RMS distance among 64 clips at 2,000 steps 0.255; 1:1 0.175 / 0.137, seeds 0 / 1; real 0.275), but as faint
fragments and bright checkerboard blobs, n_critic 5's no more (0.137). Nor did n_critic 2 as a warm-up only
(the n_critic 2 runs resumed at 1:1 from 1,000 steps): 0.086 / 0.131 at 2,000 steps after about 330 CPU s
(seeds 0 / 1), against 0.228 / 0.123 at 1:1 after 262. The --quick settings stay 1:1, as the paper.

The critic's minibatch stddev (``mbstd_group: 4``, ProGAN's, an option: one more channel before the head,
the spread of the critic's features over groups of 4 clips, fakes and reals never in one group), against
the collapse across z: not adopted. The critic saw it at once (Wasserstein estimate 23 at step 100, 1:1
without it 0.3-0.8), but by 5,000 steps the clips were as alike as without it (mean nearest-neighbour RMS
distance among 64 clips 0.083 / 0.131, seeds 0 / 1, against 0.095 without; real 0.275; at 2,000 steps 0.137 /
0.215 against 0.175 / 0.137), and confident frames were no better (64 clips, every 500 steps from 1,000 to
5,000): seed 0 0.048, 0.104, 0.086, 0.118, 0.313, 0.065, 0.239, 0.147, 0.093; seed 1 0.119, 0.087, 0.097,
0.085, 0.099, 0.139, 0.140, 0.142, 0.140 (without: seed 0 0.042, 0.102, 0.228, 0.087, 0.122, 0.189, 0.260,
0.238, 0.176; seed 1 0.0, 0.090, 0.123 to 2,000). The same CPU per step (0.13 s). The collapse grows with
training either way (0.175 -> 0.095 from 2,000 to 5,000 steps without it).

Adam betas (0.0, 0.9) (WGAN-GP's and SN-GAN's, against DCGAN's (0.5, 0.999) here): far faster at first,
not after, not adopted: confident frames 0.246, 0.204, 0.101, 0.104, 0.140, 0.103, 0.141, 0.125, 0.174, 0.101
at 500, 1,000 ... 5,000 steps (64 clips; (0.5, 0.999): 0.0 and 0.042 at 500 and 1,000, 0.176 at 5,000), as
collapsed at 5,000 steps (nearest-neighbour distance 0.099).

A critic twice as wide (32 channels; 0.22 CPU s a step against 0.13), run past the first 500 steps this
time: 0.015, 0.159, 0.115, 0.110, 0.075, 0.103, 0.109, 0.090, 0.140, 0.114 at 500 ... 5,000 steps (64 clips):
ahead at 1,000, behind from 2,000, at 1.7x the CPU; not adopted.
The R1 penalty on real clips beside SVC (``r1_gamma: 10``, an option: Mescheder et al.'s zero-centred
gradient penalty, the lever that ended FrameGAN's collapse; 1.2x the CPU a step), measured on another machine
than the runs above (its CPU changes the floating-point order: the 1:1 baseline rerun there gave confident
0.091 at 5,000 steps, not 0.176), against that baseline with the same seeds; 64 clips, nearest-neighbour RMS
distance in [-1, 1] at 64x64 (real 0.23), every 1,000 steps:
    confident frames at     1k     2k     3k     4k     5k     6k     7k     8k     9k    10k
    1:1, seed 0          0.060  0.049  0.011  0.244  0.091
    R1 10, seed 0        0.076  0.042  0.117  0.044  0.121
    1:1, seed 1          0.001  0.116  0.096  0.165  0.128  0.135  0.036  0.135  0.041  0.112
    R1 10, seed 1        0.000  0.042  0.140  0.136  0.214  0.134  0.146  0.109  0.116  0.172
    nearest neighbour
    1:1, seed 0           0.18   0.12   0.06   0.10   0.06
    R1 10, seed 0         0.12   0.08   0.16   0.07   0.10
    1:1, seed 1           0.09   0.18   0.08   0.06   0.07   0.05   0.04   0.05   0.05   0.05
    R1 10, seed 1         0.01   0.10   0.14   0.07   0.18   0.18   0.24   0.16   0.09   0.09
The first lever that kept clips from different z apart (seed 1 from 5,000 to 10,000 steps: 0.09-0.24
against 0.04-0.05 without; frames with exactly one digit 0.25-0.46 against 0.08-0.41), and confident frames
were higher at 5,000 steps in both seeds (0.121 / 0.214 against 0.091 / 0.128), but they did not grow with
more steps (0.11-0.17 from 6,000 to 10,000) and stayed far below the targets (0.3 / 0.6). The whole
--quick protocol on that machine, both runs side by side (one thread each): FVD 157 with R1 against 203
without, i.e. 0.34 / 0.44 of the untrained model's 459 and 1.26 / 1.63 of frame-shuffled real's 124; confident
frames 0.121 / 0.091, frames with one digit 0.39 / 0.24: better on every figure, the same two targets fail.
The full protocol with it on that machine (one thread, beside another job; 20,000 steps, 256 clips): FVD 156 =
0.35 of the untrained model's 450 (holds) and 1.95 of frame-shuffled real's 80 (target <= 0.5), confident
frames 0.213 (target >= 0.6), frames with one digit 0.37, identity persistence 0.13; GAM: the 10,000-step
checkpoint beats the final one (score 0.07). Against the full run without it (below; an earlier machine, FVD
0.34 / 1.94, confident 0.331, one digit 0.57, persistence 0.07, final beats half-way): FVD the same, fewer
confident frames, worse in its second half. Not adopted; kept as an option. Training 4,988 CPU s, evaluation
2,456, 7,577 s wall in all.

Measured ``--quick`` at 32x32 (this configuration, one thread, 2 CPU cores shared with other jobs; 5,000
steps, the same run as the learning curve's: confident 0.176 at 5,000 there too): FVD 327 = 0.56 of the
untrained model's 579 (target <= 0.5) and 2.06 of frame-shuffled real's 159 (target <= 1); confident frames
0.176 (target >= 0.3; real 0.969), frames with one digit 0.44, identity persistence 0.09 (real 1.0); GAM:
final beats half-way. Held-out real clips taken to 32x32 and back score FVD 154 and confident frames 0.951:
the reduced size costs the digit metric little, but FVD about as much as shuffling the frames (159; the full
run below measures it again). All three targets still FAIL: confident frames doubled
(0.089 -> 0.176) and identity persistence rose (0.02 -> 0.09), the FVD ratios did not move (0.57 -> 0.56,
2.0 -> 2.06), at a third of the CPU: training 667 CPU s (690 s wall), evaluation 321 CPU s; 1,021 s wall and
997 CPU s in all, the store included. Where it stands: the per-checkpoint swings (0.09-0.26 between 2,500 and
5,000 steps) and the collapse across z say the GAN has not settled after 5,000 x 8 clips (1.3% of the
paper's samples); the GPU protocol at the paper's scale is the test of the recipe itself.

Measured full protocol (20,000 steps at 32x32, 256 evaluation clips; one thread beside other jobs): FVD 264 =
0.499 of the untrained model's 529 (target <= 0.5: holds, by a hair) and 2.49 of frame-shuffled real's 106
(target <= 0.5); confident frames 0.331 (target >= 0.6; real 0.969), frames with one digit 0.57, identity
persistence 0.07 (real 1.0); GAM: the final model beats the 10,000-step one (score 2.98). Training 2,611 CPU
s, evaluation 1,770 CPU s, 5,157 s wall in all. Four times the --quick steps nearly doubled the confident
frames (0.176 -> 0.331) and moved FVD from 0.56 to 0.50 of the untrained model's, but the samples show why the
rest does not hold: clips from different z are near-identical (collapse across z) and the digit's shape drifts
within a clip (0 -> 4 -> an L). The frame-shuffled target cannot hold at this frame size at all: held-out real
clips taken to 32x32 and back score FVD 108 against the full-size real reference, above the full-size
frame-shuffled baseline's 106, so even a perfect 32x32 model would miss "at most half of shuffled" (53) by 2x;
that target needs the paper's 64x64 frames (the GPU protocol).

Re-evaluated with FVD's reference and the real baselines at the model's 32x32 (commit 53dda4b; the same
trained models, so the digit figures are unchanged): ``--quick`` FVD 189 = 0.41 of the untrained model's 459
(target <= 0.5: holds) and 1.52 of frame-shuffled real's 124 (target <= 1); full FVD 155 = 0.34 of the
untrained model's 450 (holds) and 1.94 of frame-shuffled real's 80 (target <= 0.5), against a floor (held-out
real clips) of 13.6, so that target is now reachable in principle: the model is short, not the metric.
Full-size held-out clips score 93 against the 32x32 reference (134 in ``--quick``'s 64 clips).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipes.reproduce import Context, Outcome, Protocol, Target, check_resumable, register, timed

STORE_SEED = 1  # the store's seed (the protocol's --seed seeds training and evaluation)
STORE = {"digits": 1, "size": 64, "frames": 20}  # datagen mnist params (built-in train digits)
STORE_CLIPS = 10000
FRAMES = 16  # the paper's clip length (G0 doubles 1 -> 16; I3D needs >= 9)
CONFIDENT = 0.8  # max softmax of the digit classifier that counts as "confident"

# Per mode: evaluation clips and the TGANConfig fields that differ from the paper preset.
# I3D costs about 1.5 CPU s per 16-frame clip: FVD of 4 sets + the real reference is 8 CPU min at 64 clips;
# --quick leaves out the real-vs-real floor.
CPU_SCALE: dict[bool, dict[str, Any]] = {
    # full: 44 CPU min of training at 32x32 + 30 of evaluation (measured, see the module docstring)
    False: {"eval_clips": 256, "floor": True, "train": {"max_steps": 20000}},
    True: {"eval_clips": 64, "floor": False, "train": {"max_steps": 5000}},  # --quick: about 20 CPU min
}
# --scale paper (for a GPU): the paper's sizes (64x64 frames, batch 32, G 512 and critic 64 channels) and its
# 100,000 iterations as the default length (--steps train=N for what fits), the measured training choices of
# TRAIN kept (the paper's optimizer and inits failed at CPU scale, above), one digit (two touch too often for
# the digit target), bf16 autocast and torch.compile on CUDA, 256 evaluation clips and the real floor. Not run
# yet: no GPU has been lent.
PAPER_SCALE: dict[str, Any] = {
    "eval_clips": 256,
    "floor": True,
    "train": {"max_steps": 100000, "batch_size": 32, "frame_size": 0, "gen_ch": 512, "critic_ch": 64},
}
STAGES = ("train",)
TRAIN: dict[str, Any] = {  # both modes (measured choices, see the module docstring; the paper's in comments)
    "batch_size": 8,  # paper 32
    "frame_size": 32,  # paper 64 (the store's): 14-px digits, about a third of the CPU time per step
    "gen_ch": 128,  # paper 512 (G1 4x4 bottom); 64 leaves G1 4 channels at 64x64
    "critic_ch": 16,  # paper 64
    "optimizer": "adam",  # paper RMSprop
    "lr": 2e-4,  # paper 5e-5
    "critic_batch": "joint",  # paper (code): separate forwards
    "critic_init": "orthogonal",  # paper U(-0.01, 0.01)
    "gen_init": "pytorch",  # paper U(-0.01, 0.01): G1 then stayed <= 0 (no white strokes) for 600 steps
}


def _store_dir(ctx: Context, what: Any) -> Path:
    """Named by the generator's version too: a store of an older generator (another datagen job, which
    datagen refuses to resume into) is left alone and a new one is made beside it."""
    from datagen.api import generator_version

    v = generator_version("mnist")
    return ctx.data_dir / f"mnist{STORE['digits']}-v{v}-{STORE['size']}px-{STORE['frames']}f-{what}"


def make_store(ctx: Context) -> Path:
    """The Moving MNIST store: made once through datagen's API; a later run resumes the same job, which checks
    every shard's size and sha256 against the manifest and remakes a bad one."""
    from datagen.api import make_store as make

    out = _store_dir(ctx, STORE_CLIPS)
    make(out, "mnist", STORE, n=STORE_CLIPS, seed=STORE_SEED, resume=True)
    return out


def test_store(ctx: Context) -> Path:
    """Held-out clips for GAM's test ratio: the built-in *test* digits (never trained on), 1,000 clips."""
    from datagen.api import make_store as make

    out = _store_dir(ctx, "test")
    params = {**STORE, "source": {"kind": "builtin", "split": "test"}}
    make(out, "mnist", params, n=1000, seed=STORE_SEED, resume=True)
    return out


def scale_of(ctx: Context) -> dict[str, Any]:
    """Evaluation clips, floor and training fields of this run's scale and mode (--steps applied)."""
    scale = PAPER_SCALE if ctx.scale == "paper" else CPU_SCALE[ctx.quick]
    train = {**TRAIN, **scale["train"]}
    train["max_steps"] = ctx.stage_steps("train", train["max_steps"])
    if train["max_steps"] < 2:
        raise ValueError("--steps train: at least 2 (GAM battles the final model against its half-way one)")
    return {**scale, "train": train}


def train_config(ctx: Context, store: Path) -> Any:
    """The TGANConfig of this mode: the paper preset with the fields of TRAIN and of the scale."""
    from recipes.train_tgan import TGANConfig

    train = scale_of(ctx)["train"]
    steps = train["max_steps"]
    return TGANConfig(
        data=str(store),
        out_dir=str(ctx.out / "run"),
        device=ctx.device,
        seed=ctx.seed,
        epochs=10**6,  # max_steps ends the run
        frames=FRAMES,
        log_every=max(1, steps // 60),
        sample_every=steps // 2,
        ckpt_every=steps // 2,  # the half-way checkpoint is GAM's opponent
        resume="auto",  # a rerun into the same --out goes on from the last checkpoint (or re-evaluates)
        precision=ctx.precision,
        compile=ctx.cuda and ctx.compile,
        **train,
    )


def shuffled_frames(videos: np.ndarray, seed: int) -> np.ndarray:
    """Every clip (N, C, T, H, W) with its frames in a random order of its own (never the identity)."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(videos)
    t = videos.shape[2]
    for i, clip in enumerate(videos):
        order = np.arange(t)
        while np.array_equal(order, np.arange(t)):
            order = rng.permutation(t)
        out[i] = clip[:, order]
    return out


def evaluation_sets(ctx: Context, store: Path, cfg: Any, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clips (N, C, T, H, W) in [-1, 1]: FVD's real reference, and the sets scored against it (the trained and
    untrained generators' clips and the real baselines), every one at the store's size (what FVD and the digit
    CNN see).

    Real clips come from the store's seeded shuffle: the first `n` are the reference, the next `n` (disjoint)
    the baselines, whole (the floor) or with their frames shuffled. Every real set is taken to the model's
    frame size and back (`at_model_size`), as the training clips are: a 32x32 model is compared with the
    32x32 data it learns, not charged for the resolution the protocol took away. What that resolution costs
    is reported as its own set (`heldout_real_full_size`: full-size held-out clips against the reference)."""
    from recipes.common.ckpt import latest_checkpoint
    from recipes.metrics.sources import StoreVideos
    from recipes.train_tgan import build_models, generate_videos, load_models, upsample

    device = torch.device("cuda" if ctx.cuda else "cpu")
    trained, _, _ = load_models(latest_checkpoint(cfg.out_dir), device)
    torch.manual_seed(cfg.seed)  # the recipe's initialisation: start_run seeds seed + rank 0 before building
    size = cfg.frame_size or STORE["size"]  # the model's
    untrained, _ = build_models(cfg, channels=1, size=size)
    real = StoreVideos(store).clips(2 * n, FRAMES, seed=ctx.seed).numpy()
    small = at_model_size(real, size)

    def fake(gen: torch.nn.Module) -> np.ndarray:
        return upsample(generate_videos(gen.to(device), n, seed=ctx.seed, device=device), STORE["size"])

    sets = {
        "trained": fake(trained),
        "untrained": fake(untrained),
        "shuffled_real": shuffled_frames(small[n:], ctx.seed),
    }
    if scale_of(ctx)["floor"]:
        sets["heldout_real"] = small[n:]
    if size != STORE["size"]:
        sets["heldout_real_full_size"] = real[n:]
    return small[:n], sets


def at_model_size(videos: np.ndarray, size: int) -> np.ndarray:
    """Clips at the store's size area-averaged to the model's `size` (as the training clips are) and resized
    back bilinearly (as its samples are); unchanged when the model works at the store's size."""
    from recipes.train_tgan import downsample, upsample

    if size == videos.shape[-1]:
        return videos
    return upsample(downsample(torch.from_numpy(videos), size).numpy(), videos.shape[-1])


def score_sets(ctx: Context, reference: np.ndarray, sets: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """FVD of every set against the real reference; the digit metrics of every set and of the reference."""
    from recipes.evaluate import evaluate, write_npy_atomic

    fvd_name, digits_name = f"fvd{n}_{FRAMES}f", f"mnist_identity{n}_{FRAMES}f"
    fvd, digits = {}, {}
    (ctx.out / "eval").mkdir(parents=True, exist_ok=True)
    real = write_npy_atomic(ctx.out / "eval" / "reference.npy", reference)
    for name, videos in sets.items():
        out = ctx.out / "eval" / name
        out.mkdir(parents=True, exist_ok=True)
        fake = write_npy_atomic(out / "samples.npy", videos)
        report = evaluate(
            {"real": real, "fake": fake},
            [fvd_name, digits_name],
            out,
            seed=ctx.seed,
            device=ctx.device,
            extra={"n_digits": STORE["digits"]},  # an array reference carries no store params
        )
        results = {m["metric"]: m["results"] for m in report["metrics"]}
        fvd[name] = results[fvd_name][fvd_name]
        digits[name] = _strip(results[digits_name], "fake/")
        digits["real"] = _strip(results[digits_name], "real/")
    fvd["ratio_to_untrained"] = fvd["trained"] / fvd["untrained"]
    fvd["ratio_to_shuffled"] = fvd["trained"] / fvd["shuffled_real"]
    return {"fvd": fvd, "digits": digits}


def _strip(results: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)}


def gam_vs_halfway(ctx: Context, cfg: Any, n: int) -> dict[str, Any]:
    """GAM of the final model (A) against its half-way checkpoint (B) on held-out test-digit clips."""
    from recipes.common.ckpt import checkpoint_path
    from recipes.gam import gam_score, load_tgan, real_clips, verdict
    from recipes.train_tgan import downsample

    device = torch.device("cuda" if ctx.cuda else "cpu")
    final, _ = load_tgan(checkpoint_path(Path(cfg.out_dir), cfg.max_steps), device)
    half, _ = load_tgan(checkpoint_path(Path(cfg.out_dir), cfg.ckpt_every), device)
    size = cfg.frame_size or STORE["size"]
    clips = (downsample(c, size) for c in real_clips(str(test_store(ctx)), FRAMES, 32, device, 2 * n))
    res = gam_score(final, half, clips, n_samples=2 * n, seed=ctx.seed)
    return {
        "score": res.score,
        "winner": {"a": "final", "b": "half-way", "tie": "none"}[res.winner],
        "verdict": verdict(res, "final", "half-way"),
        "r_test": res.r_test,
        "p_test": res.p_test,
        "error_sample": list(res.error_sample),
        "error_test": list(res.error_test),
    }


def comparison_png(ctx: Context, sets: dict[str, np.ndarray], rows: int = 3) -> Path:
    """One PNG: `rows` clips each of shuffled real, untrained and trained, frames left to right."""
    from recipes.common.samples import save_image_grid

    order = ("shuffled_real", "untrained", "trained")  # the shuffled clips' frames are real frames
    clips = np.concatenate([sets[k][:rows] for k in order])  # (3 * rows, C, T, H, W)
    n, c, t, h, w = clips.shape
    frames = torch.from_numpy(clips).transpose(1, 2).reshape(n * t, c, h, w)
    return save_image_grid(frames, ctx.out / "samples_shuffled-real_untrained_trained.png", nrow=t)


def run_tgan_mnist(ctx: Context) -> Outcome:
    import time

    from recipes.train_tgan import main

    store = make_store(ctx)
    cfg = train_config(ctx, store)
    n = scale_of(ctx)["eval_clips"]
    cpu0 = time.process_time()
    timing: dict[str, Any] = {}
    resumed_at = check_resumable(cfg)
    last = timed(timing, "train", lambda: main(cfg))
    reference, sets = evaluation_sets(ctx, store, cfg, n)
    metrics = score_sets(ctx, reference, sets, n)
    metrics["reference_frame_size"] = cfg.frame_size or STORE["size"]
    metrics["gam_vs_halfway"] = gam_vs_halfway(ctx, cfg, n)
    metrics["train_last"] = last
    files = {"comparison": comparison_png(ctx, sets)}
    samples = ctx.out / "run" / "samples"
    for kind, pattern in (("gif", "step-*[0-9].gif"), ("png", "step-*.png"), ("interp", "step-*-interp.gif")):
        found = sorted(samples.glob(pattern))
        if found:
            files[f"samples_{kind}"] = found[-1]
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out_dir", "data")}
    (ctx.out / "protocol_config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    steps = {
        "train": cfg.max_steps,
        "resumed_at": resumed_at,  # the seconds below cover the steps after it
        "train_seconds": timing["train"]["wall_s"],
        "train_cpu_seconds": timing["train"]["cpu_s"],
        "eval_cpu_seconds": round(time.process_time() - cpu0 - timing["train"]["cpu_s"], 1),
        **({"gpu_peak_mib": timing["train"]["gpu_peak_mib"]} if "gpu_peak_mib" in timing["train"] else {}),
    }
    return Outcome(
        steps=steps, metrics=metrics, files={k: str(Path(v).relative_to(ctx.out)) for k, v in files.items()}
    )


FULL_TARGETS = {"fvd_vs_untrained": 0.5, "fvd_vs_shuffled": 0.5, "confident_frames": 0.6}
QUICK_TARGETS = {"fvd_vs_untrained": 0.5, "fvd_vs_shuffled": 1.0, "confident_frames": 0.3}


def targets(quick: bool) -> dict[str, Target]:
    """The issue's targets (full) or the stated weaker ones (--quick)."""
    t = QUICK_TARGETS if quick else FULL_TARGETS
    why = "issue #15" if not quick else "issue #15, --quick: weaker, stated"
    return {
        "fvd_vs_untrained": Target(
            "fvd.ratio_to_untrained", "<=", t["fvd_vs_untrained"], f"{why}: FVD <= x of the untrained model's"
        ),
        "fvd_vs_shuffled": Target(
            "fvd.ratio_to_shuffled", "<=", t["fvd_vs_shuffled"], f"{why}: FVD <= x of frame-shuffled real"
        ),
        "confident_frames": Target(
            "digits.trained.confident_frame_fraction",
            ">=",
            t["confident_frames"],
            f"{why}: digit classifier max softmax >= {CONFIDENT} on this fraction of generated frames",
        ),
    }


register(
    Protocol(
        name="tgan-mnist",
        summary="TGAN-SVC on 1-digit Moving MNIST 64x64x16: FVD vs untrained and shuffled real, digit CNN",
        run=run_tgan_mnist,
        targets=targets,
        stages=STAGES,
        scales=("cpu", "paper"),
    )
)
