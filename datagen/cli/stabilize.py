"""`datagen stabilize`: VideoGAN-style SIFT + RANSAC stabilization of real videos into 32-frame clips."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from datagen.cli import _common as c
from datagen.cli._app import app
from datagen.errors import DatagenError
from datagen.sources.video import expand_inputs
from datagen.stabilize.job import VIDEOGAN_DIR, NoReadableInput, stabilization_job
from datagen.stabilize.params import DEFAULT_MATCH_SHORT_SIDE
from datagen.stabilize.videogan_format import write_list
from datagen.store.ownership import remove_store


def stabilize(inputs: list[str], params: dict, *, opts: c.RunOptions, videogan: bool = False) -> dict:
    """Plan and run the stabilization job; returns the manifest (its `stabilize` entry has the figures).

    When not one input can be read (NoReadableInput, exit 2) no store is written, and an --out that was
    missing or empty before is left so: what this run put there is removed. A folder that held an
    interrupted run keeps its job file and journal (they name the failed inputs).
    """
    out = Path(opts.out or Path("data") / "stabilized")
    seed = 0 if opts.seed is None else opts.seed
    job = stabilization_job(
        out, expand_inputs(inputs), params, seed=seed, formats=c.formats_of(opts.format), videogan=videogan
    )
    existed = out.exists()
    fresh = not existed or (out.is_dir() and not any(out.iterdir()))
    try:
        manifest = c.run_job(job, opts, unit="clips")
    except NoReadableInput:
        if fresh and out.is_dir():
            with contextlib.suppress(DatagenError, OSError):  # a folder we may not clear stays as it is
                remove_store(out)
                if not existed:
                    out.rmdir()
        raise
    if videogan:
        write_list(Path(out) / VIDEOGAN_DIR)
    return manifest


@app.command("stabilize")
def stabilize_cli(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Video files, VideoGAN stacked-JPEG clips, frame folders, globs or list files."),
    ],
    size: Annotated[int, typer.Option("--size", "-s", help="Output frame side (VideoGAN: 128).")] = 64,
    frames: Annotated[int, typer.Option("--frames", "-t", help="Clip length: clips are cut here.")] = 32,
    min_frames: Annotated[int, typer.Option("--min-frames", help="Drop shorter clips.")] = 16,
    match_res: Annotated[
        int, typer.Option("--match-res", help="Short side for SIFT matching; 0 = full resolution (VideoGAN).")
    ] = DEFAULT_MATCH_SHORT_SIDE,
    matcher: Annotated[str, typer.Option("--matcher", help="bf (exact) or flann (VideoGAN).")] = "bf",
    fill: Annotated[str, typer.Option("--fill", help="previous (VideoGAN) or crop.")] = "previous",
    on_match_failure: Annotated[
        str,
        typer.Option("--on-match-failure", help="cut: end the clip there; drop: drop it (VideoGAN code)."),
    ] = "cut",
    resize_interp: Annotated[
        str, typer.Option("--resize-interp", help="area or linear (VideoGAN).")
    ] = "area",
    skip_frames: Annotated[int, typer.Option("--skip-frames", help="Skip each video's first frames.")] = 2,
    max_clips: Annotated[int, typer.Option("--max-clips", help="At most this many clips per video.")] = 100,
    max_residual_motion: Annotated[
        float, typer.Option("--max-residual-motion", help="Reject clips above (output px).")
    ] = 0.5,
    max_filled: Annotated[
        float, typer.Option("--max-filled", help="Reject clips above this filled fraction.")
    ] = 0.3,
    min_inlier_ratio: Annotated[float, typer.Option("--min-inlier-ratio", help="Reject clips below.")] = 0.2,
    videogan: Annotated[
        bool, typer.Option("--videogan", help="Also write stacked-JPEG clips + list.txt.")
    ] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seeds RANSAC [default: 0].")] = None,
    out: c.Out = None,
    format: c.Format = "wds",
    workers: c.Workers = None,
    scheduler: c.Scheduler = None,
    scheduler_timeout: c.SchedulerTimeout = c.DEFAULT_SCHEDULER_TIMEOUT,
    resume: c.Resume = False,
    overwrite: c.Overwrite = False,
    quiet: c.Quiet = False,
) -> None:
    """Stabilize real videos (SIFT, ratio 0.7, RANSAC 5 px, chained to each clip's first frame) into clips."""
    opts = c.RunOptions(out, seed, format, 1, workers, scheduler, resume, overwrite, quiet, scheduler_timeout)
    params = {
        "size": size,
        "max_frames": frames,
        "min_frames": min_frames,
        "match_short_side": match_res or None,
        "matcher": matcher,
        "fill": fill,
        "on_match_failure": on_match_failure,
        "resize_interp": resize_interp,
        "skip_frames": skip_frames,
        "max_clips": max_clips,
        "max_residual_motion": max_residual_motion,
        "max_filled_fraction": max_filled,
        "min_inlier_ratio": min_inlier_ratio,
    }
    manifest = stabilize(inputs, params, opts=opts, videogan=videogan)
    if not quiet:
        s = manifest["stabilize"]
        q = s["quality"]
        c.err.print(
            f"{s['videos']} videos: {s['clips_kept']} clips kept, {s['clips_rejected']} rejected by quality, "
            f"{s['clips_dropped_short']} too short, {len(s['unreadable'])} unreadable"
        )
        for u in s["unreadable"]:
            c.err.print(f"unreadable: {u['source']}: {u['reason']}")
        if q["itf_before"] is not None:
            c.err.print(
                f"ITF {q['itf_before']:.2f} -> {q['itf_after']:.2f} dB; stability (min) "
                f"{q['stability_before']:.3f} -> {q['stability_after']:.3f}; residual motion "
                f"{q['residual_motion_before_mean']:.3f} -> {q['residual_motion_after_mean']:.3f} px"
            )
