"""`datagen balls`: bouncing-balls videos with the RTRBM/TSBN generator's exact physics and rendering."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from datagen.cli import _common as c
from datagen.cli._app import app
from datagen.errors import DatagenError


def parse_range(text: str, what: str, kind: type) -> tuple:
    """`"1-5"` (or one value) -> (lo, hi) of `kind`; a one-line DatagenError otherwise."""
    try:
        values = [kind(v) for v in text.split("-")]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise DatagenError(f"{what} must be one {kind.__name__} or LO-HI, e.g. 1-5, got {text!r}")
    return values[0], values[-1]


@app.command("balls")
def balls_cli(
    n: c.N = 100_000,
    balls: Annotated[
        str, typer.Option("--balls", "-b", help="Balls per video, or LO-HI: a uniform count per clip.")
    ] = "3",
    frames: c.Frames = 30,
    size: c.Size = 30,
    radius: Annotated[
        str,
        typer.Option("--radius", help="Ball radius in box units (box side 10), or LO-HI: uniform per ball."),
    ] = "1.2",
    box: Annotated[float, typer.Option("--box", help="Side of the square box in world units.")] = 10.0,
    masses: Annotated[
        str | None,
        typer.Option("--masses", help="Mass range LO-HI, uniform per ball; elastic collisions [off: all 1]."),
    ] = None,
    gravity: Annotated[
        float, typer.Option("--gravity", help="Acceleration down the rows, box units per frame^2.")
    ] = 0.0,
    damping: Annotated[
        float, typer.Option("--damping", help="Velocity fraction lost per frame (drag), in [0, 1).")
    ] = 0.0,
    restitution: Annotated[
        float,
        typer.Option("--restitution", help="Normal speed kept at a wall bounce, in (0, 1]; 1 is elastic."),
    ] = 1.0,
    colors: Annotated[
        str | None,
        typer.Option("--colors", help="RGB balls, a colour per ball: palette (8 colours) or random [off]."),
    ] = None,
    occluder: Annotated[
        str | None,
        typer.Option(
            "--occluder",
            help="A white vertical curtain in front over LO-HI of the frame width, e.g. 0.4-0.6.",
        ),
    ] = None,
    seed: c.Seed = None,
    out: c.StoreOut = None,
    format: c.Format = "wds",
    shard_size: c.ShardSize = 1000,
    workers: c.Workers = None,
    scheduler: c.Scheduler = None,
    scheduler_timeout: c.SchedulerTimeout = c.DEFAULT_SCHEDULER_TIMEOUT,
    resume: c.Resume = False,
    overwrite: c.Overwrite = False,
    quiet: c.Quiet = False,
    retries: c.Retries = c.DEFAULT_RETRIES,
    fields: c.Fields = "video",
) -> None:
    """Bouncing balls: videos plus per-frame ball positions and velocities (pixels) as ground truth.

    Variants (off by default; datagen.sim.balls_variants): a count range (--balls 1-5), a radius range,
    masses, gravity, damping, wall restitution, colours and an occluding curtain.
    """
    opts = c.RunOptions(
        out, seed, format, shard_size, workers, scheduler, resume, overwrite, quiet, scheduler_timeout
    )
    opts = dataclasses.replace(opts, retries=retries)
    lo_balls, n_balls = parse_range(balls, "--balls", int)
    lo_radius, hi_radius = parse_range(radius, "--radius", float)
    params = {
        "n_balls": n_balls,
        "frames": frames,
        "size": size,
        "radius": hi_radius,
        "box": box,
        "min_balls": lo_balls,
        "min_radius": lo_radius,
        "masses": None if masses is None else list(parse_range(masses, "--masses", float)),
        "gravity": gravity,
        "damping": damping,
        "restitution": restitution,
        "colors": colors,
        "occluder": None if occluder is None else list(parse_range(occluder, "--occluder", float)),
    }
    params = c.with_fields(params, fields)
    c.run_generation("balls", params, n=n, opts=opts, default_name=f"balls-{balls}b-{size}px-{frames}f-n{n}")
