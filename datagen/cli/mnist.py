"""`datagen mnist` (Moving MNIST from real digits) and `datagen convert mnist-test-seq` (fixed test set)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from datagen.cli import _common as c
from datagen.cli._app import app
from datagen.convert import MNIST_TEST_SEQ
from datagen.sim.mnist_variants import parse_range
from datagen.sources.mnist import source_spec

convert_app = typer.Typer(help="Turn existing dataset files into stores.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")


@app.command("mnist")
def mnist_cli(
    n: c.N = 10_000,
    frames: c.Frames = 20,
    digits: Annotated[int, typer.Option("--digits", "-d", help="Digits per video.")] = 2,
    size: c.Size = 64,
    speed: Annotated[
        float,
        typer.Option(
            "--speed", help="Step per frame as a fraction of the free range (0.1: 3.6 px at 64 px)."
        ),
    ] = 0.1,
    overlap: Annotated[
        str,
        typer.Option("--overlap", help="max (Srivastava et al.) or sum (clipped to 255, the common copy)."),
    ] = "max",
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="Digits from the train or test split [default: train, or the given file's]."
        ),
    ] = None,
    mnist: Annotated[
        Path | None,
        typer.Option(
            "--mnist",
            help="MNIST IDX folder or images file (plain or .gz), or .npz with x/y [default: built-in].",
        ),
    ] = None,
    download: Annotated[
        bool,
        typer.Option("--download", help="Fetch the official MNIST files (md5-checked) into the user cache."),
    ] = False,
    bounce: Annotated[
        str,
        typer.Option(
            "--bounce",
            help="reflect (Srivastava et al.) or random (SVG, Denton & Fergus 2018: a new random velocity "
            "away from the wall at each hit, per-axis steps of 1/4..4/4 of --speed).",
        ),
    ] = "reflect",
    rotation: Annotated[
        float,
        typer.Option(
            "--rotation",
            help="Max angular speed in degrees per frame; each digit turns at U[-r, r] [0: off].",
        ),
    ] = 0.0,
    scale: Annotated[
        str | None,
        typer.Option(
            "--scale",
            help="Scale range LO-HI (e.g. 0.6-1.4): each digit's scale oscillates smoothly in it [off].",
        ),
    ] = None,
    scale_period: Annotated[
        float | None,
        typer.Option("--scale-period", help="Frames per scale oscillation [20; needs --scale]."),
    ] = None,
    colors: Annotated[
        str | None,
        typer.Option(
            "--colors", help="RGB digits, a colour per digit: palette (8 colours) or random (a hue) [off]."
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
    """Moving MNIST (Srivastava et al.): videos plus digit labels, ids, per-frame positions and velocities.

    Variants (off by default): --bounce random, --rotation, --scale, --colors; their per-digit trajectories
    (angles, scales, colors) are added to each clip's meta. --fields adds instance masks, exact flow, wall
    events and per-digit visible fractions.

    Without --mnist or --download the digits are the 5,000 real MNIST digits built in (4,500 train, 500 test).
    """
    opts = c.RunOptions(
        out, seed, format, shard_size, workers, scheduler, resume, overwrite, quiet, scheduler_timeout
    )
    opts = dataclasses.replace(opts, retries=retries)
    params = {
        "frames": frames,
        "size": size,
        "digits": digits,
        "speed": speed,
        "overlap": overlap,
        "source": source_spec(mnist, download=download, split=split),
        "bounce": bounce,
        "rotation": rotation,
        "scale": None if scale is None else parse_range(scale, "--scale"),
        "scale_period": scale_period,
        "colors": colors,
    }
    name = f"mnist-{digits}d-{size}px-{frames}f-n{n}"
    c.run_generation("mnist", c.with_fields(params, fields), n=n, opts=opts, default_name=name)


@convert_app.command("mnist-test-seq")
def mnist_test_seq_cli(
    file: Annotated[Path, typer.Argument(help="mnist_test_seq.npy: uint8 (20, N, 64, 64), time first.")],
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
) -> None:
    """The fixed Moving MNIST test sequences as a store: sample i is sequence i, as (20, 64, 64, 1)."""
    opts = c.RunOptions(
        out, 0, format, shard_size, workers, scheduler, resume, overwrite, quiet, scheduler_timeout
    )
    opts = dataclasses.replace(opts, retries=retries)
    params = MNIST_TEST_SEQ.validate({"path": str(file)})
    c.run_generation(
        "mnist_test_seq", params, n=params["n_sequences"], opts=opts, default_name="mnist_test_seq"
    )
