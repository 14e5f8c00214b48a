"""Options and plumbing shared by every generating command (balls, mnist, convert, stabilize, build)."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from datagen.errors import DatagenError, Interrupted
from datagen.jobs import JOB_FILE, StoreJob, generation_job, run_store_job, stored_record
from datagen.parallel import DEFAULT_RETRIES, DEFAULT_SCHEDULER_TIMEOUT, default_workers
from datagen.store.location import is_url, normalize
from datagen.store.manifest import MANIFEST

err = Console(stderr=True, highlight=False, soft_wrap=True)
INTERRUPTED = "interrupted; --resume continues"

N = Annotated[int, typer.Option("--n", "-n", help="Number of videos.")]
Frames = Annotated[int, typer.Option("--frames", "-t", help="Frames per video.")]
Size = Annotated[int, typer.Option("--size", "-s", help="Frame height and width in pixels.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Root seed; drawn and recorded when omitted.")]


def local_out(value: Path | None) -> Path | None:
    """--out of the commands that write local folders only: a URL would become a folder named 's3:'."""
    if value is not None and URL_LIKE.match(str(value)):
        raise typer.BadParameter(f"{value} looks like a URL; this command writes a local folder only")
    return value


URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")  # what Path() leaves of `s3://...` (not `C:/`)
Out = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Store folder [default: data/<dataset name>].", callback=local_out),
]
StoreOut = Annotated[
    str | None,
    typer.Option(
        "--out",
        "-o",
        help="Store folder, or a URL: s3://bucket/prefix, gs://..., file://... (credentials from the usual "
        "fsspec/boto configuration) [default: data/<dataset name>].",
    ),
]
Retries = Annotated[
    int,
    typer.Option("--retries", help="Times Dask reruns a failed task (a dropped connection, a lost node)."),
]
Format = Annotated[str, typer.Option("--format", "-f", help="Store format: wds, hdf5 or both.")]
ShardSize = Annotated[int, typer.Option("--shard-size", help="Videos per shard.")]
Workers = Annotated[
    int | None,
    typer.Option("--workers", "-w", help="Local Dask workers [default: CPU count]; 0 runs in-process."),
]
Scheduler = Annotated[
    str | None, typer.Option("--scheduler", help="Address of a running Dask scheduler, e.g. tcp://host:8786.")
]
SchedulerTimeout = Annotated[
    float,
    typer.Option("--scheduler-timeout", help="Seconds to wait for --scheduler to answer before giving up."),
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the existing store in --out.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
Fields = Annotated[
    str,
    typer.Option(
        "--fields",
        help="Per-sample fields, comma-separated: video (always), mask, flow (arrays), events, visibility "
        "(ground truth in meta). Default video only: the same bytes as before fields existed.",
    ),
]


def with_fields(params: dict[str, Any], fields: str) -> dict[str, Any]:
    """`params` plus a `fields` entry when --fields asks for more than the video (checked by the job)."""
    return {**params, "fields": fields} if fields.strip() not in ("", "video") else params


@dataclass(frozen=True)
class RunOptions:
    """The options every generating command takes, after parsing."""

    out: Path | str | None  # a folder, or a store URL (generation commands)
    seed: int | None
    format: str
    shard_size: int
    workers: int | None
    scheduler: str | None
    resume: bool
    overwrite: bool
    quiet: bool
    scheduler_timeout: float = DEFAULT_SCHEDULER_TIMEOUT
    retries: int = DEFAULT_RETRIES


def formats_of(fmt: str) -> list[str]:
    choices = {"wds": ["wds"], "hdf5": ["hdf5"], "h5": ["hdf5"], "both": ["wds", "hdf5"]}
    if fmt not in choices:
        raise DatagenError(f"--format must be wds, hdf5 or both, got {fmt!r}")
    return choices[fmt]


def resolve_seed(opts: RunOptions, out: Path | str) -> int:
    """An explicit seed wins; --resume reuses the recorded (validated) one; otherwise draw and record one."""
    if opts.seed is not None:
        return opts.seed
    if opts.resume and is_url(out):
        from datagen.jobs_remote import stored_seed

        seed = stored_seed(str(out))
        if seed is not None:
            return seed
    elif opts.resume and ((out / JOB_FILE).exists() or (out / MANIFEST).exists()):
        return stored_record(out)["seed"]
    return secrets.randbelow(2**32)


@contextlib.contextmanager
def _progress(job: StoreJob, *, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A live bar on stderr fed by `on_progress(done, total)`; nothing under --quiet or when stderr is not a
    terminal (a log file gets the summary lines, not a blank line left by the cleared bar)."""
    if quiet or not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn(f"[bold]{job.out}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(job.progress_unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("generate", total=len(job.tasks))
        yield lambda done, total: bar.update(task, completed=done, total=total)


def run_job(job: StoreJob, opts: RunOptions, *, unit: str = "videos") -> dict:
    """Run a store job with a live progress bar and a one-line summary."""
    workers = default_workers() if opts.workers is None else opts.workers
    if workers < 0:
        raise DatagenError(f"--workers must be >= 0, got {workers}")
    start = time.perf_counter()
    try:
        with _progress(job, quiet=opts.quiet) as on_progress:
            manifest = run_store_job(
                job,
                resume=opts.resume,
                overwrite=opts.overwrite,
                workers=workers,
                scheduler=opts.scheduler,
                scheduler_timeout=opts.scheduler_timeout,
                on_progress=on_progress,
                retries=opts.retries,
            )
    except KeyboardInterrupt:
        raise Interrupted(INTERRUPTED) from None
    if not opts.quiet:
        seconds = time.perf_counter() - start
        for fmt, t in sorted(manifest["totals"].items()):
            err.print(f"{fmt}: {t['n_samples']} {unit} in {t['n_shards']} shards, {t['bytes'] / 1e6:.1f} MB")
        n = max((t["n_samples"] for t in manifest["totals"].values()), default=0)
        err.print(f"wrote {job.out} in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} {unit}/s)")
        err.print(f"seed {manifest['seed']}, digest {manifest['digest']}")
    return manifest


def run_generation(
    generator: str, params: dict[str, Any], *, n: int, opts: RunOptions, default_name: str
) -> dict:
    """Plan and run a generator over global indices [0, n) into the store at --out."""
    out = normalize(opts.out) if opts.out else Path("data") / default_name
    seed = resolve_seed(opts, out)
    job = generation_job(
        out, generator, params, seed=seed, n=n, shard_size=opts.shard_size, formats=formats_of(opts.format)
    )
    return run_job(job, opts)
