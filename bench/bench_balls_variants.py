"""Cost of the bouncing-balls variants against the default generator, same run.

Per variant (3 balls, 30x30, 30 frames unless named), single process, one core, interleaved as
`bench_fields.py` does: `BALLS.generate` + what the shard writer encodes per sample, video only and with
`--fields video,mask,flow`. The default runs the fast kernels (`datagen.sim._balls_kernels`); any variant
runs the general ones (`datagen.sim._balls_variants`: per-ball radius, mass, colour and count, all balls
labelled by the two-pass kernel), so "x default" (variant time over the default's, same fields) is mostly
that path's cost, not the option's. Figures are clips per CPU second of this process, best of --repeat.

    python bench/bench_balls_variants.py            # ~1 minute
    python bench/bench_balls_variants.py --quick    # ~10 s
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fields import encode_all, timed  # noqa: E402

from datagen.sim.balls import BALLS  # noqa: E402

FIELDS = ["video", "mask", "flow"]
VARIANTS = {
    "default": {},
    "masses 0.5-4": {"masses": [0.5, 4.0]},
    "gravity 0.02": {"gravity": 0.02},
    "damping 0.02": {"damping": 0.02},
    "restitution 0.8": {"restitution": 0.8},
    "radius 0.8-1.6": {"min_radius": 0.8, "radius": 1.6},
    "balls 1-5": {"min_balls": 1, "n_balls": 5},
    "colors palette": {"colors": "palette"},
    "occluder 0.4-0.6": {"occluder": [0.4, 0.6]},
    "everything": {
        "min_balls": 1,
        "n_balls": 4,
        "min_radius": 0.8,
        "radius": 1.6,
        "masses": [0.5, 4.0],
        "gravity": 0.02,
        "damping": 0.02,
        "restitution": 0.8,
        "colors": "random",
        "occluder": [0.4, 0.6],
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small runs: ~10 s")
    ap.add_argument("--repeat", type=int, default=None, help="rounds; each figure is the best [3, quick: 1]")
    args = ap.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    n, seed = (500 if args.quick else 2000), 1234
    runs = {}
    for name, options in VARIANTS.items():
        p = BALLS.validate({"n_balls": 3, "size": 30, "frames": 30, **options})
        for fields in ("video", "fields"):
            q = p if fields == "video" else {**p, "fields": FIELDS}
            runs[name, fields] = lambda q=q: encode_all(BALLS.generate(q, seed, 0, n))
    wall = time.perf_counter()
    for fn in runs.values():  # compile and warm up once
        fn()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for key, fn in runs.items():
            best[key] = min(best[key], timed(fn))
    rate = {k: n / v for k, v in best.items()}
    cpu = platform.processor() or platform.machine()
    print(f"bouncing balls variants, 3 balls, 30x30, 30 frames: clips per CPU second, one process ({cpu}),")
    print(f"best of {repeat} rounds of {n} clips; 'x default' = time over the default's with the same fields")
    print(f"{'variant':>18s} | {'video':>7s} {'x default':>9s} | {'+mask,flow':>10s} {'x default':>9s}")
    for name in VARIANTS:
        v, f = rate[name, "video"], rate[name, "fields"]
        dv, df = rate["default", "video"] / v, rate["default", "fields"] / f
        print(f"{name:>18s} | {v:7.0f} {dv:9.2f} | {f:10.0f} {df:9.2f}")
    print(f"wall {time.perf_counter() - wall:.0f} s, CPU {time.process_time():.0f} s")


if __name__ == "__main__":
    main()
