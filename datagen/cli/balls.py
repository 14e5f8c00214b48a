"""`datagen balls`: bouncing-balls videos with the RTRBM/TSBN generator's exact physics and rendering."""

from __future__ import annotations

from typing import Annotated

import typer

from datagen.cli import _common as c
from datagen.cli._app import app


@app.command("balls")
def balls_cli(
    n: c.N = 100_000,
    balls: Annotated[int, typer.Option("--balls", "-b", help="Balls per video.")] = 3,
    frames: c.Frames = 30,
    size: c.Size = 30,
    radius: Annotated[float, typer.Option("--radius", help="Ball radius in box units (box side 10).")] = 1.2,
    box: Annotated[float, typer.Option("--box", help="Side of the square box in world units.")] = 10.0,
    seed: c.Seed = None,
    out: c.Out = None,
    format: c.Format = "wds",
    shard_size: c.ShardSize = 1000,
    workers: c.Workers = None,
    scheduler: c.Scheduler = None,
    scheduler_timeout: c.SchedulerTimeout = c.DEFAULT_SCHEDULER_TIMEOUT,
    resume: c.Resume = False,
    overwrite: c.Overwrite = False,
    quiet: c.Quiet = False,
    fields: c.Fields = "video",
) -> None:
    """Bouncing balls: videos plus per-frame ball positions and velocities (pixels) as ground truth."""
    opts = c.RunOptions(
        out, seed, format, shard_size, workers, scheduler, resume, overwrite, quiet, scheduler_timeout
    )
    params = {"n_balls": balls, "frames": frames, "size": size, "radius": radius, "box": box}
    params = c.with_fields(params, fields)
    c.run_generation("balls", params, n=n, opts=opts, default_name=f"balls-{balls}b-{size}px-{frames}f-n{n}")
