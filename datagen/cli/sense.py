"""`datagen sense cup SOURCE --out DIR`: what a compressed-ultrafast-photography camera records of a store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datagen.cli import _common as c
from datagen.cli._app import app
from datagen.sense.cup import CupParams

sense_app = typer.Typer(
    name="sense", help="Sensing simulators over any store: (sensed, scene) pairs.", no_args_is_help=True
)
app.add_typer(sense_app, name="sense")
_D = CupParams()


@sense_app.command("cup")
def cup_cli(
    source: Annotated[Path, typer.Argument(help="A store this project wrote (folder or manifest.json).")],
    shear: Annotated[int, typer.Option("--shear", help="Sensor rows the sweep moves per frame.")] = _D.shear,
    fill: Annotated[float, typer.Option("--fill", help="Fraction of open mask pixels, in (0, 1].")] = _D.fill,
    mask_seed: Annotated[
        int, typer.Option("--mask-seed", help="Seed of the fixed binary mask.")
    ] = _D.mask_seed,
    photons: Annotated[
        float, typer.Option("--photons", help="Expected electrons of a white pixel in one frame.")
    ] = _D.photons,
    gain: Annotated[float, typer.Option("--gain", help="Digital numbers per electron.")] = _D.gain,
    read_noise: Annotated[
        float, typer.Option("--read-noise", help="Read noise, electrons rms.")
    ] = _D.read_noise,
    bits: Annotated[int, typer.Option("--bits", help="ADC bit depth, 1..16 (uint16 output).")] = _D.bits,
    complementary: Annotated[
        bool, typer.Option("--complementary", help="Also record the complementary-mask view (V = 2).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Root seed of the sensor noise.")] = 0,
    out: c.Out = None,
    format: c.Format = "wds",
    workers: c.Workers = None,
    scheduler: c.Scheduler = None,
    scheduler_timeout: c.SchedulerTimeout = c.DEFAULT_SCHEDULER_TIMEOUT,
    resume: c.Resume = False,
    overwrite: c.Overwrite = False,
    quiet: c.Quiet = False,
) -> None:
    """CUP: each frame masked by one fixed binary mask, sheared by t * shear rows, integrated on one sensor
    of (H + (T - 1) * shear, W), then shot noise, read noise, gain and quantization (seeded per sample)."""
    from datagen.sense.job import cup_job

    opts = c.RunOptions(out, seed, format, 1, workers, scheduler, resume, overwrite, quiet, scheduler_timeout)
    params = {
        "shear": shear,
        "fill": fill,
        "mask_seed": mask_seed,
        "photons": photons,
        "gain": gain,
        "read_noise": read_noise,
        "bits": bits,
        "complementary": complementary,
    }
    target = out or Path("data") / f"cup-{Path(source).resolve().name}"
    job = cup_job(target, source, params, seed=seed, formats=c.formats_of(format))
    c.run_job(job, opts)
