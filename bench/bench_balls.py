"""Bouncing balls throughput: the batched simulator against the straightforward reference port, same run.

Reference: `datagen.sim.balls_reference.reference_video` (the RTRBM generator's per-ball Python loops and
full-frame rendering), one video at a time, with the same per-sample seeding and the same `meta` (a plain
dict of rounded lists, encoded as the store encodes every meta).
Fast: `datagen.sim.balls.BALLS.generate` (numba kernels per batch of videos: draws, physics, rendering of
boxes around the balls with numpy's exp); its meta dicts hold numpy arrays, which the writers encode with
orjson.
Both give the same bytes: the end-to-end runs write one shard each for the same indices and compare them.

Per configuration (1 and 3 balls, 30x30 and 64x64, 30 frames), single process, one core, in this order:
1. generate: simulate + render + meta dict + JSON encoding of the meta (what the shard writer does);
2. end to end: samples written as WebDataset shards (tar, fsync, sha256): the reference through the store's
   `write_shard`, the fast path through the real `datagen balls --workers 0` job (`generation_job` +
   `run_store_job`: shards of 1000, journal, manifest).
Times are CPU seconds of this process (per-core figures, also when others share the machine), each the best
of --repeat interleaved rounds. "bound" is the end-to-end ratio left if generation and writing were free and
only the sha256 of the shard bytes (which the manifest records) remained: no writer beats it on one core;
"+gen" adds the fast generation's measured cost to that.
A breakdown of the fast path's stages (CPU seconds per 100,000 videos) follows the table.

    python bench/bench_balls.py            # ~1-2 minutes
    python bench/bench_balls.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from datagen.jobs import generation_job, run_store_job
from datagen.sim import balls
from datagen.sim.balls import BALLS, ground_truth
from datagen.sim.balls_reference import reference_video
from datagen.store.manifest import shard_name, write_shard
from datagen.store.sample import Sample, sample_key
from datagen.store.wds import meta_bytes

CONFIGS = [(1, 30), (3, 30), (1, 64), (3, 64)]
SHARD_SIZE = 1000  # the CLI's default


def reference_samples(params: dict, seed: int, indices: range) -> list[Sample]:
    """The classic generator, one video at a time, with the fast path's seeding and ground truth.

    The meta is made the straightforward way too: a dict of `np.round(...).tolist()` lists, which the
    shard writer encodes with orjson (the same text as the fast path's, checked by `same bytes`).
    """
    out = []
    scale = params["size"] / params["box"]
    for i in indices:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        frames, X, V = reference_video(
            rng,
            n_balls=params["n_balls"],
            frames=params["frames"],
            res=params["size"],
            radius=params["radius"],
            size=params["box"],
        )
        meta = {
            "index": i,
            "n_balls": params["n_balls"],
            "radius_px": round(params["radius"] * scale, balls.META_DECIMALS),
            "positions": np.round(X * scale - 0.5, balls.META_DECIMALS).tolist(),
            "velocities": np.round(V * scale, balls.META_DECIMALS).tolist(),
        }
        out.append(Sample(sample_key(i), frames[..., None], meta))
    return out


def encode_all(samples) -> int:
    """Consume samples, JSON-encoding each meta as the shard writers do; returns the count."""
    return sum(1 for s in samples if meta_bytes(s.meta))


CLOCK = time.process_time  # CPU seconds of this process: per-core figures even when others use the machine


def timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def stage_breakdown(params: dict, seed: int, n: int, work: Path) -> dict[str, float]:
    """CPU seconds per 100,000 videos of each fast-path stage."""
    indices = range(n)
    clock = time.process_time
    t0 = clock()
    x0, v0 = balls.initial_states(params["n_balls"], params["radius"], params["box"], seed, indices)
    t1 = clock()
    traj = balls.simulate(x0, v0, params["frames"], params["radius"], params["box"])
    t2 = clock()
    videos = balls.render(traj.positions, params["size"], params["radius"], params["box"])
    t3 = clock()
    metas = ground_truth(params, traj, indices)
    t4 = clock()
    samples = [Sample(sample_key(i), v[..., None], m) for i, v, m in zip(indices, videos, metas, strict=True)]
    write_shard(work, shard_name("stages", 0, "wds"), "wds", samples)
    t5 = clock()
    scale = 1e5 / n
    stages = ("initial state", "physics", "render", "meta", "JSON+write")
    return {
        k: (b - a) * scale for k, a, b in zip(stages, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True)
    }


def bench_config(n_balls: int, res: int, n_fast: int, n_ref: int, repeat: int, work: Path) -> dict:
    params = BALLS.validate({"n_balls": n_balls, "size": res, "frames": 30})
    seed = 1234
    fast_dir, ref_dir = work / f"fast-{n_balls}-{res}", work / f"ref-{n_balls}-{res}"
    name = shard_name("balls", 0, "wds")

    def fast_store() -> None:
        shutil.rmtree(fast_dir, ignore_errors=True)
        shard_size = min(n_fast, SHARD_SIZE)
        job = generation_job(
            fast_dir, "balls", params, seed=seed, n=n_fast, shard_size=shard_size, formats=["wds"]
        )
        run_store_job(job, workers=0)

    def ref_store() -> None:
        ref_dir.mkdir(exist_ok=True)
        write_shard(ref_dir, name, "wds", reference_samples(params, seed, range(n_ref)))

    runs = {
        "ref gen": (n_ref, lambda: encode_all(reference_samples(params, seed, range(n_ref)))),
        "fast gen": (n_fast, lambda: encode_all(BALLS.generate(params, seed, 0, n_fast))),
        "ref e2e": (n_ref, ref_store),
        "fast e2e": (n_fast, fast_store),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for key, (_, fn) in runs.items():
            best[key] = min(best[key], timed(fn))
    check = work / "check"
    check.mkdir(exist_ok=True)
    write_shard(check, name, "wds", list(BALLS.generate(params, seed, 0, n_ref)))  # same indices as ref
    shard_bytes = (check / name).read_bytes()
    same = shard_bytes == (ref_dir / name).read_bytes()
    rates = {k: runs[k][0] / best[k] for k in runs}
    # What every written byte costs at least: its sha256 (the manifest records one per shard).
    sha_seconds = min(timed(lambda: hashlib.sha256(shard_bytes).digest()) for _ in range(max(3, repeat)))
    return {
        "rates": rates,
        "sha_bound": (n_ref / sha_seconds) / rates["ref e2e"],
        "gen_sha_bound": (1 / rates["ref e2e"]) / (1 / rates["fast gen"] + sha_seconds / n_ref),
        "same_bytes": same,
        "stages": stage_breakdown(
            params, seed, min(n_fast, balls.BATCH), work
        ),  # one batch, as generate() runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small runs: a few seconds")
    ap.add_argument("--repeat", type=int, default=None, help="rounds; each figure is the best [2, quick: 1]")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where shards are written")
    args = ap.parse_args()
    repeat = args.repeat or (1 if args.quick else 2)
    work = Path(tempfile.mkdtemp(prefix="bench_balls_", dir=args.dir))
    results = {}
    try:
        for n_balls, res in CONFIGS:
            small = res <= 32
            n_ref = (40 if args.quick else 200) if small else (20 if args.quick else 100)
            n_fast = (1000 if args.quick else 5000) if small else (200 if args.quick else 1000)
            results[(n_balls, res)] = bench_config(n_balls, res, n_fast, n_ref, repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cpu = platform.processor() or platform.machine()
    print(f"bouncing balls, 30 frames: videos per CPU second, one process ({cpu}), best of {repeat}")
    head = f"{'balls':>5s} {'size':>5s} | {'ref gen':>8s} {'fast gen':>9s} {'ratio':>6s} | "
    print(head + f"{'ref e2e':>8s} {'fast e2e':>9s} {'ratio':>6s} {'bound':>6s} {'+gen':>5s} | same bytes")
    for (n_balls, res), r in results.items():
        x = r["rates"]
        gen, e2e = x["fast gen"] / x["ref gen"], x["fast e2e"] / x["ref e2e"]
        print(
            f"{n_balls:5d} {res:5d} | {x['ref gen']:8.0f} {x['fast gen']:9.0f} {gen:5.0f}x | "
            f"{x['ref e2e']:8.0f} {x['fast e2e']:9.0f} {e2e:5.0f}x "
            f"{r['sha_bound']:5.0f}x {r['gen_sha_bound']:4.0f}x | {r['same_bytes']}"
        )
    print("bound: the e2e ratio if generating and writing were free and only the bytes' sha256 remained;")
    print("+gen: the same with generation at its measured cost (writing alone free)")
    print(
        "\nfast path, CPU seconds per 100,000 videos by stage (write: the store's wds writer, fsync incl.):"
    )
    stages = next(iter(results.values()))["stages"]
    print(f"{'balls':>5s} {'size':>5s} | " + " ".join(f"{k:>13s}" for k in stages) + f" {'total':>8s}")
    for (n_balls, res), r in results.items():
        s = r["stages"]
        print(
            f"{n_balls:5d} {res:5d} | "
            + " ".join(f"{v:13.2f}" for v in s.values())
            + f" {sum(s.values()):8.2f}"
        )


if __name__ == "__main__":
    main()
