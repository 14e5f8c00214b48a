"""CUP sensing throughput (clips/s per core) and the classical baseline's reconstruction time, same run.

1. sense: `datagen.sense.cup.sense` (operator + Poisson/read noise + quantization) on clips of each config,
   one process, CPU seconds of this process (per-core figures also when others share the machine);
2. end to end: the real `datagen sense cup --workers 0` job over a balls store (read and check each source
   shard, sense, write WebDataset shards, fsync, sha256, manifest), clips per CPU second;
3. baseline: LS + TV by ADMM (`datagen.sense.recon.reconstruct_tv`, 300 iterations, 10 CG steps) per clip,
   and its PSNR against the scene (single view and complementary view).
4. learned: `recipes.train_cup.CupNet` (width 32; timing needs no training) per clip, batch 1 and 16, with
   torch on one thread.

    python bench/bench_cup.py            # ~1 minute
    python bench/bench_cup.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from datagen.api import make_store
from datagen.jobs import run_store_job
from datagen.sense.cup import CupOperator, CupParams, make_mask, sample_rng, scene_of, sense
from datagen.sense.job import cup_job
from datagen.sense.recon import TVConfig, adjoint_estimate, psnr, reconstruct_tv

CONFIGS = [(16, 32, 1), (30, 30, 1), (20, 64, 1), (16, 64, 3)]  # (T, size, channels)


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def bench_sense(t: int, size: int, c: int, n: int, complementary: bool) -> float:
    p = CupParams(complementary=complementary)
    op = CupOperator(make_mask(size, size, p.fill, p.mask_seed), t, p.shear, p.complementary)
    clips = np.random.default_rng(0).integers(0, 256, (n, t, size, size, c), dtype=np.uint8)
    seconds = cpu(lambda: [sense(v, op, p, sample_rng(0, i)) for i, v in enumerate(clips)])
    return n / seconds


def bench_store(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_store(src, "balls", {"frames": 30, "size": 30}, n=n, seed=0, shard_size=500)
        job = cup_job(Path(tmp) / "cup", src, {}, seed=0)
        return n / cpu(lambda: run_store_job(job, workers=0))


def bench_baseline(t: int, size: int, clips: int, iters: int) -> list[tuple[str, float, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_store(src, "balls", {"frames": t, "size": size}, n=clips, seed=0, shard_size=clips)
        from datagen.store.readers import iter_samples

        scenes = [scene_of(s.video) for s in iter_samples(src / "balls-000000.tar", "wds")]
    cfg = TVConfig(lam=0.01, rho=0.1, iters=iters, cg_iters=10)
    for complementary in (False, True):
        op = CupOperator(make_mask(size, size, 0.5, 0), t, 1, complementary)
        got, naive, seconds = [], [], 0.0
        for x in scenes:
            y = op.forward(x)
            start = time.process_time()
            est = reconstruct_tv(y, op, cfg)
            seconds += time.process_time() - start
            got.append(psnr(est, x))
            naive.append(psnr(adjoint_estimate(y, op, x), x))
        views = "2 views" if complementary else "1 view"
        rows.append((views, seconds / len(scenes), float(np.mean(got)), float(np.mean(naive))))
    return rows


def bench_learned(t: int, size: int, complementary: bool, batch: int, rounds: int) -> float:
    """Seconds per clip of the U-Net reconstruction (forward only, no grad), one CPU thread."""
    import torch

    from recipes.train_cup import CupNet

    torch.set_num_threads(1)
    p = CupParams(complementary=complementary)
    net = CupNet(p, make_mask(size, size, p.fill, p.mask_seed), t, width=32).eval()
    y = torch.rand(batch, p.views, size + (t - 1) * p.shear, size) * p.scale
    with torch.no_grad():
        net(y)
        seconds = cpu(lambda: [net(y) for _ in range(rounds)])
    return seconds / (rounds * batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 50 if args.quick else 400
    print(
        f"# {platform.processor() or platform.machine()}, numpy {np.__version__}, CPU seconds of one process"
    )
    print("sense (T, size, C)      1 view clips/s   2 views clips/s")
    for t, size, c in CONFIGS:
        one, two = bench_sense(t, size, c, n, False), bench_sense(t, size, c, n, True)
        print(f"  ({t:2d}, {size:2d}, {c})          {one:10.0f}       {two:10.0f}")
    store_n = 100 if args.quick else 1000
    print(
        f"store job (balls 30x30, 30 frames, {store_n} clips, wds): {bench_store(store_n):.0f} clips/s/core"
    )
    clips, iters = (2, 100) if args.quick else (8, 300)
    print(f"baseline LS+TV ADMM ({iters} it, 10 CG) on balls 16 frames 32x32, noiseless, {clips} clips:")
    for views, seconds, tv, naive in bench_baseline(16, 32, clips, iters):
        print(f"  {views}: {seconds:.2f} s/clip, PSNR {tv:.1f} dB (best-scaled adjoint {naive:.1f} dB)")
    rounds = 2 if args.quick else 10
    print("learned U-Net (width 32) on 16 frames 32x32, one thread, forward only:")
    for complementary in (False, True):
        one, many = (bench_learned(16, 32, complementary, b, rounds) for b in (1, 16))
        views = "2 views" if complementary else "1 view"
        print(f"  {views}: {one * 1e3:.1f} ms/clip at batch 1, {many * 1e3:.1f} ms/clip at batch 16")


if __name__ == "__main__":
    main()
