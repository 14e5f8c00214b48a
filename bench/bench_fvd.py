"""FVD's I3D features on CPU: ours against the straightforward port, on grey clips.

Reference (same run, same weights, same clips): every "SAME" max pool as one `F.max_pool3d` on the padded
input, and grey clips made RGB before the resize to 224x224 (three channels resized). Ours: the separable max
pools of `recipes.models.i3d` (`separable_max_pool3d`, three 1-D pools) and grey resized as one channel, made
RGB after (`recipes.metrics.fvd.i3d_inputs`). The same arithmetic, so the features must be bitwise identical
(checked here). Both run `recipes.metrics.fvd.I3DFeatures` end to end (resize, I3D, 400-d embeddings) on
random grey 16-frame 64x64 clips, as the tgan-mnist and glo-balls protocols' FVD evaluations do.

    python bench/bench_fvd.py                    # 16 clips, 3 repeats, alternating
    python bench/bench_fvd.py --clips 8 --repeats 5

Prints a JSON line with the wall seconds per clip of each (median over repeats; also the separable pools on
RGB clips, the pools' share alone), the speed-ups, and whether all features are identical; the repeats
alternate so a shared machine slows all alike.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from recipes.metrics.fvd import I3DFeatures
from recipes.models import i3d


def reference_pool(self: i3d.MaxPool3dSame, x: torch.Tensor) -> torch.Tensor:
    """The straightforward "SAME" max pool: pad with -inf, then one `F.max_pool3d`."""
    return F.max_pool3d(i3d.same_pad(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    clips = torch.rand(args.clips, 1, args.frames, args.size, args.size) * 2 - 1
    features = I3DFeatures()
    ours_forward = i3d.MaxPool3dSame.forward
    rgb = clips.expand(-1, 3, -1, -1, -1)  # the reference resizes three channels
    impls = {
        "reference": (reference_pool, rgb),
        "separable_pools": (ours_forward, rgb),  # the pools alone (the library-first figure)
        "ours": (ours_forward, clips),
    }
    times: dict[str, list[float]] = {name: [] for name in impls}
    outputs: dict[str, np.ndarray] = {}
    try:
        for _ in range(args.repeats):
            for name, (forward, inputs) in impls.items():
                i3d.MaxPool3dSame.forward = forward  # type: ignore[method-assign]
                t0 = time.perf_counter()
                outputs[name] = features(inputs)
                times[name].append((time.perf_counter() - t0) / args.clips)
    finally:
        i3d.MaxPool3dSame.forward = ours_forward  # type: ignore[method-assign]
    per_clip = {name: statistics.median(t) for name, t in times.items()}
    print(
        json.dumps(
            {
                "bench": "fvd_i3d_features",
                "clips": args.clips,
                "frames": args.frames,
                "size": args.size,
                **{f"s_per_clip_{name}": round(t, 3) for name, t in per_clip.items()},
                "speedup_separable_pools_vs_reference": round(
                    per_clip["reference"] / per_clip["separable_pools"], 2
                ),
                "speedup_ours_vs_reference": round(per_clip["reference"] / per_clip["ours"], 2),
                "identical_features": all(np.array_equal(outputs["reference"], o) for o in outputs.values()),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
