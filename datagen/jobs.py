"""Turn a job (a record of what to make plus one task per shard) into a complete, verifiable store.

The output folder moves through three states: a job file (`.datagen-job.json`, what is being made), a
journal (`.datagen-journal.jsonl`, one line per finished task), and finally `manifest.json` (written last;
job file and journal are then removed). `--resume` trusts a journaled shard only after its size and sha256
check out, so an interrupted run ends with exactly the bytes an uninterrupted one makes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datagen.errors import DatagenError
from datagen.generators import get_generator
from datagen.parallel import Task, run_tasks
from datagen.store.atomic import remove_stale_temps, write_json_atomic
from datagen.store.format import FORMATS, JOB_FILE, JOURNAL, MANIFEST, RECORD_KEYS
from datagen.store.manifest import (
    build_manifest,
    check_shard,
    load_manifest,
    shard_name,
    write_manifest,
    write_shard,
)


@dataclass
class StoreJob:
    """`summarize(results)` (results in task order) returns extra manifest fields outside the digest."""

    out: Path
    record: dict[str, Any]
    tasks: Sequence[Task]
    summarize: Callable[[list[dict]], dict] | None = None
    prepare: Callable[[], None] | None = None  # run once in this process before tasks go to workers
    progress_unit: str = "shards"


ProgressFn = Callable[[int, int], None]


def run_store_job(
    job: StoreJob,
    *,
    resume: bool = False,
    overwrite: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
    on_progress: ProgressFn | None = None,
) -> dict:
    """Run `job` into `job.out` and return the manifest written there."""
    out = Path(job.out)
    existing = prepare_output(out, job.record, resume=resume, overwrite=overwrite)
    if existing is not None:
        if on_progress:
            on_progress(len(job.tasks), len(job.tasks))
        return existing
    done = read_journal(out) if resume else {}
    results: dict[str, dict] = {}
    journal = open(out / JOURNAL, "a")
    try:
        for t in job.tasks:
            r = done.get(t.id)
            if r is not None and all(check_shard(out, s) is None for s in r["shards"]):
                results[t.id] = r
        todo = [t for t in job.tasks if t.id not in results]
        if on_progress:
            on_progress(len(results), len(job.tasks))

        def record_result(task: Task, result: dict) -> None:
            results[task.id] = result
            journal.write(json.dumps({"task": task.id, "result": result}, sort_keys=True) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
            if on_progress:
                on_progress(len(results), len(job.tasks))

        if todo and job.prepare:
            job.prepare()
        run_tasks(todo, scheduler=scheduler, workers=workers, on_result=record_result)
    finally:
        journal.close()
    ordered = [results[t.id] for t in job.tasks]
    extra = job.summarize(ordered) if job.summarize else None
    manifest = build_manifest(job.record, [s for r in ordered for s in r["shards"]], extra)
    write_manifest(out, manifest)
    (out / JOURNAL).unlink(missing_ok=True)
    (out / JOB_FILE).unlink(missing_ok=True)
    return manifest


def prepare_output(out: Path, record: dict, *, resume: bool, overwrite: bool) -> dict | None:
    """Make `out` ready for the job, or return the finished manifest when resuming a complete store.

    Refuses (DatagenError, nothing touched) to write into a non-empty folder unless told to resume or
    overwrite, to resume a different job, and to overwrite a folder that is not a datagen store.
    """
    if resume and overwrite:
        raise DatagenError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise DatagenError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        is_store = (out / MANIFEST).exists() or (out / JOB_FILE).exists()
        if resume:
            if not is_store:
                raise DatagenError(
                    f"cannot resume: {out} is not a datagen store (no {JOB_FILE} or {MANIFEST})"
                )
            previous = _previous_record(out)
            if previous != _record_only(record):
                raise DatagenError(f"cannot resume: {out} holds a different job ({_diff(previous, record)})")
            if (out / MANIFEST).exists():
                return load_manifest(out)
        elif overwrite:
            if not is_store:
                raise DatagenError(f"refusing to overwrite {out}: it is not a datagen store")
            shutil.rmtree(out)
        else:
            raise DatagenError(
                f"output folder {out} is not empty; pass --resume to continue it or --overwrite to replace it"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        write_json_atomic(out / JOB_FILE, _record_only(record))
    except OSError as e:
        raise DatagenError(f"cannot write to output folder {out}: {e.strerror or e}") from None
    return None


def read_journal(out: Path) -> dict[str, dict]:
    """Finished tasks by id; a torn last line (killed mid-write) is ignored."""
    done: dict[str, dict] = {}
    path = out / JOURNAL
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                done[entry["task"]] = entry["result"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def _record_only(record: dict) -> dict:
    return json.loads(json.dumps({k: record[k] for k in RECORD_KEYS}, sort_keys=True))


def _previous_record(out: Path) -> dict:
    source = out / MANIFEST if (out / MANIFEST).exists() else out / JOB_FILE
    try:
        return _record_only(json.loads(source.read_text()))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise DatagenError(f"cannot resume: {source} is unreadable ({e})") from None


def _diff(previous: dict, record: dict) -> str:
    now = _record_only(record)
    keys = [k for k in RECORD_KEYS if previous.get(k) != now.get(k)]
    parts = []
    for k in keys:
        a, b = previous.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = sorted(x for x in set(a) | set(b) if a.get(x) != b.get(x))
            parts.append(f"{k}: " + ", ".join(f"{x} {a.get(x)!r} -> {b.get(x)!r}" for x in sub))
        else:
            parts.append(f"{k}: {a!r} -> {b!r}")
    return "; ".join(parts) or "unknown difference"


# --- generation jobs: one task per shard of consecutive global indices --------------------------------


def write_generated_shard(
    out: str,
    generator: str,
    params: dict,
    seed: int,
    prefix: str,
    formats: list[str],
    shard: int,
    start: int,
    stop: int,
) -> dict:
    """Dask task: generate samples [start, stop) and write them in every requested format."""
    gen = get_generator(generator)
    samples = list(gen.generate(params, seed, start, stop))
    attrs = {"generator": gen.name, "generator_version": gen.version, "params": params, "seed": seed}
    return {
        "shards": [
            write_shard(Path(out), shard_name(prefix, shard, fmt), fmt, samples, attrs) for fmt in formats
        ]
    }


def generation_job(
    out: Path,
    generator: str,
    params: dict[str, Any],
    *,
    seed: int,
    n: int,
    shard_size: int,
    formats: Sequence[str],
    prefix: str | None = None,
) -> StoreJob:
    """Validate the request and plan it: shard i holds global indices [i*shard_size, (i+1)*shard_size)."""
    gen = get_generator(generator)
    params = gen.validate(dict(params))
    if n < 1:
        raise DatagenError(f"--n must be at least 1, got {n}")
    if shard_size < 1:
        raise DatagenError(f"--shard-size must be at least 1, got {shard_size}")
    if not 0 <= seed < 2**63:
        raise DatagenError(f"--seed must be in [0, 2**63), got {seed}")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DatagenError(f"unknown format {bad[0] if bad else ''!r}; choose from wds, hdf5, both")
    formats = sorted(set(formats))
    prefix = prefix or gen.name
    record = {
        "generator": {"name": gen.name, "version": gen.version},
        "params": params,
        "seed": seed,
        "layout": {"n_samples": n, "shard_size": shard_size, "formats": formats, "prefix": prefix},
        "sample": {
            "video": {"dtype": "uint8", "shape": list(gen.sample_shape(params)), "layout": "THWC"},
            "key": "global sample index, zero-padded to 9 digits",
        },
    }
    tasks = [
        Task(
            id=f"shard-{i:06d}",
            fn=write_generated_shard,
            args=(str(out), generator, params, seed, prefix, formats, i, start, min(n, start + shard_size)),
        )
        for i, start in enumerate(range(0, n, shard_size))
    ]

    def warm_up() -> None:
        """Compile and cache JIT kernels once here, so local workers load them instead of each compiling."""
        for _ in gen.generate(params, seed, 0, 1):
            pass

    return StoreJob(out=Path(out), record=record, tasks=tasks, prepare=warm_up)
