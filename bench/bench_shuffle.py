"""Shuffle quality against throughput: the block-local order and the interleaved one, in the same run.

A batch cut from a block-local block (``interleave=1``: ``block_size`` consecutive stream samples) holds
clips of one or two shards; consecutive clips of a stabilized video sit side by side in a shard, so such a
batch is correlated. The interleaved order (``interleave=12``, the default) builds every block from 12
pieces of consecutive samples taken all over the rank's epoch and emits them stratified, so a batch holds
(nearly) every piece. Per order this reports, over ``--epochs`` shuffled epochs of a store of ``--shards``
shards:

- distinct shards per batch (mean, and the 5th percentile) of ``--batch-size`` clips,
- clips/s (best of ``--repeat`` timed runs, the orders taking turns: :func:`bench_loader.best_times`) and
  CPU seconds per 10,000 clips (main process plus its DataLoader workers, median),

through ``make_loader(..., num_workers=--workers)`` yielding uint8 CPU batches from a balls-like store (30
frames of 30x30, 1 channel; ``--shape mnist_64x64``: 20 frames of 64x64), WebDataset or ``--format hdf5``, in
the page cache. Target (issue #18): >= 8 distinct shards per batch of 32 by default at >= 0.8 of the
block-local order's clips/s. Usage::

    nice python bench/bench_shuffle.py [--shards 48] [--shard-size 250] [--epochs 3] [--repeat 5]
        [--shape balls_30x30|mnist_64x64] [--format wds|hdf5] [--orders 1 12 ...] [--mix] [--json out.json]

Measured 2026-12-06 on the 2-core machine shared with training jobs (load average 4-5), uint8 batches of 32, 2
workers, 48 shards of 250 unless said; five runs per store (three at the defaults, taking turns with the code
before commit 16b80c4, two with ``--repeat 9 --epochs 6``; MNIST: one or two more at the end; 24 x 200: three;
mix: one). Wall clips/s swung both ways with the load (0.5-1.2 for the same code); CPU-s per clip (main
process plus workers) is the comparable figure, and "by CPU" is clips per CPU-second against the block-local
order's (the output's last column):

===================  ============  =============  ================  =========================  =========
store                shards/batch  (block-local)  clips/s vs local  CPU-s/10k (block-local)    by CPU
===================  ============  =============  ================  =========================  =========
balls wds            11.9          1.9            0.49-1.17         0.093-0.098 (0.087-0.098)  0.94-1.02
balls hdf5           11.9          1.9            0.65-1.19         0.085-0.100 (0.083-0.096)  0.92-1.00
MNIST wds            11.9          1.9            0.58-1.05         0.192-0.239 (0.162-0.209)  0.84-0.91
MNIST hdf5           11.9          1.9            0.74-1.22         0.216-0.230 (0.176-0.196)  0.82-0.87
MNIST wds, 24 x 200  10.6          2.1            0.99-1.05         0.223-0.236 (0.205-0.229)  0.92-0.99
mix 1:1 (balls wds)  13.9          -              0.43 (one run)    0.138 (0.110)              0.80
===================  ============  =============  ================  =========================  =========

Before 16b80c4, in the same sessions: MNIST wds 0.72-0.76 by CPU (24 x 200: 0.75-0.80), MNIST hdf5
0.81-0.85, balls wds 0.89-0.94, balls hdf5 0.91-0.99. MNIST-size clips (82 KB) get blocks of 204 (the
16 MiB cap), so pieces of 17 clips: the interleaved order reads about 6x as many runs, and what a run costs
besides its bytes decides the ratio. A one-clip run of an 82 KB clip took 56 us (tar) / 33 us (HDF5) of CPU
before, 24 / 18 us after (``fill_run`` alone, worker-free). ``block_size=409`` (32 MiB blocks) also helps
(0.95 before), at twice the ring memory. Left per extra run, measured in the workers: 45-60 us of CPU
(``pipelines.dataset``'s per-run loop is now about as large as ``fill_run``'s own fixed cost).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import SHAPES, Ours, best_times, raw_read, write_store  # noqa: E402

from pipelines import VideoDataset, make_loader, mix  # noqa: E402
from pipelines.world import World  # noqa: E402

ORDERS = ["1", "12"]  # interleave[:block_size] per order (block: the default); the first is the baseline


class Mixed(Ours):
    """Epochs of ``pipelines.mix`` over two datasets of the store (seeds 0 and 1), ``clips`` samples each."""

    def __init__(self, store: Path, fmt: str, batch_size: int, workers: int, clips: int) -> None:
        parts = [VideoDataset(store, format=fmt, seed=seed, world=World()) for seed in (0, 1)]
        self.loader = make_loader(
            mix(parts, [1, 1], epoch_size=clips), batch_size, workers, dtype=torch.uint8
        )
        self.epoch = 0


def distinct_shards(loader: Ours, shard_size: int, epochs: int) -> list[int]:
    """Distinct source shards of every full batch over ``epochs`` epochs (keys are global clip indices)."""
    counts = []
    for _ in range(epochs):
        loader.loader.set_epoch(loader.epoch)
        loader.epoch += 1
        for batch in loader.loader:
            if len(batch["key"]) == loader.loader.batch_size:
                sources = batch["source"].tolist() if "source" in batch else [0] * len(batch["key"])
                pairs = zip(sources, batch["key"], strict=True)
                counts.append(len({(source, int(key) // shard_size) for source, key in pairs}))
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="back-to-back epochs per timed run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per order (the best counts)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="balls_30x30")
    parser.add_argument("--format", choices=["wds", "hdf5"], default="wds")
    parser.add_argument("--orders", nargs="+", default=ORDERS, help="interleave[:block_size] each")
    parser.add_argument(
        "--mix", action="store_true", help="also: the store mixed with itself 1:1 (pipelines.mix)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wall0, cpu0 = time.perf_counter(), _cpu_all()
    clips = args.shards * args.shard_size
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp, "store"), SHAPES[args.shape], clips, args.shard_size)
        raw_read(sorted(store.glob("*.tar" if args.format == "wds" else "*.h5")))  # warm the page cache
        loaders = {}
        for spec in args.orders:
            k, _, block = spec.partition(":")
            kw = {"interleave": int(k), "block_size": int(block) if block else None}
            loader = Ours(store, args.format, args.batch_size, args.workers, torch.uint8, **kw)
            label = "block-local" if k == "1" else "interleaved"
            loaders[f"{label} k={k} block={loader.loader.dataset.block_size}"] = loader
        if args.mix:
            loaders["mix of 2 sources 1:1, k=12"] = Mixed(
                store, args.format, args.batch_size, args.workers, clips
            )
        timed = best_times(loaders, args.repeat, args.epochs)  # type: ignore[arg-type]  (starts the workers)
        shards = {label: distinct_shards(lo, args.shard_size, args.epochs) for label, lo in loaders.items()}
        for label, (seconds, items, cpu) in timed.items():
            assert items == clips, (label, items)
            results[label] = {
                "distinct_shards_per_batch": float(np.mean(shards[label])),
                "distinct_shards_p5": float(np.percentile(shards[label], 5)),
                "clips_per_s": items / seconds,
                "cpu_s_per_10k": cpu * 10_000 / clips,
            }
        for loader in loaders.values():
            loader.loader.close()
    base = results[next(iter(results))]
    print(
        f"\n{clips} clips of {SHAPES[args.shape]} uint8 in {args.shards} {args.format} shards of "
        f"{args.shard_size}, batch {args.batch_size}, {args.workers} workers"
    )
    print(
        f"  {'order':<30}{'shards/batch':>13}{'p5':>5}{'clips/s':>10}{'vs local':>10}{'CPU-s/10k':>11}"
        f"{'by CPU':>8}"
    )
    for label, row in results.items():
        # "by CPU": throughput per CPU-second against the first order's (steadier than wall on a busy machine)
        print(
            f"  {label:<30}{row['distinct_shards_per_batch']:>13.2f}{row['distinct_shards_p5']:>5.0f}"
            f"{row['clips_per_s']:>10.0f}{row['clips_per_s'] / base['clips_per_s']:>10.2f}"
            f"{row['cpu_s_per_10k']:>11.3f}{base['cpu_s_per_10k'] / row['cpu_s_per_10k']:>8.2f}"
        )
    print(f"  bench total: {time.perf_counter() - wall0:.0f} s wall, {_cpu_all() - cpu0:.0f} CPU-s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def _cpu_all() -> float:
    """CPU seconds of this process and its reaped children (the DataLoader workers once they exited)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
