"""Loader throughput against two straightforward references, in the same run on the same shard bytes.

For a balls-like store (30 frames of 30x30, 1 channel) and a Moving-MNIST-like store (20 frames of 64x64), in
both formats, it measures clips/s and MB/s (uint8 clip bytes delivered) of:

- raw: sequential ``readinto`` of every shard file into one buffer (the bytes only, no parsing): the ceiling,
- ours: ``make_loader(VideoDataset(store), batch_size, num_workers=2)`` yielding uint8 batches on the CPU
  (the float conversion belongs to the device in training; ``--float`` adds a CPU float32 run),
  one shuffled epoch per call (``set_epoch``),
- ours, shard list (tar only): the same over the list of tar paths without the manifest (``count_scan``),
  i.e. clip shape unknown until read (the generic read path),
- plain webdataset (tar only): ``WebDataset(urls, shardshuffle=False).decode().to_tuple("video.npy")``
  batched in the workers with webdataset's default collation, through ``WebLoader`` with 2 workers.

Besides clips/s it reports CPU seconds per 10,000 clips (main process plus its DataLoader workers, read from
Linux's ``/proc``; median over the timed runs): on a shared machine CPU time varies far less than wall time.

Loaders are made once and timed over ``--epochs`` back-to-back epochs (raw: as many passes), as training
runs them, with persistent DataLoader workers in both; the figure is the best of ``--repeat`` such runs,
the methods taking turns (see ``best_times``). Sustained rates, not single epochs: our workers read the
next epoch's first blocks while the last ones are consumed, which a lone timed epoch would be credited for
free; each of our runs starts from a reset worker stream instead, paying that once. Targets: ours >= 50%
of raw, and faster than plain webdataset. The page cache is warmed first so every method reads from
memory. Usage::

    python bench/bench_loader.py [--clips 2000] [--epochs 5] [--repeat 5] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from datagen.store.manifest import build_manifest, shard_name, write_manifest, write_shard
from datagen.store.sample import Sample, sample_key
from pipelines.dataset import VideoDataset
from pipelines.loader import make_loader
from pipelines.world import World

SHAPES = {"balls_30x30": (30, 30, 30, 1), "mnist_64x64": (20, 64, 64, 1)}


def write_store(root: Path, shape: tuple[int, ...], n_clips: int, shard_size: int) -> Path:
    """A store of sparse blob-like clips in both formats, written with the project's shard writers."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for s, start in enumerate(range(0, n_clips, shard_size)):
        stop = min(start + shard_size, n_clips)
        videos = (rng.random((stop - start, *shape)) > 0.9).astype(np.uint8) * 255
        samples = [Sample(sample_key(i), videos[i - start], {"index": i}) for i in range(start, stop)]
        for fmt in ("wds", "hdf5"):
            entries.append(write_shard(root, shard_name("bench", s, fmt), fmt, samples))
    record = {
        "generator": {"name": "bench", "version": "1"},
        "params": {},
        "seed": 0,
        "layout": {
            "n_samples": n_clips,
            "shard_size": shard_size,
            "formats": ["wds", "hdf5"],
            "prefix": "bench",
        },
        "sample": {"video": {"dtype": "uint8", "shape": list(shape), "layout": "THWC"}},
    }
    write_manifest(root, build_manifest(record, entries))
    return root


def raw_read(paths: list[Path]) -> int:
    """Sequential read of every shard's bytes (nothing parsed) into one reused buffer; returns the byte count.

    A fresh 8 MiB ``bytes`` per read measured 2.5 GB/s against 17 GB/s reused on the same cached files (new
    pages are faulted in whenever the allocator hands back memory to the OS), which made this ceiling swing
    7x with the heap's state.
    """
    total = 0
    buffer = bytearray(8 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buffer):
                total += n
    return total


class Ours:
    """Epochs of one loader made once (as in training: later calls are later epochs)."""

    def __init__(
        self, source: Path | list[str], fmt: str, batch_size: int, workers: int, dtype: torch.dtype, **kw
    ) -> None:
        dataset = VideoDataset(source, format=fmt, seed=0, world=World(), **kw)
        self.loader = make_loader(dataset, batch_size, workers, dtype=dtype)
        self.epoch = 0

    def new_run(self) -> None:
        """Skip an epoch number: the next run starts from a reset worker stream, with nothing read ahead."""
        self.epoch += 1

    def __call__(self) -> int:
        self.loader.set_epoch(self.epoch)
        self.epoch += 1
        return sum(batch["video"].shape[0] for batch in self.loader)


def plain_webdataset(paths: list[Path], batch_size: int, workers: int) -> Callable[[], int]:
    """One epoch of a plain webdataset pipeline made once, decoding with its default handlers."""
    pipeline = (
        wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)
        .decode()
        .to_tuple("video.npy")
        .batched(batch_size)
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    return lambda: sum(len(videos) for (videos,) in loader)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SETTLE_S = 0.1  # pause after each timed run: workers finish reading ahead before the next method runs


def best_times(
    methods: dict[str, Callable[[], int]], repeat: int, epochs: int
) -> dict[str, tuple[float, int, float]]:
    """Per method: seconds and items per epoch of its best timed run of ``epochs`` back-to-back calls, and
    the median CPU seconds per epoch over the runs (this process plus the workers the method started).

    After one warm-up run each (which starts the method's workers), the methods take turns, one timed run
    per round for ``repeat`` rounds, so a slow spell of the shared machine falls on all of them alike. A run
    starts from a reset worker stream (``new_run``) and is followed by a pause, so blocks read ahead are
    neither credited to the next run nor compete with the next method.
    """
    workers: dict[str, list[int]] = {}
    for label, fn in methods.items():
        before = set(multiprocessing.active_children())
        for _ in range(epochs):
            fn()
        workers[label] = [p.pid for p in set(multiprocessing.active_children()) - before]
    best = {label: (float("inf"), 0) for label in methods}
    cpu: dict[str, list[float]] = {label: [] for label in methods}
    for _ in range(repeat):
        for label, fn in methods.items():
            getattr(fn, "new_run", lambda: None)()
            pids = workers[label]
            c0 = time.process_time() + sum(map(process_cpu, pids))
            t0 = time.perf_counter()
            items = sum(fn() for _ in range(epochs)) // epochs
            seconds = (time.perf_counter() - t0) / epochs
            cpu[label].append((time.process_time() + sum(map(process_cpu, pids)) - c0) / epochs)
            best[label] = min(best[label], (seconds, items))
            time.sleep(SETTLE_S)
    return {label: (*best[label], statistics.median(cpu[label])) for label in methods}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5, help="back-to-back epochs per timed run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per method (the best counts)")
    parser.add_argument("--float", action="store_true", help="also time float32 [-1, 1] batches on the CPU")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            store = write_store(Path(tmp, name), shape, args.clips, args.shard_size)
            clip_mb = float(np.prod(shape)) / 1e6
            for fmt, ext in (("wds", ".tar"), ("hdf5", ".h5")):
                paths = sorted(store.glob(f"*{ext}"))
                shard_mb = sum(p.stat().st_size for p in paths) / 1e6
                raw_read(paths)  # warm the page cache
                methods: dict[str, Callable[[], int]] = {
                    "raw read": functools.partial(raw_read, paths),
                    "ours uint8": Ours(store, fmt, args.batch_size, args.workers, torch.uint8),
                }
                if args.float:
                    methods["ours float32"] = Ours(store, fmt, args.batch_size, args.workers, torch.float32)
                if fmt == "wds":
                    listed = [str(p) for p in paths]
                    methods["ours, shard list"] = Ours(
                        listed, fmt, args.batch_size, args.workers, torch.uint8, count_scan=True
                    )
                    methods["plain webdataset"] = plain_webdataset(paths, args.batch_size, args.workers)
                rows = {}
                per_10k = 10_000 / args.clips
                for label, (seconds, items, cpu) in best_times(methods, args.repeat, args.epochs).items():
                    if label == "raw read":
                        rows[label] = (args.clips / seconds, shard_mb / seconds, cpu * per_10k)
                        continue
                    assert items == args.clips, (label, items)
                    rows[label] = (items / seconds, items * clip_mb / seconds, cpu * per_10k)
                results[f"{name} {fmt}"] = rows
                print(f"\n{name} {fmt}: {args.clips} clips of {shape} uint8, {shard_mb:.0f} MB of shards")
                print(f"  {'method':<18}{'clips/s':>10}{'MB/s':>10}{'vs raw':>9}{'CPU-s/10k':>11}")
                for label, (cps, mbs, cpu10k) in rows.items():
                    ratio = cps / rows["raw read"][0]
                    print(f"  {label:<18}{cps:>10.0f}{mbs:>10.0f}{ratio:>9.2f}{cpu10k:>11.3f}")
                if "plain webdataset" in rows:
                    ratio = rows["ours uint8"][0] / rows["plain webdataset"][0]
                    print(f"  ours / plain webdataset: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
