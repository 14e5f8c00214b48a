"""GAM, the Generative Adversarial Metric (Im, Kim, Jiang & Memisevic 2016), as in the TGAN ablation.

Two trained models M1 = (G1, D1) and M2 = (G2, D2) battle: each critic judges held-out real clips and the
*other* model's samples. With eps(D(x)) the classification error rate of critic D on a set x,

    r_test   = eps(D1(x_test))  / eps(D2(x_test))       errors on real test clips (called fake)
    r_sample = eps(D1(G2(z)))   / eps(D2(G1(z)))        errors on the opponent's samples (called real)

and the winner is M1 when r_sample < 1 and r_test ~ 1, M2 when r_sample > 1 and r_test ~ 1, otherwise a tie
(r_test far from 1 means one critic generalises worse, so the sample ratio is not a fair verdict).

Our choices (not fixed by the papers, documented here and in the JSON output):
- A WGAN critic outputs an unbounded score, not a probability, so "classified as real" needs a threshold.
  `threshold="midpoint"` (default) gives each critic its own: the midpoint between its mean score on the
  test clips and its mean score on its *own* generator's samples (same n). A float uses that fixed score
  (0.0 is the logit threshold of a standard GAN discriminator).
- "r_test ~ 1" is |r_test - 1| <= `tolerance` (0.1 by default).
- A ratio with a zero denominator is +inf (1.0 when both rates are 0).
- Generators and critics run in inference mode (BN running statistics), like the authors' `infer.py`.

    python -m recipes.gam --a runs/tgan_svc/checkpoints/ckpt-000100000.pt \\
        --b runs/tgan_clip/checkpoints/ckpt-000100000.pt --data stores/mnist_test --n 2048 -o gam.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from recipes.common.ckpt import load_checkpoint
from recipes.common.config import apply_overrides
from recipes.models.tgan import VideoCritic, VideoGenerator
from recipes.train_tgan import TGANConfig, build_models


@dataclasses.dataclass
class GamModel:
    """One contestant: a generator (z0 -> video) and its critic (video -> score)."""

    gen: VideoGenerator
    critic: VideoCritic
    name: str = ""


@dataclasses.dataclass
class GamResult:
    r_test: float
    r_sample: float
    winner: str  # "a", "b" or "tie"
    error_test: tuple[float, float]  # eps(D1(x_test)), eps(D2(x_test))
    error_sample: tuple[float, float]  # eps(D1(G2(z))), eps(D2(G1(z)))
    thresholds: tuple[float, float]
    n_test: int
    n_samples: int
    protocol: dict[str, Any]


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 1.0 if num == 0 else float("inf")
    return num / den


@torch.no_grad()
def _scores_of_samples(
    critic: VideoCritic, gen: VideoGenerator, n: int, batch_size: int, generator: torch.Generator
) -> torch.Tensor:
    device = next(gen.parameters()).device
    out = []
    for start in range(0, n, batch_size):
        z0 = gen.sample_z(min(batch_size, n - start), generator=generator, device="cpu").to(device)
        out.append(critic(gen(z0)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def gam_score(
    a: GamModel,
    b: GamModel,
    test_videos: Iterable[torch.Tensor],
    *,
    n_samples: int = 2048,
    batch_size: int = 32,
    threshold: str | float = "midpoint",
    tolerance: float = 0.1,
    seed: int = 0,
) -> GamResult:
    """Battle `a` (M1) against `b` (M2) on real test clips (batches (B, C, T, H, W) in [-1, 1])."""
    if a.gen.n_classes or b.gen.n_classes:
        raise ValueError("GAM is implemented for unconditional models only")
    for m in (a.gen, a.critic, b.gen, b.critic):
        m.eval()
    device = next(a.critic.parameters()).device
    test_a, test_b = [], []
    for video in test_videos:
        video = video.to(device)
        test_a.append(a.critic(video).float().cpu())
        test_b.append(b.critic(video).float().cpu())
    if not test_a:
        raise ValueError("GAM needs real test clips, got none")
    s_test = (torch.cat(test_a), torch.cat(test_b))

    # Each generator draws the same z sequence (seeded), so the battle does not depend on the call order.
    def draw(critic: VideoCritic, gen: VideoGenerator) -> torch.Tensor:
        return _scores_of_samples(critic, gen, n_samples, batch_size, torch.Generator().manual_seed(seed))

    a_on_b, b_on_a = draw(a.critic, b.gen), draw(b.critic, a.gen)  # D1(G2(z)), D2(G1(z))
    if threshold == "midpoint":
        own_a, own_b = draw(a.critic, a.gen), draw(b.critic, b.gen)
        thr = (
            float((s_test[0].mean() + own_a.mean()) / 2),
            float((s_test[1].mean() + own_b.mean()) / 2),
        )
    elif isinstance(threshold, int | float) and not isinstance(threshold, bool):
        thr = (float(threshold), float(threshold))
    else:
        raise ValueError(f"threshold must be 'midpoint' or a number, got {threshold!r}")
    err_test = tuple(float((s < t).float().mean()) for s, t in zip(s_test, thr, strict=True))
    err_sample = (float((a_on_b >= thr[0]).float().mean()), float((b_on_a >= thr[1]).float().mean()))
    r_test, r_sample = _ratio(*err_test), _ratio(*err_sample)
    fair = abs(r_test - 1) <= tolerance
    winner = "a" if fair and r_sample < 1 else "b" if fair and r_sample > 1 else "tie"
    return GamResult(
        r_test=r_test,
        r_sample=r_sample,
        winner=winner,
        error_test=err_test,  # type: ignore[arg-type]
        error_sample=err_sample,
        thresholds=thr,
        n_test=len(s_test[0]),
        n_samples=n_samples,
        protocol={
            "threshold": threshold,
            "tolerance": tolerance,
            "seed": seed,
            "mode": "eval (BN running stats)",
        },
    )


def load_tgan(path: str | Path, device: torch.device | str = "cpu") -> tuple[GamModel, TGANConfig]:
    """Rebuild G0+G1 and the critic of a `train_tgan` checkpoint (weights_only load)."""
    state = load_checkpoint(path)
    if set(state["models"]) != {"gen", "critic"}:
        raise ValueError(f"{path} is not a train_tgan checkpoint (models: {sorted(state['models'])})")
    cfg = apply_overrides(TGANConfig(), state["config"], f"the config stored in {path}")
    extra = state["extra"]
    gen, critic = build_models(cfg, channels=int(extra["channels"]), size=int(extra["size"]))
    gen.load_state_dict(state["models"]["gen"])
    critic.load_state_dict(state["models"]["critic"])
    return GamModel(gen.to(device), critic.to(device), name=str(path)), cfg


def real_clips(
    data: str, frames: int, batch_size: int, device: torch.device, limit: int
) -> Iterable[torch.Tensor]:
    """Real clips from a store through `pipelines` (fixed first window, store order), at most `limit`."""
    from pipelines.dataset import VideoDataset
    from pipelines.loader import make_loader

    dataset = VideoDataset(data, mode="clip", frames=frames, shuffle=False, offset=0)
    seen = 0
    for batch in make_loader(dataset, batch_size=batch_size, num_workers=0, device=device):
        video = batch["video"][: max(0, limit - seen)]
        seen += len(video)
        if len(video):
            yield video
        if seen >= limit:
            break


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="train_tgan checkpoint of model M1")
    parser.add_argument("--b", required=True, help="train_tgan checkpoint of model M2")
    parser.add_argument("--data", required=True, help="held-out real clips (a store pipelines can read)")
    parser.add_argument("--n", type=int, default=2048, help="generated clips per generator and test clips")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threshold", default="midpoint", help="'midpoint' or a fixed critic score")
    parser.add_argument("--tolerance", type=float, default=0.1, help="|r_test - 1| allowed for a verdict")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)
    try:
        threshold: str | float = args.threshold if args.threshold == "midpoint" else float(args.threshold)
        device = torch.device(args.device)
        a, cfg_a = load_tgan(args.a, device)
        b, cfg_b = load_tgan(args.b, device)
        if cfg_a.frames != cfg_b.frames:
            raise ValueError(f"the models make clips of {cfg_a.frames} and {cfg_b.frames} frames")
        result = gam_score(
            a,
            b,
            real_clips(args.data, cfg_a.frames, args.batch_size, device, args.n),
            n_samples=args.n,
            batch_size=args.batch_size,
            threshold=threshold,
            tolerance=args.tolerance,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"gam: error: {exc}", file=sys.stderr)
        sys.exit(2)
    report = {"a": args.a, "b": args.b, "data": args.data, **dataclasses.asdict(result)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        from datagen.store.atomic import atomic_path

        with atomic_path(Path(args.output)) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
