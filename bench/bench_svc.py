"""Singular value clipping of TGAN's critic: our batched torch SVC against the authors' per-layer SciPy SVD.

Reference (same run, same weights): pfnet-research/tgan's `_clip_singular_value`, i.e. for every critic kernel
with ndim >= 4, copy it to the host, `scipy.linalg.svd(A, full_matrices=False)`, set s > 1 to 1, rebuild with
`np.dot(np.dot(U, np.diag(s)), Vh)` and copy it back; single process (their Pool version spreads the layers
over processes, which does not help the one large 512 x 16384 kernel that dominates).
Ours: `recipes.losses.wgan.clip_singular_values_` (layers grouped by shape, one batched torch.linalg.svd per
group, on the weights' device).

    python bench/bench_svc.py                   # paper critic (64x64x16, mid_ch 64), CPU
    python bench/bench_svc.py --device cuda     # the torch side on the GPU (reference stays on the host)

Prints a JSON line with seconds per SVC pass (median of --repeats) and the speed ratio reference / ours, and
checks that both give the same weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import scipy.linalg
import torch

from recipes.losses.wgan import clip_singular_values_, svc_parameters
from recipes.models.tgan import VideoCritic


def reference_svc_(critic: torch.nn.Module) -> None:
    """The authors' loop: per layer, host copy + SciPy SVD + np.dot reconstruction + copy back."""
    with torch.no_grad():
        for p in critic.parameters():
            if p.ndim >= 4:
                a = p.detach().cpu().numpy().reshape(p.shape[0], -1)
                u, s, vh = scipy.linalg.svd(a, full_matrices=False)
                s[s > 1] = 1
                a = np.dot(np.dot(u, np.diag(s)), vh)
                p.copy_(torch.from_numpy(a.reshape(p.shape)).to(p.device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, critic: torch.nn.Module, state: dict, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        critic.load_state_dict(state)
        _sync(device)
        t0 = time.perf_counter()
        fn(critic)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--mid-ch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=30.0, help="weight scale so that clipping really acts")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    critic = VideoCritic(in_channels=1, size=args.size, n_frames=args.frames, mid_ch=args.mid_ch).to(device)
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(args.scale)
    state = {k: v.clone() for k, v in critic.state_dict().items()}
    shapes = [tuple(p.reshape(p.shape[0], -1).shape) for p in svc_parameters(critic, "code")]

    # warm-up both paths once (lazy LAPACK / cuSOLVER init)
    _time(reference_svc_, critic, state, device, 1)
    _time(lambda m: clip_singular_values_(m, scope="code"), critic, state, device, 1)

    ref_times = _time(reference_svc_, critic, state, device, args.repeats)
    ref_weights = [p.detach().cpu().double() for p in svc_parameters(critic, "code")]
    ours_times = _time(lambda m: clip_singular_values_(m, scope="code"), critic, state, device, args.repeats)
    ours_weights = [p.detach().cpu().double() for p in svc_parameters(critic, "code")]
    max_diff = max(float((a - b).abs().max()) for a, b in zip(ref_weights, ours_weights, strict=True))
    top_sv = max(float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)) for w in ours_weights)

    ref_s, ours_s = statistics.median(ref_times), statistics.median(ours_times)
    print(
        json.dumps(
            {
                "bench": "svc",
                "critic": f"{args.frames}x{args.size}x{args.size}, mid_ch {args.mid_ch}",
                "matrices": shapes,
                "device": str(device)
                + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
                "cpu": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads(),
                "reference_scipy_per_layer_s": round(ref_s, 4),
                "ours_batched_torch_s": round(ours_s, 4),
                "speedup": round(ref_s / ours_s, 2),
                "max_abs_weight_diff": max_diff,
                "largest_singular_value_after": top_sv,
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
