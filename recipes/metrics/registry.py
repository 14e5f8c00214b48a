"""Metric registry in the style of NVlabs/stylegan3 ``metric_main.py``: the name is the protocol.

A metric name is ``<family><clips>_<frames>f`` (StyleGAN-V's ``fvd2048_16f``): ``clips`` videos per source,
each a random window of ``frames`` frames. Families are registered with :func:`register_metric`; each is a
few lines that fix the constants, call the ``compute`` function of its module and return a flat dict. Options
are a frozen :class:`MetricOptions`; a metric that needs different options makes a copy
(``dataclasses.replace``), never mutates the caller's (stylegan-v's copy-before-mutate).

Sources are named: ``real`` and ``fake`` (FVD needs both), optionally ``baseline`` (FrameGAN's independent
latent codes) or any other name; per-source metrics report ``<source>/<value>``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from datagen.errors import DatagenError
from recipes.metrics.sources import VideoSource

DEFAULT_METRICS = ("adjacent_mse256_30f", "physics_balls256_30f", "mnist_identity256_20f", "fvd2048_16f")


@dataclass(frozen=True)
class MetricOptions:
    sources: Mapping[str, VideoSource] = field(default_factory=lambda: MappingProxyType({}))
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 8
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


MetricFn = Callable[[MetricOptions, int, int], dict[str, Any]]
_FAMILIES: dict[str, MetricFn] = {}
_NAME = re.compile(r"^(?P<family>[a-z_]+?)(?P<clips>\d+)_(?P<frames>\d+)f$")


def register_metric(fn: MetricFn) -> MetricFn:
    _FAMILIES[fn.__name__] = fn
    return fn


def families() -> list[str]:
    return sorted(_FAMILIES)


def parse_metric(name: str) -> tuple[MetricFn, int, int]:
    match = _NAME.match(name)
    if not match or match["family"] not in _FAMILIES:
        raise DatagenError(
            f"unknown metric {name!r}: use <family><clips>_<frames>f, family one of {', '.join(families())}"
        )
    return _FAMILIES[match["family"]], int(match["clips"]), int(match["frames"])


def calc_metric(name: str, opts: MetricOptions) -> dict[str, Any]:
    """Run one metric; returns ``{"metric", "results", "protocol", "total_time"}`` (JSON-ready)."""
    fn, clips, frames = parse_metric(name)
    start = time.time()
    out = fn(opts, clips, frames)
    results = {k: _json_number(v) for k, v in out.pop("results").items()}
    return {
        "metric": name,
        "results": results,
        "protocol": out.get("protocol", {}),
        "total_time": time.time() - start,
    }


def report_metric(result: Mapping[str, Any], run_dir: str | Path) -> Path:
    """Append ``result`` to ``<run_dir>/metric-<name>.jsonl`` (stylegan3's format)."""
    path = Path(run_dir) / f"metric-{result['metric']}.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(result), sort_keys=True) + "\n")
    return path


def _json_number(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _per_source(
    opts: MetricOptions,
    compute: Callable[[Any], Mapping[str, float]],
    clips: int,
    frames: int,
    across: Callable[[dict[str, dict[str, Any]]], Mapping[str, Mapping[str, Any]]] | None = None,
):
    """``compute`` on each source's clips, flattened to ``<source>/<key>``; ``across`` may first relate the
    sources' dicts to each other (e.g. ratios to ``real``)."""
    per = {
        name: dict(compute(source.clips(clips, frames, seed=opts.seed)))
        for name, source in opts.sources.items()
    }
    if across is not None:
        per = dict(across(per))
    results = {f"{name}/{key}": value for name, values in per.items() for key, value in values.items()}
    if not results:
        raise DatagenError("no videos to evaluate: give at least one source")
    return results


def _protocol(opts: MetricOptions, clips: int, frames: int, **extra: Any) -> dict[str, Any]:
    sources = {name: {"digest": s.digest, "shape": list(s.shape)} for name, s in opts.sources.items()}
    return {"clips": clips, "frames": frames, "seed": opts.seed, "sources": sources, **extra}


# --- families ---


@register_metric
def adjacent_mse(opts: MetricOptions, clips: int, frames: int) -> dict[str, Any]:
    from recipes.metrics.adjacent_mse import adjacent_mse_summary

    results = _per_source(opts, adjacent_mse_summary, clips, frames)
    return {
        "results": results,
        "protocol": _protocol(opts, clips, frames, binarise="x > 0", std="population"),
    }


@register_metric
def physics_balls(opts: MetricOptions, clips: int, frames: int) -> dict[str, Any]:
    from dataclasses import asdict

    from recipes.metrics.diversity import CollapseThresholds, compare_to_real
    from recipes.metrics.physics_balls import BallsThresholds, physics_balls_metrics

    geometry = balls_geometry(opts)
    thresholds = BallsThresholds(**opts.extra.get("balls_thresholds", {}))
    collapse = CollapseThresholds(**opts.extra.get("collapse_thresholds", {}))
    results = _per_source(
        opts,
        lambda v: physics_balls_metrics(v, geometry, thresholds, collapse=collapse),
        clips,
        frames,
        across=lambda per: compare_to_real(per, radius_px=geometry.radius_px, thresholds=collapse),
    )
    protocol = _protocol(
        opts,
        clips,
        frames,
        geometry=asdict(geometry),
        thresholds=asdict(thresholds),
        collapse_thresholds=asdict(collapse),
    )
    return {"results": results, "protocol": protocol}


@register_metric
def mnist_identity(opts: MetricOptions, clips: int, frames: int) -> dict[str, Any]:
    from recipes.metrics.mnist_identity import mnist_identity_metrics
    from recipes.models.digit_classifier import RECIPE, load_digit_classifier

    params = _generator_params(opts, "mnist")
    source = opts.extra.get("digit_source") or {"kind": "builtin", "split": "train"}
    classifier = load_digit_classifier(source)
    n_digits = int(opts.extra.get("n_digits", params.get("digits", 2)))
    results = _per_source(
        opts, lambda v: mnist_identity_metrics(v, classifier, n_digits=n_digits), clips, frames
    )
    protocol = _protocol(opts, clips, frames, n_digits=n_digits, classifier={"source": source, **RECIPE})
    return {"results": results, "protocol": protocol}


@register_metric
def fvd(opts: MetricOptions, clips: int, frames: int) -> dict[str, Any]:
    from recipes.metrics.fvd import GaussianStats, I3DFeatures, cached_stats, frechet_distance, fvd_protocol

    if "real" not in opts.sources or "fake" not in opts.sources:
        raise DatagenError("FVD needs a 'real' and a 'fake' source")
    resize = opts.extra.get("fvd_resize", "tf1")
    detector = I3DFeatures(device=opts.device, resize=resize, batch_size=opts.batch_size)
    real, fake = opts.sources["real"], opts.sources["fake"]

    def features(source: VideoSource) -> np.ndarray:
        chunks = source.iter_clips(clips, frames, seed=opts.seed, chunk=16 * opts.batch_size)
        return np.concatenate([detector(chunk) for chunk in chunks])

    def real_features() -> np.ndarray:
        return features(real)

    key = {"digest": real.digest, "detector": detector.detector_id, "clips": clips, "frames": frames}
    real_stats = cached_stats({**key, "seed": opts.seed}, real_features)
    fake_stats = GaussianStats.of(features(fake))
    value = frechet_distance(real_stats, fake_stats)
    protocol = {
        **_protocol(opts, clips, frames),
        **fvd_protocol(
            clips_real=clips, clips_fake=clips, frames=frames, resolution=fake.shape[2:], resize=resize
        ),
    }
    return {"results": {f"fvd{clips}_{frames}f": value}, "protocol": protocol}


def _paired(opts: MetricOptions, clips: int, frames: int) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """The ``real`` and ``fake`` sources' clips, clip i of one against clip i of the other (the same picks and
    windows: see ``ArrayVideos.windows``), plus those picks and windows."""
    real, fake = opts.sources.get("real"), opts.sources.get("fake")
    if real is None or fake is None:
        raise DatagenError("a paired metric needs a 'real' and a 'fake' source")
    if not (hasattr(real, "windows") and hasattr(fake, "windows")) or real.shape != fake.shape:
        raise DatagenError("a paired metric needs array sources of the same shape (clip i against clip i)")
    if len(real) != len(fake):
        raise DatagenError(
            f"a paired metric needs as many fake clips as real ones ({len(fake)} != {len(real)})"
        )
    pick, start, _ = real.windows(clips, frames, seed=opts.seed)
    return real.clips(clips, frames, seed=opts.seed), fake.clips(clips, frames, seed=opts.seed), pick, start


@register_metric
def reconstruction(opts: MetricOptions, clips: int, frames: int) -> dict[str, Any]:
    """Pixel errors of ``fake`` clip i against ``real`` clip i (reconstructions, e.g. GLO's): mean L1, MSE
    and Lap1 (``recipes.losses.laplacian``: ``extra`` ``lap_levels``, ``lap_weighting``)."""
    from recipes.losses.laplacian import LaplacianLoss

    real, fake, _, _ = _paired(opts, clips, frames)
    levels, weighting = int(opts.extra.get("lap_levels", 3)), opts.extra.get("lap_weighting", "mean")
    lap = LaplacianLoss(levels, weighting=weighting)
    results = {
        "fake/l1": (fake - real).abs().mean().item(),
        "fake/mse": (fake - real).square().mean().item(),
        "fake/lap1": lap(fake, real).mean().item(),
    }
    protocol = _protocol(opts, clips, frames, pairs="fake clip i vs real clip i", lap_levels=levels,
                         lap_weighting=weighting)  # fmt: skip
    return {"results": results, "protocol": protocol}


@register_metric
def psnr_ssim(opts: MetricOptions, clips: int, frames: int) -> dict[str, Any]:
    """PSNR (dB) and SSIM per frame of ``fake`` clip i against ``real`` clip i, averaged over frames and
    clips (``recipes.metrics.psnr_ssim``): how close reconstructions (CUP) are to their scenes."""
    from recipes.metrics.psnr_ssim import psnr_frames, ssim_frames

    real, fake, _, _ = _paired(opts, clips, frames)
    results = {
        "fake/psnr": psnr_frames(fake, real).mean().item(),
        "fake/ssim": ssim_frames(fake, real).mean().item(),
    }
    return {
        "results": results,
        "protocol": _protocol(opts, clips, frames, pairs="fake clip i vs real clip i"),
    }


@register_metric
def ball_positions(opts: MetricOptions, clips: int, frames: int) -> dict[str, Any]:
    """Detected balls of ``real`` and ``fake`` against the true centres of the real clips
    (``recipes.metrics.ball_positions``): ``extra["ball_truth"]`` is a ``(N, T, n_balls, 2)`` array (or its
    ``.npy`` path) of (row, col) centres in the videos' pixels, row i for real clip i."""
    from dataclasses import asdict

    from recipes.metrics.ball_positions import ball_position_metrics

    truth = opts.extra.get("ball_truth")
    if truth is None:
        raise DatagenError("ball_positions needs extra['ball_truth']: the real clips' true centres")
    truth = np.load(truth, allow_pickle=False) if isinstance(truth, str | Path) else np.asarray(truth)
    if len(truth) != len(opts.sources["real"]):
        raise DatagenError(
            f"ball_truth has {len(truth)} rows, the real source {len(opts.sources['real'])} clips"
        )
    geometry = balls_geometry(opts)
    real, fake, pick, start = _paired(opts, clips, frames)
    truth = np.stack([truth[i, s : s + frames] for i, s in zip(pick, start, strict=True)])
    results = {
        f"{name}/{key}": value
        for name, videos in (("real", real), ("fake", fake))
        for key, value in ball_position_metrics(videos, truth, geometry).items()
    }
    return {"results": results, "protocol": _protocol(opts, clips, frames, geometry=asdict(geometry))}


def _generator_params(opts: MetricOptions, generator: str) -> dict[str, Any]:
    """Params of the first source (real first) made by ``generator``, else {}."""
    ordered = sorted(opts.sources.items(), key=lambda kv: kv[0] != "real")
    for _, source in ordered:
        if getattr(source, "generator", None) == generator:
            return dict(source.params)
    return {}


def balls_geometry(opts: MetricOptions):
    """Ball geometry from a balls store's params (or ``extra``), resolution from the videos otherwise."""
    from recipes.metrics.physics_balls import BallsGeometry

    params = {**_generator_params(opts, "balls"), **opts.extra.get("balls", {})}
    size = params.get("size") or next(iter(opts.sources.values())).shape[-1]
    return BallsGeometry.for_simulator(
        int(size),
        n_balls=int(params.get("n_balls", 3)),
        radius=float(params.get("radius", 1.2)),
        box_size=float(params.get("box", 10.0)),
    )
