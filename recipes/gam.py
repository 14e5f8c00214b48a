"""GAM, the Generative Adversarial Metric (Im, Kim, Jiang & Memisevic 2016), as in the TGAN ablation.

Two trained models A = (G_A, D_A) and B = (G_B, D_B) battle: each critic judges held-out real clips and the
*other* model's samples. With eps(D(x)) the classification error rate of critic D on a set x (the fraction
of real test clips it calls fake, or of generated clips it calls real), Im et al. define

    r_test   = eps(D_A(x_test)) / eps(D_B(x_test))     errors on real test clips
    r_sample = eps(D_A(G_B(z))) / eps(D_B(G_A(z)))     errors on the opponent's samples

and A wins when r_sample < 1 and r_test ~ 1, B when r_sample > 1 and r_test ~ 1, otherwise neither (r_test
far from 1 means one critic generalises worse, so the sample ratio is not a fair verdict).

The reported **GAM score** is oriented as TGAN's Table 3 (columns model A, model B, GAM score, winner;
every listed winner is model A, with scores above 1):

    score = 1 / r_sample = eps(D_B(G_A(z))) / eps(D_A(G_B(z)))

i.e. how often A's videos fool B's critic over how often B's videos fool A's critic: **score > 1 means model
A wins** (when r_test ~ 1), < 1 model B. (The orientation is recalled from the paper's table, not from a
source read here; `r_sample` is kept in the report in Im et al.'s orientation.) The report names the winner.

Our choices (not fixed by the papers, documented here and in the JSON output):
- A WGAN critic outputs an unbounded score, not a probability, so "classified as real" needs a threshold.
  `threshold="calibrated"` (default) gives each critic its own operating point on real data: it calls fake
  the lowest `quantile` (10%) of its scores on half of the real test clips (even indices), and its test
  error is then measured on the other half, so r_test still compares how the critics *generalise*.
  `"midpoint"` (the midpoint between a critic's mean score on the test clips and on its own generator's
  samples) was the earlier default: a good generator pulls its critic's midpoint into the real scores, so
  the better model's critic rejects more real clips (measured: 5.5% vs 0% for a trained vs an untrained
  model) and r_test blocks the verdict. A float uses that fixed score for both critics.
- "r_test ~ 1" is a significance test, not a fixed band: the critics' paired decisions on the test clips
  must not differ significantly (exact McNemar test, p >= `alpha` = 0.05). A ratio of two small error
  rates is too noisy for a fixed band (10% +- 3% on 64 clips gives r_test anywhere in 0.6-1.6).
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

import scipy.stats
import torch

from recipes.models.tgan import VideoCritic, VideoGenerator
from recipes.train_tgan import TGANConfig, load_models

SCORE_DEFINITION = (
    "score = 1 / r_sample = eps(D_B(G_A(z))) / eps(D_A(G_B(z))) (TGAN Table 3 orientation): "
    "> 1 model A wins, < 1 model B wins, when the critics' test errors do not differ significantly"
)


@dataclasses.dataclass
class GamModel:
    """One contestant: a generator (z0 -> video) and its critic (video -> score)."""

    gen: VideoGenerator
    critic: VideoCritic
    name: str = ""


@dataclasses.dataclass
class GamResult:
    score: float  # 1 / r_sample, TGAN Table 3's orientation: > 1 = model A wins
    r_test: float
    r_sample: float  # Im et al.'s orientation: < 1 = model A wins
    winner: str  # "a", "b" or "tie"
    fair: bool  # the critics' test error rates do not differ significantly ("r_test ~ 1")
    p_test: float  # McNemar exact p-value of the critics' paired decisions on the test clips
    error_test: tuple[float, float]  # eps(D_A(x_test)), eps(D_B(x_test))
    error_sample: tuple[float, float]  # eps(D_A(G_B(z))), eps(D_B(G_A(z)))
    thresholds: tuple[float, float]
    n_test: int  # real clips the test errors are measured on (after the calibration half, if any)
    n_samples: int
    protocol: dict[str, Any]


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 1.0 if num == 0 else float("inf")
    return num / den


def mcnemar_p(reject_a: torch.Tensor, reject_b: torch.Tensor) -> float:
    """Two-sided exact McNemar test: do two classifiers' error rates on the same items differ? (p-value)"""
    b = int((reject_a & ~reject_b).sum())
    c = int((reject_b & ~reject_a).sum())
    if b + c == 0:
        return 1.0
    return float(scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue)


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
def _scores_of_real(
    critics: tuple[VideoCritic, VideoCritic], test_videos: Iterable[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(critics[0].parameters()).device
    out: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    for video in test_videos:
        video = video.to(device)
        for scores, critic in zip(out, critics, strict=True):
            scores.append(critic(video).float().cpu())
    if not out[0]:
        raise ValueError("GAM needs real test clips, got none")
    return torch.cat(out[0]), torch.cat(out[1])


@torch.no_grad()
def gam_score(
    a: GamModel,
    b: GamModel,
    test_videos: Iterable[torch.Tensor],
    *,
    n_samples: int = 2048,
    batch_size: int = 32,
    threshold: str | float = "calibrated",
    quantile: float = 0.1,
    alpha: float = 0.05,
    seed: int = 0,
) -> GamResult:
    """Battle `a` (model A) against `b` (model B) on real test clips (batches (B, C, T, H, W) in [-1, 1]).

    `threshold`: "calibrated" (each critic calls fake the lowest `quantile` of its scores on the even-indexed
    test clips; the test errors are measured on the odd-indexed ones), "midpoint" (between its mean scores
    on the test clips and on its own generator's samples) or a fixed score. The verdict needs the critics'
    test decisions not to differ significantly (McNemar p >= `alpha`).
    """
    if a.gen.n_classes or b.gen.n_classes:
        raise ValueError("GAM is implemented for unconditional models only")
    for m in (a.gen, a.critic, b.gen, b.critic):
        m.eval()
    s_test = _scores_of_real((a.critic, b.critic), test_videos)

    # Each generator draws the same z sequence (seeded), so the battle does not depend on the call order.
    def draw(critic: VideoCritic, gen: VideoGenerator) -> torch.Tensor:
        return _scores_of_samples(critic, gen, n_samples, batch_size, torch.Generator().manual_seed(seed))

    a_on_b, b_on_a = draw(a.critic, b.gen), draw(b.critic, a.gen)  # D_A(G_B(z)), D_B(G_A(z))
    if threshold == "calibrated":
        if len(s_test[0]) < 4:
            raise ValueError("calibrated thresholds need at least 4 real test clips")
        thr = tuple(float(torch.quantile(s[0::2], quantile)) for s in s_test)
        s_test = (s_test[0][1::2], s_test[1][1::2])
    elif threshold == "midpoint":
        own_a, own_b = draw(a.critic, a.gen), draw(b.critic, b.gen)
        thr = (
            float((s_test[0].mean() + own_a.mean()) / 2),
            float((s_test[1].mean() + own_b.mean()) / 2),
        )
    elif isinstance(threshold, int | float) and not isinstance(threshold, bool):
        thr = (float(threshold), float(threshold))
    else:
        raise ValueError(f"threshold must be 'calibrated', 'midpoint' or a number, got {threshold!r}")
    rejected = (s_test[0] < thr[0], s_test[1] < thr[1])
    err_test = (float(rejected[0].float().mean()), float(rejected[1].float().mean()))
    err_sample = (float((a_on_b >= thr[0]).float().mean()), float((b_on_a >= thr[1]).float().mean()))
    r_test, r_sample = _ratio(*err_test), _ratio(*err_sample)
    p_test = mcnemar_p(*rejected)
    fair = p_test >= alpha
    winner = "a" if fair and r_sample < 1 else "b" if fair and r_sample > 1 else "tie"
    return GamResult(
        score=_ratio(err_sample[1], err_sample[0]),
        r_test=r_test,
        r_sample=r_sample,
        winner=winner,
        fair=fair,
        p_test=p_test,
        error_test=err_test,
        error_sample=err_sample,
        thresholds=thr,  # type: ignore[arg-type]
        n_test=len(s_test[0]),
        n_samples=n_samples,
        protocol={
            "score": SCORE_DEFINITION,
            "threshold": threshold,
            "quantile": quantile if threshold == "calibrated" else None,
            "fairness": f"McNemar exact test of the paired test decisions, p >= {alpha}",
            "seed": seed,
            "mode": "eval (BN running stats)",
        },
    )


def load_tgan(path: str | Path, device: torch.device | str = "cpu") -> tuple[GamModel, TGANConfig]:
    """A `train_tgan` checkpoint as a GAM contestant (weights_only load)."""
    gen, critic, cfg = load_models(path, device)
    return GamModel(gen, critic, name=str(path)), cfg


def verdict(result: GamResult, a: str = "A", b: str = "B") -> str:
    """One line: the score, who wins and why (or why nobody does)."""
    line = f"GAM score {result.score:.3g} (r_sample {result.r_sample:.3g}, r_test {result.r_test:.3g}): "
    if not result.fair:
        return line + (
            f"no verdict, the critics judge real clips differently (McNemar p = {result.p_test:.3g})"
        )
    if result.winner == "tie":
        return line + "tie"
    return line + f"{a if result.winner == 'a' else b} wins"


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
    parser.add_argument("--a", required=True, help="train_tgan checkpoint of model A")
    parser.add_argument("--b", required=True, help="train_tgan checkpoint of model B")
    parser.add_argument("--data", required=True, help="held-out real clips (a store pipelines can read)")
    parser.add_argument("--n", type=int, default=2048, help="generated clips per generator and test clips")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threshold", default="calibrated", help="'calibrated', 'midpoint' or a fixed critic score"
    )
    parser.add_argument("--quantile", type=float, default=0.1, help="calibrated: real clips called fake")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the r_test check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)
    try:
        named = args.threshold in ("calibrated", "midpoint")
        threshold: str | float = args.threshold if named else float(args.threshold)
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
            quantile=args.quantile,
            alpha=args.alpha,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"gam: error: {exc}", file=sys.stderr)
        sys.exit(2)
    report = {"a": args.a, "b": args.b, "data": args.data, **dataclasses.asdict(result)}
    report["verdict"] = verdict(result, args.a, args.b)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        from datagen.store.atomic import atomic_path

        with atomic_path(Path(args.output)) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
