"""GLO's hot spots against straightforward references, in the same run on the same data.

- code update: one step on a batch's codes in a 50,000 x 100 table. Ours: :class:`recipes.latents.LatentStore`
  (memory-mapped, lazy Adam on the batch's rows only). Reference: the GLANN / GLANN-VIDEO way, an
  ``nn.Embedding`` with a dense ``torch.optim.Adam`` that steps every row at every batch.
- IMLE assignment: for each code its nearest mapped noise vector. Ours: :func:`recipes.latent_mappings.
  nearest_indices` (chunked ``torch.cdist``). Reference: a loop over codes, numpy distances to all candidates.
- Laplacian loss on a video batch: ours builds one pyramid of the difference (the pyramid is linear);
  reference: minimal_glo's two pyramids and a per-level ``F.l1_loss``.

Each result is the best of ``--repeat`` timed rounds; ratios are reference time / our time (CPU, float32).
Usage::

    python bench/bench_glo.py [--rows 50000] [--queries 2000] [--candidates 20000] [--repeat 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recipes.latent_mappings import nearest_indices
from recipes.latents import LatentStore
from recipes.losses.laplacian import LaplacianLoss, gaussian_kernel, laplacian_pyramid


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_code_update(rows: int, nz: int, batch: int, steps: int, repeat: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    index = [rng.choice(rows, batch, replace=False) for _ in range(steps)]
    grads = [rng.normal(size=(batch, nz)).astype(np.float32) for _ in range(steps)]
    with tempfile.TemporaryDirectory() as tmp:
        store = LatentStore.create(Path(tmp) / "z", rows, nz, seed=0)

        def ours() -> None:
            for i, g in zip(index, grads, strict=True):
                store.adam_step(i, g, lr=0.01)

        t_ours = best_of(ours, repeat)
    emb = torch.nn.Embedding(rows, nz)
    opt = torch.optim.Adam(emb.parameters(), lr=0.01, betas=(0.5, 0.999))
    idx_t = [torch.from_numpy(i) for i in index]
    grads_t = [torch.from_numpy(g) for g in grads]

    def reference() -> None:
        for i, g in zip(idx_t, grads_t, strict=True):
            opt.zero_grad()
            (emb(i) * g).sum().backward()
            opt.step()

    t_ref = best_of(reference, repeat)
    return {
        "ours_steps_per_s": steps / t_ours,
        "reference_steps_per_s": steps / t_ref,
        "ratio": t_ref / t_ours,
    }


def bench_nearest(queries: int, candidates: int, dim: int, repeat: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(queries, dim, generator=g), torch.randn(candidates, dim, generator=g)
    qn, cn = q.numpy(), c.numpy()
    got = nearest_indices(q, c)
    t_ours = best_of(lambda: nearest_indices(q, c), repeat)

    def reference() -> np.ndarray:
        return np.array([np.argmin(((cn - row) ** 2).sum(1)) for row in qn])

    t_ref = best_of(reference, 1)
    agree = float((reference() == got.numpy()).mean())
    return {"ours_s": t_ours, "reference_s": t_ref, "ratio": t_ref / t_ours, "agreement": agree}


def bench_laplacian(batch: int, repeat: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 64, 64, generator=g) * 2 - 1
    y = torch.rand(batch, 3, 32, 64, 64, generator=g) * 2 - 1
    loss = LaplacianLoss(3)
    k = gaussian_kernel()

    def reference() -> torch.Tensor:
        fx, fy = (v.transpose(1, 2).flatten(0, 1) for v in (x, y))
        px, py = laplacian_pyramid(fx, 3, k), laplacian_pyramid(fy, 3, k)
        return sum(F.l1_loss(a, b) for a, b in zip(px, py, strict=True))

    diff = abs(loss(x, y).mean().item() - reference().item())
    t_ours = best_of(lambda: loss(x, y).mean(), repeat)
    t_ref = best_of(reference, repeat)
    return {"ours_s": t_ours, "reference_s": t_ref, "ratio": t_ref / t_ours, "abs_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=20_000)
    p.add_argument("--video-batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    results = {
        "code_update": bench_code_update(args.rows, args.nz, args.batch, args.steps, args.repeat),
        "imle_nearest": bench_nearest(args.queries, args.candidates, args.nz, args.repeat),
        "laplacian": bench_laplacian(args.video_batch, args.repeat),
        "settings": vars(args) | {"torch_threads": torch.get_num_threads()},
    }
    for name, r in results.items():
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
