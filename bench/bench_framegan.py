"""FrameGAN training steps/s: K discriminators as grouped convolutions (`--d-impl batched`), the same with
the last conv as a dot product (`batched_dot`), that with R1's graph on the real half only (`--r1-split`,
timed when `--r1-gamma` > 0), a per-discriminator Python loop (`loop`), and with `--compile` the dot head with
the generators through torch.compile (G_F in stage 1; G_V and the frozen G_F in stage 2; D stays eager, as
the recipe keeps it with R1).

Same run, same weights: `LoopDiscriminators.from_batched` copies the batched discriminators' weights into K
separate modules (the straightforward reference: what the authors' code does with a list of K models and K
optimizers); the dot-head discriminators load the batched ones' state. All run the recipe's own `train_step`
(one D update of all K, one G update) on synthetic batches in [-1, 1] (the loader is not measured), with R1
if `--r1-gamma` > 0 (the CPU protocols' stage 1 uses 10, stage 2 1). Repeats alternate between them so a
shared machine slows all alike; the figure is the median over repeats.

    python bench/bench_framegan.py                       # CPU: paper K and batch, narrow layers (see --help)
    python bench/bench_framegan.py --device cuda --paper-widths --repeats 5
    python bench/bench_framegan.py --stage 1 --k1 8 --d-width 32 --r1-gamma 10   # framegan-3ball's stage 1

Prints one JSON line per stage: steps/s of each, the speed-ups (batched over loop, dot head over batched,
dot head with the split R1 graph over the dot head, compiled generators over the dot head), and the largest
difference of D outputs from the batched ones at the shared initial weights.

    python bench/bench_framegan.py --stage 2 --k2 8 --d-width 8 --gv-width 64 --r1-gamma 1 --compile
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
    """(fake_fn, it through torch.compile, trainable generator, {impl: D with the same weights}, real)."""
    torch.manual_seed(0)
    if stage == 1:
        g = FrameGenerator(width=args.g_width).to(device)
        fake_fn = g
        compiled_fn = torch.compile(g)
        d, dot = (frame_discriminators(args.k1, width=args.d_width, dot_head=f) for f in (False, True))
        real = torch.rand(args.batch1, 1, 30, 30, device=device) * 2 - 1
    else:
        gf = freeze(FrameGenerator(width=args.g_width)).to(device)
        w = args.gv_width
        gv = VideoGenerator(hidden=(w, 2 * w, 4 * w), output="sphere").to(device)
        gf_c, gv_c = torch.compile(gf), torch.compile(gv)

        def fake_fn(z):
            return render_video(gf, gv(z))

        def compiled_fn(z):
            return render_video(gf_c, gv_c(z))

        g = gv
        d, dot = (video_discriminators(args.k2, width=args.d_width, dot_head=f) for f in (False, True))
        real = torch.rand(args.batch2, 1, 30, 30, 30, device=device) * 2 - 1
    d, dot = d.to(device), dot.to(device)
    dot.load_state_dict(d.state_dict())
    impls = {"batched": d, "batched_dot": dot, "loop": LoopDiscriminators.from_batched(d).to(device)}
    return fake_fn, compiled_fn, g, impls, real


def _run(fake_fn, g, d, real, steps: int, device: torch.device, r1_gamma: float, r1_split: bool) -> float:
    """Seconds per training step over `steps` steps (fresh optimizers each call, as in a new run)."""
    opt_g = torch.optim.RMSprop(g.parameters(), lr=1e-4)
    opt_d = torch.optim.RMSprop(d.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    z = torch.randn(real.shape[0], 100, device=device)
    kw = {
        "g_loss": "hypervolume",
        "nadir_slack": 1.5,
        "scaler": scaler,
        "autocast": contextlib.nullcontext,
        "r1_gamma": r1_gamma,
        "r1_split": r1_split,
    }
    train_step(fake_fn, d, opt_g, opt_d, real, z, **kw)  # warm-up (allocations, cuDNN choice)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(fake_fn, d, opt_g, opt_d, real, z, **kw)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def bench_stage(stage: int, args: argparse.Namespace, device: torch.device) -> dict:
    fake_fn, compiled_fn, g, impls, real = _setup(stage, args, device)
    with torch.no_grad():
        base = impls["batched"](real)
        diffs = {name: (d(real) - base).abs().max().item() for name, d in impls.items() if name != "batched"}
    g_state = {k: v.clone() for k, v in g.state_dict().items()}
    runs = {name: (d, False, fake_fn) for name, d in impls.items()}
    if args.r1_gamma > 0:
        runs["batched_dot_r1_split"] = (impls["batched_dot"], True, fake_fn)
    if args.compile:  # the compile itself happens in the first call's warm-up step, outside the timing
        runs["batched_dot_compiled_g"] = (impls["batched_dot"], False, compiled_fn)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternate, so load changes on a shared machine hit all alike
        for name, (d, split, fn) in runs.items():
            g.load_state_dict(g_state)
            times[name].append(_run(fn, g, d, real, args.steps, device, args.r1_gamma, split))
    rate = {name: round(1 / statistics.median(t), 3) for name, t in times.items()}
    k = impls["batched"].k
    return {
        "bench": "framegan_train_step",
        "stage": stage,
        "k": k,
        "batch": real.shape[0],
        "d_width": args.d_width,
        "g_width": args.g_width,
        **({"gv_width": args.gv_width} if stage == 2 else {}),
        "device": str(device),
        "r1_gamma": args.r1_gamma,
        **{f"steps_per_s_{name}": r for name, r in rate.items()},
        "speedup_batched_vs_loop": round(rate["batched"] / rate["loop"], 2),
        "speedup_dot_vs_batched": round(rate["batched_dot"] / rate["batched"], 2),
        **(
            {"speedup_r1_split_vs_dot": round(rate["batched_dot_r1_split"] / rate["batched_dot"], 2)}
            if "batched_dot_r1_split" in rate
            else {}
        ),
        **(
            {"speedup_compiled_g_vs_dot": round(rate["batched_dot_compiled_g"] / rate["batched_dot"], 2)}
            if "batched_dot_compiled_g" in rate
            else {}
        ),
        "max_abs_output_diff_at_init": diffs,
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
    parser.add_argument("--gv-width", type=int, default=512, help="G_V's first FC width (paper 512)")
    parser.add_argument("--compile", action="store_true", help="also time the generators compiled")
    parser.add_argument("--paper-widths", action="store_true", help="d-width 256, g-width 1024 (GPU)")
    parser.add_argument("--r1-gamma", type=float, default=0.0, help="R1 weight (protocols: 10 / 1)")
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
