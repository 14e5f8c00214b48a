"""FrameGAN training steps/s: K discriminators as grouped convolutions vs a per-discriminator Python loop.

Same run, same weights: `LoopDiscriminators.from_batched` copies the batched discriminators' weights into K
separate modules (the straightforward reference: what the authors' code does with a list of K models and K
optimizers). Both run the recipe's own `train_step` (one D update of all K, one G update) on synthetic
batches in [-1, 1] (the loader is not measured). Repeats alternate between the two so a shared machine slows
both alike; the figure is the median over repeats.

    python bench/bench_framegan.py                       # CPU: paper K and batch, narrow layers (see --help)
    python bench/bench_framegan.py --device cuda --paper-widths --repeats 5

Prints one JSON line per stage: steps/s batched, steps/s loop, the speed-up (batched steps/s over loop
steps/s), and the largest difference of D outputs between the two at the shared initial weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch

from recipes.models.framegan import (
    FrameGenerator,
    LoopDiscriminators,
    VideoGenerator,
    frame_discriminators,
    freeze,
    render_video,
    video_discriminators,
)
from recipes.train_framegan import train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(stage: int, args: argparse.Namespace, device: torch.device):
    """(fake_fn, trainable generator, batched D, loop D with the same weights, real batch)."""
    torch.manual_seed(0)
    if stage == 1:
        g = FrameGenerator(width=args.g_width).to(device)
        fake_fn = g
        d = frame_discriminators(args.k1, width=args.d_width).to(device)
        real = torch.rand(args.batch1, 1, 30, 30, device=device) * 2 - 1
    else:
        gf = freeze(FrameGenerator(width=args.g_width)).to(device)
        gv = VideoGenerator().to(device)

        def fake_fn(z):
            return render_video(gf, gv(z))

        g = gv
        d = video_discriminators(args.k2, width=args.d_width).to(device)
        real = torch.rand(args.batch2, 1, 30, 30, 30, device=device) * 2 - 1
    loop = LoopDiscriminators.from_batched(d).to(device)
    return fake_fn, g, d, loop, real


def _run(fake_fn, g, d, real, steps: int, device: torch.device) -> float:
    """Seconds per training step over `steps` steps (fresh optimizers each call, as in a new run)."""
    opt_g = torch.optim.RMSprop(g.parameters(), lr=1e-4)
    opt_d = torch.optim.RMSprop(d.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    z = torch.randn(real.shape[0], 100, device=device)
    kw = {"g_loss": "hypervolume", "nadir_slack": 1.5, "scaler": scaler, "autocast": contextlib.nullcontext}
    train_step(fake_fn, d, opt_g, opt_d, real, z, **kw)  # warm-up (allocations, cuDNN choice)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(fake_fn, d, opt_g, opt_d, real, z, **kw)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def bench_stage(stage: int, args: argparse.Namespace, device: torch.device) -> dict:
    fake_fn, g, d, loop, real = _setup(stage, args, device)
    with torch.no_grad():
        same_init = (d(real) - loop(real)).abs().max().item()
    g_state = {k: v.clone() for k, v in g.state_dict().items()}
    batched_t, loop_t = [], []
    for _ in range(args.repeats):  # alternate, so load changes on a shared machine hit both alike
        g.load_state_dict(g_state)
        batched_t.append(_run(fake_fn, g, d, real, args.steps, device))
        g.load_state_dict(g_state)
        loop_t.append(_run(fake_fn, g, loop, real, args.steps, device))
    b, lp = statistics.median(batched_t), statistics.median(loop_t)
    k = d.k
    return {
        "bench": "framegan_train_step",
        "stage": stage,
        "k": k,
        "batch": real.shape[0],
        "d_width": args.d_width,
        "g_width": args.g_width,
        "device": str(device),
        "steps_per_s_batched": round(1 / b, 3),
        "steps_per_s_loop": round(1 / lp, 3),
        "speedup_batched_vs_loop": round(lp / b, 2),
        "max_abs_output_diff_at_init": same_init,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stage", type=int, choices=[1, 2], default=None, help="default: both")
    parser.add_argument("--k1", type=int, default=48, help="stage 1 discriminators (paper 48)")
    parser.add_argument("--k2", type=int, default=16, help="stage 2 discriminators (paper 16)")
    parser.add_argument("--batch1", type=int, default=64, help="stage 1 batch (paper 64)")
    parser.add_argument("--batch2", type=int, default=8, help="stage 2 batch (paper 8)")
    parser.add_argument("--d-width", type=int, default=16, help="first D conv channels (paper 256)")
    parser.add_argument("--g-width", type=int, default=128, help="G_F width (paper 1024)")
    parser.add_argument("--paper-widths", action="store_true", help="d-width 256, g-width 1024 (GPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.paper_widths:
        args.d_width, args.g_width = 256, 1024
    device = torch.device(args.device)
    for stage in [args.stage] if args.stage else [1, 2]:
        print(json.dumps(bench_stage(stage, args, device)), flush=True)


if __name__ == "__main__":
    main()
