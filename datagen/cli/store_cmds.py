"""Commands that work on existing stores: verify, info, preview, build."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from datagen.cli import _common as c
from datagen.cli._app import app
from datagen.errors import DatagenError
from datagen.generators import get_generator
from datagen.jobs import generation_job, remove_leftovers
from datagen.store.format import JOB_FILE, load_spec, schema_fields
from datagen.store.location import (
    fetch_for_preview,
    is_url,
    load_store_manifest,
    normalize,
    store_url,
    verify_remote_store,
)
from datagen.store.manifest import verify_store
from datagen.store.preview import preview_masks, write_preview

StoreDir = Annotated[
    str, typer.Argument(help="Store folder (holding manifest.json), or its URL (s3://bucket/prefix, ...).")
]


@app.command("verify")
def verify_cli(
    store: StoreDir,
    quick: Annotated[
        bool, typer.Option("--quick", help="Check sizes and hashes only, not sample counts.")
    ] = False,
) -> None:
    """Recompute every shard's hash and sample count against the manifest; exit 1 naming each bad shard."""
    manifest = load_store_manifest(store)
    if is_url(store):
        problems = verify_remote_store(store, count_samples=not quick, manifest=manifest)
    else:
        if remove_leftovers(Path(store), manifest):
            c.err.print(f"removed the finished run's leftover {JOB_FILE} and journal")
        problems = verify_store(store, count_samples=not quick, manifest=manifest)
    if problems:
        for p in problems:
            c.err.print(f"BAD {p}")
        c.err.print(f"{len(problems)} of {len(manifest['shards'])} shards failed verification")
        raise typer.Exit(1)
    c.err.print(f"ok: {len(manifest['shards'])} shards, digest {manifest['digest']}")


@app.command("info")
def info_cli(
    store: StoreDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest minus the shard list.")] = False,
) -> None:
    """Summarise a store: generator, parameters, seed, sample shape, shards and sizes."""
    m = load_store_manifest(store)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in m.items() if k != "shards"}, indent=2, sort_keys=True))
        return
    gen, layout, video = m["generator"], m["layout"], m["sample"]["video"]
    typer.echo(f"store      {store_url(store) if is_url(store) else Path(store).resolve()}")
    typer.echo(f"generator  {gen['name']} v{gen['version']}")
    typer.echo("params     " + ", ".join(f"{k}={v}" for k, v in sorted(m["params"].items())))
    typer.echo(f"seed       {m['seed']}")
    typer.echo(f"sample     {video['dtype']} {tuple(video['shape'])} ({video['layout']})")
    for name in schema_fields(m["sample"])[1:]:
        f = m["sample"].get(name)
        typer.echo(
            f"field      {name} {f['dtype']} {tuple(f['shape'])}" if f else f"field      {name} (in meta)"
        )
    for fmt, t in sorted(m["totals"].items()):
        typer.echo(f"{fmt:<10} {t['n_samples']} samples in {t['n_shards']} shards, {t['bytes'] / 1e6:.1f} MB")
    if "shard_size" in layout:
        typer.echo(f"shard size {layout['shard_size']}")
    typer.echo(f"digest     {m['digest']}")
    for key in sorted(
        set(m)
        - {
            "schema_version",
            "generator",
            "params",
            "seed",
            "seeding",
            "layout",
            "sample",
            "shards",
            "totals",
            "digest",
        }
    ):
        typer.echo(f"{key:<10} {json.dumps(m[key], sort_keys=True)[:300]}")


@app.command("preview")
def preview_cli(
    store: StoreDir,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output image: .gif (animated grid) or .png (filmstrips).")
    ],
    count: Annotated[int, typer.Option("--count", "-k", help="Number of clips (at most the store's).")] = 16,
    scale: Annotated[
        int | None, typer.Option("--scale", help="Pixel zoom [default: to about 96 px, less to fit].")
    ] = None,
    fields: Annotated[
        str, typer.Option("--fields", help="video, or mask: instance masks in colour over the frames.")
    ] = "video",
) -> None:
    """Write a grid of the store's first clips as an animated GIF or a PNG of filmstrips.

    A preview that would need over 1 GiB of memory (or a GIF over 65535 px a side) is refused up front.
    """
    with tempfile.TemporaryDirectory(prefix="datagen-preview-") as tmp:
        local = fetch_for_preview(store, Path(tmp), count) if is_url(store) else Path(store)
        path = write_preview(local, out, count=count, scale=scale, masks=preview_masks(fields))
    c.err.print(f"wrote {path}")


@app.command("build")
def build_cli(
    spec: Annotated[Path, typer.Argument(help="Dataset spec, e.g. data_manifests/balls-3.json.")],
    out: c.StoreOut = None,
    workers: c.Workers = None,
    scheduler: c.Scheduler = None,
    scheduler_timeout: c.SchedulerTimeout = c.DEFAULT_SCHEDULER_TIMEOUT,
    resume: c.Resume = False,
    overwrite: c.Overwrite = False,
    quiet: c.Quiet = False,
    retries: c.Retries = c.DEFAULT_RETRIES,
) -> None:
    """Regenerate a canonical dataset from its checked-in spec and check its digest (exit 1 on mismatch)."""
    s = load_spec(spec)
    installed = get_generator(s["generator"]).version
    if s.get("generator_version", installed) != installed:
        raise DatagenError(
            f"{spec} was made with {s['generator']} v{s['generator_version']}, this install has v{installed}"
        )
    target = normalize(out) if out else Path("data") / s["name"]
    opts = c.RunOptions(
        target,
        s["seed"],
        "",
        s["shard_size"],
        workers,
        scheduler,
        resume,
        overwrite,
        quiet,
        scheduler_timeout,
    )
    opts = dataclasses.replace(opts, retries=retries)
    job = generation_job(
        target,
        s["generator"],
        s["params"],
        seed=s["seed"],
        n=s["n"],
        shard_size=s["shard_size"],
        formats=s["formats"],
    )
    manifest = c.run_job(job, opts)
    if manifest["digest"] != s["digest"]:
        c.err.print(f"DIGEST MISMATCH for {s['name']}: expected {s['digest']}, got {manifest['digest']}")
        raise typer.Exit(1)
    c.err.print(f"ok: {s['name']} matches its spec digest {s['digest']}")
