"""Library-first decisions (issue 16): each piece of hand-written machinery in `datagen` against the library
that would replace it, measured in the same run, interleaved, with the ratios the rule asks for.

The rule: hand-written code that replaces a library stays only where it gives at least 1.5x on a figure a
user sees (the wall time of `datagen balls --n 100000`, Moving MNIST end to end) or a property the library
cannot give. Sections:

1. user-visible jobs: `datagen balls --n N` (default workers) and `datagen mnist --n M`, wall and CPU seconds
   (the whole process tree, Dask workers included). With `--before REV` the same commands also run from a
   copy of the tree at REV (`git archive`; `--before-tree DIR` takes a copy already made), in turns with the
   current tree; where REV still has the O_DIRECT shard writer it runs with `DATAGEN_DIRECT_IO=1` and `=0`.
   This is how the deleting commits measured their before/after figures (4b26f88 is the tree before them).
2. meta JSON per clip: the generator's ground truth encoded as the shard writers encode it (orjson), against
   the standard library's `json.dumps` of the same dict (`.tolist()` first); with `--before`, REV's path too.
3. shard writer per 1000-clip shard (`write_shard`: atomic temporary, write, sha256, fsync, rename); with
   `--before`, REV's writer (O_DIRECT staging buffers + helper thread, and its plain fallback).
4. tar headers: our USTAR packing (`write_wds`) against `tarfile.addfile`, per sample and over a whole
   one-process job, same bytes checked.
5. random draws: the numba kernels (`_balls_kernels`: SeedSequence, PCG64, ziggurat) against a numpy
   `Generator` per sample, per sample and over a whole one-process job, same bytes checked.

CPU seconds are the figure to trust on a shared machine; wall seconds are what a user waits. Each figure is
the best of --repeat rounds (the median in brackets), the methods taking turns in every round.

    python bench/bench_library.py --quick --sections 2,3,4,5  # a minute or two
    python bench/bench_library.py --before 4b26f88            # everything, with the tree before the deletions
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

TREE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE))  # this tree's datagen, also when the script runs from a copy of the tree

from datagen.jobs import generation_job, run_store_job  # noqa: E402
from datagen.sim import _balls_kernels as kernels  # noqa: E402
from datagen.sim import balls, mnist  # noqa: E402
from datagen.sim.balls import BALLS  # noqa: E402
from datagen.store import wds  # noqa: E402
from datagen.store.wds import meta_bytes, npy_bytes, write_wds  # noqa: E402

RULE = 1.5

# --- running a tree in a subprocess ------------------------------------------------------------------------


def export_tree(rev: str, dest: Path) -> Path:
    """The tracked files of `rev` under dest (read-only use of the repository: `git archive`)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(TREE), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def tree_env(tree: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), **(extra or {})}
    return env


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall s, CPU s of the whole process tree, stdout). The tree's CPU is this process's children's rusage
    before and after (a child's figure includes the workers it reaped, as Dask's nannies do)."""
    cpu0 = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, _children_cpu() - cpu0, proc.stdout


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def python_in(tree: Path, code: str, env: dict[str, str] | None = None) -> dict:
    """Run `code` with `tree` first on the path; its last stdout line is JSON."""
    check = f"import datagen, sys; assert datagen.__file__.startswith({str(tree)!r}), datagen.__file__\n"
    _, _, out = run_measured([sys.executable, "-c", check + code], tree_env(tree, env), tree)
    return json.loads(out.strip().splitlines()[-1])


# --- 1. user-visible jobs --------------------------------------------------------------------------------


def job_variants(before: Path | None) -> list[tuple[str, Path, dict[str, str]]]:
    variants = [("now", TREE, {})]
    if before is not None:
        if (before / "datagen/store/direct_io.py").exists():
            variants += [("before, O_DIRECT", before, {"DATAGEN_DIRECT_IO": "1"})]
            variants += [("before, plain writes", before, {"DATAGEN_DIRECT_IO": "0"})]
        else:
            variants += [("before", before, {})]
    return variants


def user_jobs(args, before: Path | None, work: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{job: {variant: [(wall, cpu) per round]}} for `datagen balls` and `datagen mnist`."""
    jobs = {
        f"datagen balls --n {args.balls_n}": ["balls", "--n", str(args.balls_n), "--seed", "1"],
        f"datagen mnist --n {args.mnist_n}": ["mnist", "--n", str(args.mnist_n), "--seed", "1"],
    }
    variants = job_variants(before)
    for _, tree, env in variants:  # compile and cache the numba kernels of every tree before timing
        for argv in jobs.values():
            out = work / "warm"
            cmd = [sys.executable, "-m", "datagen", *argv[:1], "--n", "2", "--out", str(out), "-q"]
            run_measured(cmd + ["--workers", "0"], tree_env(tree, env), tree)
            shutil.rmtree(out)
    times: dict[str, dict[str, list[tuple[float, float]]]] = {j: {v[0]: [] for v in variants} for j in jobs}
    for _ in range(args.repeat):
        for job, argv in jobs.items():
            for name, tree, env in variants:
                out = work / "job"
                cmd = [sys.executable, "-m", "datagen", *argv, "--out", str(out), "-q"]
                wall, cpu, _ = run_measured(cmd, tree_env(tree, env), tree)
                times[job][name].append((wall, cpu))
                shutil.rmtree(out)
    return times


# --- 2. meta JSON per clip ----------------------------------------------------------------------------------

META_SNIPPET = """
import hashlib, json, time
import numpy as np
from datagen.sim import balls, mnist
from datagen.sources.mnist import load_digits
from datagen.store.wds import meta_bytes
N, REPEAT = {n}, {repeat}

def best(fn):
    times = []
    for _ in range(REPEAT):
        t = time.process_time(); texts = fn(); times.append(time.process_time() - t)
    return min(times) / N * 1e6, hashlib.sha256(b"".join(texts)).hexdigest()

p = balls.BALLS.validate({{}})
idx = range(N)
_, traj = balls.simulate_balls(p, 1, idx)
balls_us, balls_sha = best(lambda: [meta_bytes(m) for m in balls.ground_truth(p, traj, idx)])
q = mnist.MNIST.validate({{}})
digits = load_digits(q["source"])
start, theta, ids = mnist.draw_batch(1, idx, q["digits"], len(digits.labels))
pos, vel = mnist.bounce(start, theta, q["frames"], q["speed"])
free = np.array([q["size"] - 28, q["size"] - 28])
top_left = (free * pos).astype(np.int32).transpose(1, 0, 2, 3)
vel = (vel * (q["speed"] * free)).transpose(1, 0, 2, 3)
args = (idx, digits.labels[ids], digits.source_index[ids], top_left, vel)
mnist_us, mnist_sha = best(lambda: [meta_bytes(m) for m in mnist.ground_truth(*args)])
print(json.dumps({{"balls": balls_us, "mnist": mnist_us, "balls_sha": balls_sha, "mnist_sha": mnist_sha}}))
"""


def stdlib_meta_us(n: int, repeat: int) -> float:
    """json.dumps of the same balls metas (arrays as lists first): the standard library's cost per clip."""
    p = BALLS.validate({})
    _, traj = balls.simulate_balls(p, 1, range(n))
    metas = balls.ground_truth(p, traj, range(n))

    def encode() -> list[bytes]:
        out = []
        for m in metas:
            plain = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in m.items()}
            out.append(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode())
        return out

    return best_of(encode, repeat) / n * 1e6


# --- 3. shard writer per shard --------------------------------------------------------------------------

SHARD_SNIPPET = """
import json, os, shutil, time
from pathlib import Path
from datagen.sim.balls import BALLS
from datagen.store.manifest import write_shard
p = BALLS.validate({{}})
samples = list(BALLS.generate(p, 1, 0, 1000))
folder = Path({folder!r})
walls, cpus = [], []
for r in range({repeat}):
    folder.mkdir(parents=True, exist_ok=True)
    t, c = time.perf_counter(), time.process_time()
    entry = write_shard(folder, "balls-000000.tar", "wds", samples)
    walls.append(time.perf_counter() - t); cpus.append(time.process_time() - c)
    shutil.rmtree(folder)
print(json.dumps({{"wall": walls, "cpu": cpus, "sha256": entry["sha256"]}}))
"""


# --- 4. tar headers -----------------------------------------------------------------------------------------


class _HashedFile:
    """A buffered file that hashes what is written (what tarfile needs of a file object: write, tell)."""

    def __init__(self, path: Path) -> None:
        self.file, self.sha, self.pos = open(path, "wb"), hashlib.sha256(), 0

    def write(self, data) -> int:
        n = self.file.write(data)
        self.sha.update(data)
        self.pos += n
        return n

    def tell(self) -> int:
        return self.pos


def tarfile_write(fileobj, samples) -> list[str]:
    """The shard through the standard library's tarfile (USTAR, fixed owner, mode and mtime), streamed."""
    keys = []
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for name, data in (
                (f"{s.key}.video.npy", npy_bytes(s.video)),
                (f"{s.key}.meta.json", meta_bytes(s.meta)),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            keys.append(s.key)
    return keys


def write_wds_with_tarfile(path: Path, samples) -> tuple[list[str], str]:
    """`write_wds` made with tarfile: the same file, key list and sha256, hashed as it is written."""
    out = _HashedFile(path)
    try:
        keys = tarfile_write(out, samples)
    finally:
        out.file.close()
    return keys, out.sha.hexdigest()


# --- 5. random draws ----------------------------------------------------------------------------------------


def numpy_draw_batch(seed: int, indices, digits: int, n_available: int):
    """`mnist.draw_batch` drawn by a numpy Generator per sample (`mnist.draw_sample`)."""
    draws = [mnist.draw_sample(seed, i, digits, n_available) for i in indices]
    return tuple(np.stack(column) for column in zip(*draws, strict=True))


def numpy_initial_states(
    n_balls: int, radius: float, box: float, seed: int, indices
) -> tuple[np.ndarray, np.ndarray]:
    """`balls.initial_states` drawn by a numpy Generator per sample, as the reference port draws."""
    idx = list(indices)
    raw_v, x = np.empty((len(idx), n_balls, 2)), np.empty((len(idx), n_balls, 2))
    low, span = box / 5, box * 4 / 5
    for k, i in enumerate(idx):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        raw_v[k] = rng.standard_normal((n_balls, 2))
        while True:
            cand = low + rng.random((n_balls, 2)) * span
            if kernels.count_placed(cand[None], radius, box):
                x[k] = cand
                break
    v = raw_v / np.sqrt((raw_v**2).sum(axis=(1, 2)))[:, None, None] * 0.5
    return x, v


# --- helpers ------------------------------------------------------------------------------------------------


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def in_turns(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[tuple[float, float]]]:
    """{name: [(wall, cpu) per round]}, the runs taking turns in every round."""
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            out[name].append((time.perf_counter() - t, time.process_time() - c))
    return out


def one_process_job(work: Path, generator: str, n: int, patches: list[tuple[object, str, object]]):
    """A `--workers 0` job run with some functions swapped (patches: (module, attribute, value))."""

    def run() -> None:
        saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in patches]
        for mod, attr, value in patches:
            setattr(mod, attr, value)
        try:
            shutil.rmtree(work, ignore_errors=True)
            job = generation_job(work, generator, {}, seed=1, n=n, shard_size=1000, formats=["wds"])
            run_store_job(job, workers=0)
        finally:
            for mod, attr, value in saved:
                setattr(mod, attr, value)

    return run


def store_digest(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text())["digest"]


def fmt(pairs: list[tuple[float, float]], which: int) -> str:
    values = [p[which] for p in pairs]
    return f"{min(values):7.2f} ({statistics.median(values):6.2f})"


def print_runs(title: str, runs: dict[str, list[tuple[float, float]]], base: str) -> None:
    print(f"\n{title}")
    print(
        f"  {'':34s} {'wall s best (median)':>22s} {'CPU s best (median)':>22s} {'wall x':>7s} {'CPU x':>6s}"
    )
    best = {k: (min(p[0] for p in v), min(p[1] for p in v)) for k, v in runs.items()}
    for name, pairs in runs.items():
        wall_x, cpu_x = best[name][0] / best[base][0], best[name][1] / best[base][1]
        print(f"  {name:34s} {fmt(pairs, 0):>22s} {fmt(pairs, 1):>22s} {wall_x:6.2f}x {cpu_x:5.2f}x")
    print(f"  (x: time / time of '{base}'; the rule keeps hand-written code at >= {RULE}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the best round")
    ap.add_argument("--before", metavar="REV", help="also run the tree at this git revision (before/after)")
    ap.add_argument("--before-tree", type=Path, help="or: a copy of the earlier tree (a folder)")
    ap.add_argument("--balls-n", type=int, default=None, help="videos of the balls job [100000; quick 5000]")
    ap.add_argument("--mnist-n", type=int, default=None, help="videos of the mnist job [10000; quick 1000]")
    ap.add_argument("--sections", default="1,2,3,4,5", help="which sections to run, e.g. 1,3 [all]")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where stores are written")
    args = ap.parse_args()
    args.balls_n = args.balls_n or (5000 if args.quick else 100_000)
    args.mnist_n = args.mnist_n or (1000 if args.quick else 10_000)
    work = Path(tempfile.mkdtemp(prefix="bench_library_", dir=args.dir))
    try:
        before = export_tree(args.before, work / "before") if args.before else args.before_tree
        run_all(args, before, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args, before: Path | None, work: Path) -> None:
    print(
        f"bench_library: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, repeat {args.repeat}"
    )
    if before is not None:
        what = f"{args.before} ({_rev(args.before)})" if args.before else str(before)
        print(f"before = {what}, now = {TREE}")
    sections = [SECTIONS[int(x) - 1] for x in args.sections.split(",")]
    for section in sections:
        section(args, before, work)


def section_jobs(args, before: Path | None, work: Path) -> None:
    for job, runs in user_jobs(args, before, work).items():
        print_runs(f"1. {job} (default workers), whole process tree", runs, "now")


def section_meta(args, before: Path | None, work: Path) -> None:
    n_clips = 512 if args.quick else 4096
    trees = [("now", TREE)] + ([("before", before)] if before is not None else [])
    per_clip: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for _ in range(args.repeat):
        for name, tree in trees:
            per_clip[name].append(python_in(tree, META_SNIPPET.format(n=n_clips, repeat=3)))
    stdlib = stdlib_meta_us(n_clips, 3)
    print("\n2. meta JSON per clip, CPU us (best): generator's ground_truth + the writers' encoding")
    for name, rows in per_clip.items():
        b, m = min(r["balls"] for r in rows), min(r["mnist"] for r in rows)
        print(f"  {name:8s} balls {b:6.1f} us   mnist {m:6.1f} us   (sha {rows[0]['balls_sha'][:12]})")
    print(f"  stdlib json.dumps of the same balls dicts (tolist first): {stdlib:6.1f} us")


def section_writer(args, before: Path | None, work: Path) -> None:
    shard_runs: dict[str, list[tuple[float, float]]] = {}
    shas = {}
    for _ in range(args.repeat):
        for name, tree, env in job_variants(before):
            r = python_in(tree, SHARD_SNIPPET.format(folder=str(work / "shard"), repeat=3), env)
            shard_runs.setdefault(name, []).extend(zip(r["wall"], r["cpu"], strict=True))
            shas[name] = r["sha256"]
    print_runs(
        "3. one 1000-clip balls shard through write_shard (32 MB: write, sha256, fsync)", shard_runs, "now"
    )
    if len(shas) > 1:
        same = len(set(shas.values())) == 1
        print(f"  same bytes: {same}" + ("" if same else " (expected where the trees' generators differ)"))


def section_tar(args, before: Path | None, work: Path) -> None:
    p = BALLS.validate({})
    samples = list(BALLS.generate(p, 1, 0, 1000))
    ours_path, theirs_path = work / "ours.tar", work / "tarfile.tar"
    header_runs = in_turns(
        {
            "ours (USTAR packing)": lambda: write_wds(ours_path, samples),
            "tarfile": lambda: write_wds_with_tarfile(theirs_path, samples),
        },
        args.repeat * 3,
    )
    same = ours_path.read_bytes() == theirs_path.read_bytes()
    print_runs(
        "4a. one 1000-clip shard written (tar bytes, sha256; no fsync)", header_runs, "ours (USTAR packing)"
    )
    print(f"  same bytes: {same}")
    n_job = 5000 if args.quick else 20_000
    patch = [(wds, "_write_wds", write_wds_with_tarfile)]
    compare_jobs(args, work, "4b", "balls", n_job, ("ours (USTAR packing)", "tarfile"), patch)


def section_draws(args, before: Path | None, work: Path) -> None:
    n_job = 5000 if args.quick else 20_000
    idx = range(2000 if args.quick else 20_000)
    draw_runs = in_turns(
        {
            "numba kernels": lambda: balls.initial_states(3, 1.2, 10.0, 1, idx),
            "numpy Generator per sample": lambda: numpy_initial_states(3, 1.2, 10.0, 1, idx),
        },
        args.repeat,
    )
    a, b = balls.initial_states(3, 1.2, 10.0, 1, idx), numpy_initial_states(3, 1.2, 10.0, 1, idx)
    same = all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    print_runs(f"5a. initial states of {len(idx)} 3-ball videos", draw_runs, "numba kernels")
    per = {k: min(c for _, c in v) / len(idx) * 1e6 for k, v in draw_runs.items()}
    print(f"  per sample: {', '.join(f'{k} {v:.1f} us' for k, v in per.items())}; same draws: {same}")
    names = ("numba kernels", "numpy Generator per sample")
    patch = [(balls, "initial_states", numpy_initial_states)]
    compare_jobs(args, work, "5b", "balls", n_job, names, patch)
    patch = [(mnist, "draw_batch", numpy_draw_batch)]
    compare_jobs(args, work, "5c", "mnist", args.mnist_n, names, patch)


def compare_jobs(args, work: Path, label: str, generator: str, n: int, names: tuple[str, str], patch) -> None:
    """`datagen GENERATOR --n N --workers 0` as it is (names[0]) and with `patch` (names[1]), in turns."""
    runs = in_turns(
        {
            names[0]: one_process_job(work / "j1", generator, n, []),
            names[1]: one_process_job(work / "j2", generator, n, patch),
        },
        args.repeat,
    )
    same = store_digest(work / "j1") == store_digest(work / "j2")
    print_runs(f"{label}. datagen {generator} --n {n} --workers 0 (one process)", runs, names[0])
    print(f"  same dataset digest: {same}")


SECTIONS = [section_jobs, section_meta, section_writer, section_tar, section_draws]


def _rev(rev: str) -> str:
    return subprocess.run(
        ["git", "-C", str(TREE), "rev-parse", "--short", rev], capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    main()
