"""`run_store_job` on an object store (`--out s3://bucket/prefix`): the local runner's states, over fsspec.

The store moves through the same states as a local folder (`datagen.jobs`): the job file, the journal (one
JSON line per finished task), then the card and `manifest.json`, written last. Differences, and why:

- Shards are streamed by the Dask tasks straight to their final keys (S3: multipart uploads, invisible until
  complete; a failed upload is aborted). There is no rename on an object store, so nothing but the journal
  and the size/sha256 check decides that a shard is done: on `--resume` an object not in the journal, or
  failing its check, is written again.
- An object cannot be appended to: the journal is rewritten whole, at most every JOURNAL_FLUSH_S seconds and
  once more when the run ends or fails. A kill loses at most the last few seconds of journal lines; those
  shards are made again on `--resume` (same bytes).
- `--overwrite` deletes only what `datagen.store.ownership.remote_owned` recognises as this store.
"""

from __future__ import annotations

import json
import time

from datagen.errors import DatagenError
from datagen.jobs import (
    ProgressFn,
    StoreJob,
    _record_only,
    check_repairable,
    check_same_job,
    finish_manifest,
    journal_line,
    parse_journal,
)
from datagen.parallel import (
    DEFAULT_RETRIES,
    Cluster,
    Task,
    run_tasks,
)
from datagen.store.atomic import canonical_json
from datagen.store.card import dataset_card
from datagen.store.format import (
    CARD,
    JOB_FILE,
    JOURNAL,
    MANIFEST,
    ManifestError,
    read_manifest_text,
    validate_record,
)
from datagen.store.location import RemoteStore, check_remote_shard, shard_sizes
from datagen.store.ownership import remove_remote_store

JOURNAL_FLUSH_S = 2.0


def run_remote_store_job(
    job: StoreJob,
    cluster: Cluster,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
    retries: int = DEFAULT_RETRIES,
) -> dict:
    """`datagen.jobs.run_store_job` for a URL `job.out`, on an open cluster; the manifest written there."""
    store = RemoteStore(str(job.out))
    existing = _prepare(store, job, resume=resume, overwrite=overwrite)
    if existing is not None:
        if on_progress:
            on_progress(len(job.tasks), len(job.tasks))
        return existing
    manifest = finish_manifest(job, _run_remaining(job, store, cluster, on_progress, retries))
    store.write(CARD, dataset_card(manifest).encode())
    store.write(MANIFEST, canonical_json(manifest))
    store.remove(JOURNAL)
    store.remove(JOB_FILE)
    return manifest


def _prepare(store: RemoteStore, job: StoreJob, *, resume: bool, overwrite: bool) -> dict | None:
    """The remote `prepare_output`: the finished manifest when the URL holds this store, else the job file
    written (after removing our old store for --overwrite); DatagenError for anything else there."""
    if resume and overwrite:
        raise DatagenError("--resume and --overwrite exclude each other")
    if store.entries():
        if overwrite:
            remove_remote_store(store)
        else:
            finished = _finished(store, job, resume=resume)
            if finished is not None:
                return finished
    store.write(JOB_FILE, canonical_json(_record_only(job.record)))
    return None


def _stored_record(store: RemoteStore, names: dict[str, str]) -> tuple[dict, dict | None]:
    """(record, manifest or None) of the store at the URL, validated."""
    if MANIFEST in names:
        manifest = read_manifest_text(store.read(MANIFEST) or b"", store.where(MANIFEST))
        return _record_only(manifest), manifest
    try:
        record = json.loads(store.read(JOB_FILE) or b"")
    except (ValueError, RecursionError) as e:
        raise ManifestError(f"{store.where(JOB_FILE)} is unreadable ({e})") from None
    return _record_only(validate_record(record, store.where(JOB_FILE))), None


def stored_seed(url: str) -> int | None:
    """The seed recorded at a store URL (its manifest, else its job file), for --resume; None when empty."""
    store = RemoteStore(url)
    names = store.entries()
    if MANIFEST not in names and JOB_FILE not in names:
        return None
    return _stored_record(store, names)[0]["seed"]


def _finished(store: RemoteStore, job: StoreJob, *, resume: bool) -> dict | None:
    """The remote `_finished_store`: same refusals, same repair of a damaged finished store."""
    names = store.entries()
    if MANIFEST not in names and JOB_FILE not in names:
        hint = "" if resume else "; choose another --out (or --overwrite a datagen store)"
        raise DatagenError(f"{store.url} is not empty and is not a datagen store{hint}")
    previous, manifest = _stored_record(store, names)
    if not check_same_job(store.url, previous, job, manifest is not None, resume):
        return None
    if JOB_FILE in names:  # killed between the manifest and the cleanup
        store.remove(JOURNAL)
        store.remove(JOB_FILE)
    sizes = shard_sizes(store)
    bad = [s["path"] for s in manifest["shards"] if check_remote_shard(store, s, sizes) is not None]
    if not bad:
        return manifest
    check_repairable(f"the store at {store.url}", bad, job, resume)
    results = job.results_from_manifest(manifest)
    store.write(JOB_FILE, canonical_json(_record_only(job.record)))
    good = [journal_line(t, r) for t, r in results.items() if all(s["path"] not in bad for s in r["shards"])]
    store.write(JOURNAL, "".join(good).encode())
    store.remove(MANIFEST)
    return None


def _run_remaining(
    job: StoreJob, store: RemoteStore, cluster: Cluster, on_progress: ProgressFn | None, retries: int
) -> dict[str, dict]:
    """Run the tasks the journal does not hold (or whose objects no longer check out); results by task id."""
    done = parse_journal((store.read(JOURNAL) or b"").decode(errors="replace"))
    sizes = shard_sizes(store)
    results: dict[str, dict] = {}
    lines: list[str] = []
    for t in job.tasks:
        r = done.pop(t.id, None)
        if r is None or (job.keep_result is not None and not job.keep_result(r)):
            continue
        if all(check_remote_shard(store, s, sizes) is None for s in r["shards"]):
            results[t.id] = r
            lines.append(journal_line(t.id, r))
    if on_progress:
        on_progress(len(results), len(job.tasks))
    flushed = time.monotonic()

    def flush() -> None:
        nonlocal flushed
        store.write(JOURNAL, "".join(lines).encode())
        flushed = time.monotonic()

    def record_result(task: Task, result: dict) -> None:
        results[task.id] = result
        lines.append(journal_line(task.id, result))
        if time.monotonic() - flushed >= JOURNAL_FLUSH_S:
            flush()
        if on_progress:
            on_progress(len(results), len(job.tasks))

    if len(results) < len(job.tasks) and job.prepare:
        job.prepare()
    remaining = len(job.tasks) - len(results)
    todo = (t for t in job.tasks if t.id not in results)
    try:
        if remaining and not cluster.in_process:
            cluster.client(remaining)
        run_tasks(todo, cluster=cluster, on_result=record_result, retries=retries)
    finally:
        if remaining:
            try:
                flush()
            except DatagenError:
                pass  # the run's own error (if any) is the one to report; --resume redoes what is lost
    return results
