"""Turn a job (a record of what to make plus one task per shard) into a complete, verifiable store.

The output folder moves through three states: a job file (`.datagen-job.json`, what is being made), a
journal (`.datagen-journal.jsonl`, one line per finished task), and finally `manifest.json` (written last;
job file and journal are then removed). `--resume` trusts a journaled shard only after its size and sha256
check out, so an interrupted run ends with exactly the bytes an uninterrupted one makes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datagen.errors import DatagenError
from datagen.generators import get_generator
from datagen.parallel import (
    DEFAULT_RETRIES,
    DEFAULT_SCHEDULER_TIMEOUT,
    Cluster,
    Task,
    check_retries,
    open_cluster,
    run_tasks,
)
from datagen.store.atomic import (
    format_bytes,
    remove_stale_temps,
    write_bytes_atomic,
    write_error,
    write_json_atomic,
)
from datagen.store.card import dataset_card
from datagen.store.format import (
    CARD,
    DEFAULT_FIELDS,
    FORMATS,
    JOB_FILE,
    JOURNAL,
    MANIFEST,
    RECORD_KEYS,
    check_prefix,
    check_seed,
    parse_fields,
    sample_schema,
    validate_record,
)
from datagen.store.location import is_url, normalize, write_remote_shard
from datagen.store.manifest import (
    build_manifest,
    check_shard,
    load_manifest,
    shard_name,
    write_manifest,
    write_shard,
)
from datagen.store.ownership import refuse_protected, remove_store


@dataclass
class StoreJob:
    """What to make into `out`: the record (what defines the content) and one task per shard.

    `tasks` may be lazy (a Sequence computing each Task on access): planning costs no memory per task.
    `summarize(results)` (results in task order) returns extra manifest fields outside the digest.
    `results_from_manifest(manifest)` rebuilds each task's result from a finished manifest (task id ->
    result), so a damaged complete store can be repaired shard by shard; None when results hold more than
    the manifest keeps. `min_bytes` is a lower bound on what the whole store takes on disk (0 = unknown).
    """

    out: Path | str  # a local folder, or a store URL (`datagen.store.location`)
    record: dict[str, Any]
    tasks: Sequence[Task]
    summarize: Callable[[list[dict]], dict] | None = None
    prepare: Callable[[], None] | None = None  # run once in this process before tasks go to workers
    progress_unit: str = "shards"
    results_from_manifest: Callable[[dict], dict[str, dict]] | None = None
    min_bytes: int = 0
    keep_result: Callable[[dict], bool] | None = None  # False: a journaled result is run again on --resume


ProgressFn = Callable[[int, int], None]


def run_store_job(
    job: StoreJob,
    *,
    resume: bool = False,
    overwrite: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
    scheduler_timeout: float = DEFAULT_SCHEDULER_TIMEOUT,
    on_progress: ProgressFn | None = None,
    retries: int = DEFAULT_RETRIES,
) -> dict:
    """Run `job` into `job.out` and return the manifest written there.

    Running into a folder that already holds this exact store checks every shard (size and sha256) and
    returns its manifest; damaged shards are made again when `resume` is given. A URL `out` runs the same
    steps on an object store (`datagen.jobs_remote`). `retries`: times Dask reruns a task whose worker died.
    """
    check_retries(retries)  # before anything is written
    remote = is_url(job.out)
    out = Path(job.out) if not remote else None
    if out is not None and not (out.is_dir() and any(out.iterdir())):
        check_free_space(out, job, done=0)  # before anything is written
    # the scheduler is checked and connected before anything is written to out
    with open_cluster(scheduler=scheduler, workers=workers, timeout=scheduler_timeout) as cluster:
        if out is None:
            from datagen.jobs_remote import run_remote_store_job

            return run_remote_store_job(
                job, cluster, resume=resume, overwrite=overwrite, on_progress=on_progress, retries=retries
            )
        existing = prepare_output(out, job, resume=resume, overwrite=overwrite)
        if existing is not None:
            if on_progress:
                on_progress(len(job.tasks), len(job.tasks))
            return existing
        results = _run_remaining(job, cluster, on_progress, retries)
    manifest = finish_manifest(job, results)
    write_bytes_atomic(out / CARD, dataset_card(manifest).encode())  # before the manifest, which comes last
    write_manifest(out, manifest)
    remove_run_files(out)
    return manifest


def finish_manifest(job: StoreJob, results: dict[str, dict]) -> dict:
    """The manifest of a finished job from its results by task id (in task order: any worker count)."""
    ordered = [results[t.id] for t in job.tasks]
    extra = job.summarize(ordered) if job.summarize else None
    return build_manifest(job.record, [s for r in ordered for s in r["shards"]], extra)


def _run_remaining(
    job: StoreJob, cluster: Cluster, on_progress: ProgressFn | None, retries: int = DEFAULT_RETRIES
) -> dict[str, dict]:
    """Run the tasks the journal does not hold (or whose shards no longer check out); results by task id."""
    out = Path(job.out)
    done = read_journal(out)
    results: dict[str, dict] = {}
    journal = open(out / JOURNAL, "a")
    try:
        for t in job.tasks:
            r = done.pop(t.id, None)
            if r is None or (job.keep_result is not None and not job.keep_result(r)):
                continue
            if all(check_shard(out, s) is None for s in r["shards"]):
                results[t.id] = r
        if on_progress:
            on_progress(len(results), len(job.tasks))

        def record_result(task: Task, result: dict) -> None:
            results[task.id] = result
            try:
                journal.write(journal_line(task.id, result))
                journal.flush()
                os.fsync(journal.fileno())
            except OSError as e:  # a full disk: one line; the torn last line is ignored on --resume
                raise write_error(e, out / JOURNAL) from None
            if on_progress:
                on_progress(len(results), len(job.tasks))

        if len(results) < len(job.tasks):
            check_free_space(out, job, done=len(results))
            if job.prepare:
                job.prepare()
        todo = (t for t in job.tasks if t.id not in results)  # drawn as workers free up
        remaining = len(job.tasks) - len(results)
        try:
            if remaining and not cluster.in_process:
                cluster.client(remaining)  # a local cluster starts here, no bigger than the job
            run_tasks(todo, cluster=cluster, on_result=record_result, retries=retries)
        except BaseException:
            remove_stale_temps(out)  # of tasks stopped mid-shard (their workers closed with the cluster)
            raise
    finally:
        with contextlib.suppress(OSError):  # lines are flushed as written; a failing close adds nothing
            journal.close()
    return results


def remove_run_files(out: Path) -> None:
    """Remove the job file and journal of a finished store (also after a kill right after the manifest)."""
    (out / JOURNAL).unlink(missing_ok=True)
    (out / JOB_FILE).unlink(missing_ok=True)


def remove_leftovers(out: Path, manifest: dict) -> bool:
    """After a kill between the manifest's rename and the cleanup: remove the finished job's job file and
    journal (only when the job file records this very store). Returns whether anything was removed."""
    if not (out / JOB_FILE).exists():
        return False
    try:
        same = _previous_job_record(out) == _record_only(manifest)
    except DatagenError:
        return False
    if same:
        remove_run_files(out)
    return same


def check_free_space(out: Path, job: StoreJob, *, done: int) -> None:
    """Refuse up front a job whose remaining shards cannot fit the free space of `out`'s file system."""
    total = len(job.tasks)
    if not job.min_bytes or not total:
        return
    need = job.min_bytes * (total - done) // total
    where = out
    while not where.exists() and where.parent != where:
        where = where.parent  # the file system `out` will be made on
    try:
        st = os.statvfs(where)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise DatagenError(
            f"not enough space in {out}: the job needs at least {format_bytes(need)} "
            f"({total - done} of {total} shards left), the disk has {format_bytes(free)} free"
        )


def prepare_output(out: Path, job: StoreJob, *, resume: bool, overwrite: bool) -> dict | None:
    """Make `out` ready for the job, or return the finished manifest when it already holds this store.

    Refuses (DatagenError, nothing touched) to write into a non-empty folder that holds anything but this
    job's store unless told to resume (an unfinished run of the same job) or overwrite (only a folder that is
    recognisably a datagen store; see `datagen.store.ownership`).
    """
    if resume and overwrite:
        raise DatagenError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise DatagenError(f"output path {out} exists and is not a folder")
    if overwrite:
        refuse_protected(out)
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            remove_store(out)
        else:
            finished = _finished_store(out, job, resume=resume)
            if finished is not None:
                return finished
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        write_json_atomic(out / JOB_FILE, _record_only(job.record))
    except OSError as e:
        raise DatagenError(f"cannot write to output folder {out}: {e.strerror or e}") from None
    return None


def check_same_job(where: str, previous: Any, job: StoreJob, finished: bool, resume: bool) -> bool:
    """A non-empty store holding `previous` (its recorded job): True if it is this job's finished store (to
    be checked shard by shard), False for an unfinished run of it that --resume continues; DatagenError
    otherwise. Local folders and object stores decide alike."""
    if previous != _record_only(job.record):
        flag = "--resume" if resume else "--overwrite to replace it"
        raise DatagenError(
            f"{where} holds a different datagen job ({_diff(previous, job.record)})"
            + ("" if resume else f"; pass {flag}")
        )
    if not finished and not resume:
        raise DatagenError(
            f"{where} holds an unfinished run of this job; pass --resume to continue it "
            "or --overwrite to start again"
        )
    return finished


def check_repairable(where: str, bad: list[str], job: StoreJob, resume: bool) -> None:
    """A finished store with damaged or missing shards `bad`: fine under --resume when the job can rebuild
    its journal from the manifest; DatagenError naming the shards otherwise."""
    if resume and job.results_from_manifest is not None:
        return
    names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    how = "pass --resume to make them again" if job.results_from_manifest else "pass --overwrite to remake it"
    raise DatagenError(f"{where} has {len(bad)} damaged or missing shards ({names}); {how}")


def _finished_store(out: Path, job: StoreJob, *, resume: bool) -> dict | None:
    """For a non-empty `out` without --overwrite: the manifest if it holds this job's store, checked shard by
    shard; None to (re)start the run in it; DatagenError when it holds anything else."""
    is_store = (out / MANIFEST).exists() or (out / JOB_FILE).exists()
    if not is_store:
        hint = "" if resume else "; choose another --out (or --overwrite a datagen store)"
        raise DatagenError(f"output folder {out} is not empty and is not a datagen store{hint}")
    if not check_same_job(f"output folder {out}", stored_record(out), job, (out / MANIFEST).exists(), resume):
        return None
    manifest = load_manifest(out)
    remove_leftovers(out, manifest)
    bad = [s["path"] for s in manifest["shards"] if check_shard(out, s) is not None]
    if not bad:
        return manifest
    check_repairable(f"the store in {out}", bad, job, resume)
    # back to an unfinished run: the good shards journaled, the manifest gone, the damaged shards to make
    results = job.results_from_manifest(manifest)
    write_json_atomic(out / JOB_FILE, _record_only(job.record))
    with open(out / JOURNAL, "w") as journal:
        for task_id, result in results.items():
            if all(s["path"] not in bad for s in result["shards"]):
                journal.write(journal_line(task_id, result))
        journal.flush()
        os.fsync(journal.fileno())
    (out / MANIFEST).unlink()
    return None


def read_journal(out: Path) -> dict[str, dict]:
    """Finished tasks by id; a torn last line (killed mid-write) is ignored."""
    path = out / JOURNAL
    return parse_journal(path.read_text()) if path.exists() else {}


def parse_journal(text: str) -> dict[str, dict]:
    """Journal lines -> finished results by task id; a torn or foreign line is skipped."""
    done: dict[str, dict] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            done[entry["task"]] = entry["result"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def journal_line(task_id: str, result: dict) -> str:
    return json.dumps({"task": task_id, "result": result}, sort_keys=True) + "\n"


def _record_only(record: dict) -> dict:
    return json.loads(json.dumps({k: record[k] for k in RECORD_KEYS}, sort_keys=True))


def stored_record(out: Path) -> dict:
    """The record of the store in `out` (its manifest, else its job file), validated."""
    if (out / MANIFEST).exists():
        return _record_only(load_manifest(out))
    return _previous_job_record(out)


def _previous_job_record(out: Path) -> dict:
    source = out / JOB_FILE
    try:
        record = json.loads(source.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise DatagenError(f"{source} is unreadable ({e})") from None
    return _record_only(validate_record(record, str(source)))


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
    write = write_remote_shard if is_url(out) else write_shard
    return {"shards": [write(out, shard_name(prefix, shard, fmt), fmt, samples, attrs) for fmt in formats]}


@dataclass(frozen=True)
class GenerationTasks(Sequence[Task]):
    """The tasks of a generation job, computed on access: shard i holds indices [i*size, (i+1)*size) of n."""

    out: str
    generator: str
    params: dict
    seed: int
    prefix: str
    formats: tuple[str, ...]
    n: int
    shard_size: int

    def __len__(self) -> int:
        return -(-self.n // self.shard_size)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.shard_size
        args = (
            self.out,
            self.generator,
            self.params,
            self.seed,
            self.prefix,
            list(self.formats),
            i,
            start,
            min(self.n, start + self.shard_size),
        )
        return Task(id=task_id(i), fn=write_generated_shard, args=args)


def task_id(shard: int) -> str:
    return f"shard-{shard:06d}"


def results_by_shard(manifest: dict) -> dict[str, dict]:
    """A generation store's task results, rebuilt from its manifest (a task's result is its shards)."""
    results: dict[str, dict] = {}
    for s in manifest["shards"]:
        index = int(s["path"].rsplit("-", 1)[1].split(".")[0])
        results.setdefault(task_id(index), {"shards": []})["shards"].append(s)
    for r in results.values():
        r["shards"].sort(key=lambda s: s["format"])
    return results


def _count(value: Any, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatagenError(f"{flag} must be a whole number, got {value!r}")
    if value < 1:
        raise DatagenError(f"{flag} must be at least 1, got {value}")
    return value


def split_fields(gen: Any, params: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Validate params with their `fields` entry taken out (generators validate only their own params), then
    put it back, in canonical order, only when it asks for more than the video: a default job's params,
    record and digest stay what they were before fields existed. Generators read `params.get("fields")`."""
    params = dict(params)
    fields = parse_fields(params.pop("fields", None), getattr(gen, "fields", DEFAULT_FIELDS))
    params = gen.validate(params)
    if fields != DEFAULT_FIELDS:
        params["fields"] = list(fields)
    return params, fields


def generation_job(
    out: Path | str,
    generator: str,
    params: dict[str, Any],
    *,
    seed: int,
    n: int,
    shard_size: int,
    formats: Sequence[str],
    prefix: str | None = None,
) -> StoreJob:
    """Validate the request and plan it: shard i holds global indices [i*shard_size, (i+1)*shard_size).
    `out`: a folder, or a store URL (`s3://bucket/prefix`, `gs://...`, `memory://...`, `file://...`)."""
    out = normalize(out)
    gen = get_generator(generator)
    params, fields = split_fields(gen, params)
    n, shard_size = _count(n, "--n"), _count(shard_size, "--shard-size")
    check_seed(seed, "--seed", "--seed")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DatagenError(f"unknown format {bad[0] if bad else ''!r}; choose from wds, hdf5, both")
    formats = sorted(set(formats))
    prefix = check_prefix(prefix or gen.name)
    shape = list(gen.sample_shape(params))
    record = {
        "generator": {"name": gen.name, "version": gen.version},
        "params": params,
        "seed": seed,
        "layout": {"n_samples": n, "shard_size": shard_size, "formats": formats, "prefix": prefix},
        "sample": sample_schema(shape, fields),
    }
    validate_record(record, "the job")
    tasks = GenerationTasks(str(out), generator, params, seed, prefix, tuple(formats), n, shard_size)

    def warm_up() -> None:
        """Compile and cache JIT kernels once here, so local workers load them instead of each compiling."""
        for _ in gen.generate(params, seed, 0, 1):
            pass

    return StoreJob(
        out=out,
        record=record,
        tasks=tasks,
        prepare=warm_up,
        results_from_manifest=results_by_shard,
        min_bytes=n * math.prod(shape) * len(formats),  # the clips alone, without headers or ground truth
    )
