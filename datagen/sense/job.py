"""Plan `datagen sense cup SOURCE --out DIR` as a store job: one Dask task per source shard.

Output shard i holds the samples of source shard i under the same keys: the scene `video` (as stored), the
source's meta (ground truth), and the `sensed` exposure (`datagen.store.format.ARRAY_FIELDS`). Sample `key`
is sensed with the per-sample stream of (`--seed`, int(key)), so the bytes depend on neither the workers
nor the scheduler. The source is read only through its validated manifest (shard names are plain file
names) and each source shard is checked against its size and sha256 before it is read. The record holds
the sensing parameters, the mask's sha256 and the source's digest; the manifest's `sensing` entry (outside
the digest) holds the mask itself (np.packbits, base64).
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np

from datagen.api import load_manifest
from datagen.errors import DatagenError
from datagen.jobs import FORMATS, StoreJob, results_by_shard, task_id
from datagen.parallel import Task
from datagen.sense.cup import (
    CupOperator,
    CupParams,
    check_params,
    make_mask,
    mask_sha256,
    sample_rng,
    sense,
)
from datagen.store.format import SHARD_RE, check_prefix, check_seed, sample_schema, validate_record
from datagen.store.manifest import check_shard, shard_name, write_shard
from datagen.store.readers import iter_samples
from datagen.store.sample import Sample
from datagen.store.wds import MAX_FIELD_FACTOR

GENERATOR = {"name": "cup", "version": "1"}
FIELDS = ("video", "sensed")


def source_format(manifest: dict) -> str:
    """The source format to read: WebDataset when the store has it (the same samples either way)."""
    return "wds" if "wds" in manifest["layout"]["formats"] else "hdf5"


def unpack_mask(manifest: dict) -> np.ndarray:
    """The mask a (validated) sensing store's manifest holds, checked against the clip size and its sha256.

    The `sensing` entry lies outside the digest and the validator, so it is checked here: its shape must be
    the clips' (H, W) (never an allocation a stranger's manifest chooses) and its bits must hash to the
    recorded `params.mask_sha256`, which the digest covers."""
    h, w = manifest["sample"]["video"]["shape"][1:3]
    try:
        entry = manifest["sensing"]["mask"]
        if entry["shape"] != [h, w]:
            raise DatagenError(f"the manifest's mask is {entry['shape']!r:.40}, not the clips' [{h}, {w}]")
        bits = np.frombuffer(base64.b64decode(entry["packbits_base64"], validate=True), np.uint8)
    except (KeyError, TypeError, ValueError) as e:
        raise DatagenError(f"the manifest has no readable sensing mask ({e!s:.80})") from None
    if len(bits) != -(-h * w // 8):
        raise DatagenError(f"the manifest's mask has {len(bits)} bytes, not {-(-h * w // 8)}")
    mask = np.unpackbits(bits, count=h * w).reshape(h, w)
    if mask_sha256(mask) != manifest["params"].get("mask_sha256"):
        raise DatagenError("the manifest's mask does not match params.mask_sha256")
    return mask


def sensing_params(params: dict) -> CupParams:
    """The sensing parameters of a sensing store's recorded `params` (less its mask digest and source),
    validated."""
    return check_params({k: v for k, v in params.items() if k not in ("mask_sha256", "source")})


def write_sensed_shard(
    out: str, source: str, entry: dict, params: dict, seed: int, prefix: str, formats: list[str], index: int
) -> dict:
    """Dask task: sense every sample of one source shard and write output shard `index` in each format."""
    problem = check_shard(Path(source), entry)
    if problem is not None:
        raise DatagenError(f"source shard {problem}")
    p = sensing_params(params)
    samples: list[Sample] = []
    op = None
    for s in iter_samples(Path(source) / entry["path"], entry["format"]):
        if op is None:
            t, h, w, _ = s.video.shape
            op = CupOperator(make_mask(h, w, p.fill, p.mask_seed), t, p.shear, p.complementary)
        sensed = sense(s.video, op, p, sample_rng(seed, int(s.key)))
        samples.append(Sample(s.key, s.video, s.meta, {"sensed": sensed}))
    attrs = {"generator": GENERATOR["name"], "generator_version": GENERATOR["version"], "params": params}
    return {
        "shards": [
            write_shard(Path(out), shard_name(prefix, index, fmt), fmt, samples, {**attrs, "seed": seed})
            for fmt in formats
        ]
    }


def cup_job(
    out: Path,
    source: Path,
    params: dict[str, Any],
    *,
    seed: int = 0,
    formats: list[str] | tuple[str, ...] = ("wds",),
    prefix: str = "cup",
) -> StoreJob:
    """Validate the request against the source's manifest and plan one task per source shard."""
    p = check_params(params)
    check_seed(seed, "--seed", "--seed")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DatagenError(f"unknown format {bad[0] if bad else ''!r}; choose from wds, hdf5, both")
    formats = sorted(set(formats))
    prefix = check_prefix(prefix)
    source = Path(source)
    src = load_manifest(source)  # validated: shard names are plain file names
    if Path(out).resolve() == source.resolve():
        raise DatagenError("--out must not be the source store")
    t, h, w, c = src["sample"]["video"]["shape"]
    views, rows = p.views, h + (t - 1) * p.shear
    if 2 * views * rows * w > MAX_FIELD_FACTOR * t * h * w * c:
        raise DatagenError(
            f"--shear {p.shear} makes sensed images ({views}, {rows}, {w}) over {MAX_FIELD_FACTOR} times "
            f"the bytes of a clip ({t}, {h}, {w}, {c}); use a smaller shear"
        )
    mask = make_mask(h, w, p.fill, p.mask_seed)
    fmt = source_format(src)
    record_params = {
        **p.to_dict(),
        "mask_sha256": mask_sha256(mask),
        "source": {"digest": src["digest"], "generator": src["generator"], "format": fmt},
    }
    layout: dict[str, Any] = {"formats": formats, "prefix": prefix}
    for key in ("shard_size", "n_samples"):
        if key in src["layout"]:
            layout[key] = src["layout"][key]
    record = {
        "generator": dict(GENERATOR),
        "params": record_params,
        "seed": seed,
        "layout": layout,
        "sample": sample_schema([t, h, w, c], FIELDS, {"sensed": [views, rows, w]}),
    }
    validate_record(record, "the job")
    entries = sorted((s for s in src["shards"] if s["format"] == fmt), key=lambda s: s["path"])
    tasks = []
    for entry in entries:
        index = int(SHARD_RE.fullmatch(entry["path"])["index"])
        args = (str(out), str(source), dict(entry), record_params, seed, prefix, formats, index)
        tasks.append(Task(id=task_id(index), fn=write_sensed_shard, args=args))
    n = sum(s["n_samples"] for s in entries)
    sensing = {
        "mask": {
            "shape": [h, w],
            "sha256": record_params["mask_sha256"],
            "packbits_base64": base64.b64encode(np.packbits(mask)).decode(),
        },
        "source_n_samples": n,
    }
    return StoreJob(
        out=Path(out),
        record=record,
        tasks=tasks,
        summarize=lambda results: {"sensing": sensing},
        results_from_manifest=results_by_shard,
        min_bytes=n * (math.prod([t, h, w, c]) + 2 * views * rows * w) * len(formats),
    )
