"""Cost of Moving MNIST's ground-truth fields and variants against the plain generator, same run.

Per configuration (64x64, 20 frames, 2 digits unless named), single process, one core, interleaved as
`bench_fields.py` does for balls: (1) generate = `MNIST.generate` + what the shard writer encodes per sample;
(2) end to end = the real `datagen mnist --workers 0` job (WebDataset shards of 1000, fsync, sha256, journal,
manifest). Figures are videos per CPU second of this process, best of --repeat rounds; "ratio" is the
configuration's time over the plain generator's (issue 17's target for fields: <= 2). A mask is as large as a
grey clip and flow (two float16 per pixel) four times, so with flow a store holds ~5.6x the plain bytes.

    python bench/bench_mnist_fields.py            # ~2 minutes
    python bench/bench_mnist_fields.py --quick    # ~15 s
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fields import encode_all, timed  # noqa: E402

from datagen.jobs import generation_job, run_store_job  # noqa: E402
from datagen.sim.mnist import MNIST  # noqa: E402

ALL = ["video", "mask", "flow", "events", "visibility"]
CONFIGS = {
    "plain": {},
    "fields mask": {"fields": ["video", "mask"]},
    "fields mask,flow": {"fields": ["video", "mask", "flow"]},
    "fields all": {"fields": ALL},
    "bounce random": {"bounce": "random"},
    "colors palette": {"colors": "palette"},
    "rotation+scale": {"rotation": 10, "scale": [0.6, 1.4]},
    "every variant + all fields": {
        "bounce": "random",
        "rotation": 10,
        "scale": [0.6, 1.4],
        "colors": "random",
        "fields": ALL,
    },
}


def params_of(changes: dict) -> dict:
    changes = dict(changes)
    fields = changes.pop("fields", None)
    p = MNIST.validate(changes)
    return {**p, "fields": fields} if fields else p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small runs")
    ap.add_argument("--repeat", type=int, default=None, help="rounds; each figure is the best [3, quick: 1]")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where shards are written")
    args = ap.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    n = 300 if args.quick else 2000
    work = Path(tempfile.mkdtemp(prefix="bench_mnist_fields_", dir=args.dir))
    seed, wall = 1234, time.perf_counter()

    def store(params: dict, name: str) -> None:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        job = generation_job(out, "mnist", params, seed=seed, n=n, shard_size=1000, formats=["wds"])
        run_store_job(job, workers=0)

    runs = {}
    for name, changes in CONFIGS.items():
        p = params_of(changes)
        runs[(name, "gen")] = lambda p=p: encode_all(MNIST.generate(p, seed, 0, n))
        runs[(name, "e2e")] = lambda p=p, name=name: store(p, name.replace(" ", "_"))
    best = dict.fromkeys(runs, float("inf"))
    sizes = {}
    try:
        for fn in runs.values():  # compile and warm up once
            fn()
        for _ in range(repeat):
            for key, fn in runs.items():
                best[key] = min(best[key], timed(fn))
        for name in CONFIGS:
            sizes[name] = sum(p.stat().st_size for p in (work / name.replace(" ", "_")).glob("*.tar"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Moving MNIST 64x64, 20 frames, 2 digits, {n} videos: videos per CPU second, best of {repeat}")
    print(f"{'configuration':28s} | {'gen':>7s} {'ratio':>5s} | {'e2e':>7s} {'ratio':>5s} | store bytes x")
    for name in CONFIGS:
        gen, e2e = best[(name, "gen")], best[(name, "e2e")]
        print(
            f"{name:28s} | {n / gen:7.0f} {gen / best[('plain', 'gen')]:5.2f} | "
            f"{n / e2e:7.0f} {e2e / best[('plain', 'e2e')]:5.2f} | {sizes[name] / sizes['plain']:5.2f}"
        )
    print(f"wall {time.perf_counter() - wall:.0f} s, CPU {time.process_time():.0f} s")


if __name__ == "__main__":
    main()
