"""Plan `datagen stabilize` as a store job: one Dask task per input video, writing one shard (maybe empty).

Shard i holds the kept clips of input video i, keyed `sample_key(i * 1000 + clip_index)` (9 digits, no dots,
sorted like (video, clip)); rejected clips leave gaps in the clip numbers. The manifest's `stabilize` entry
(outside the digest) counts kept and rejected clips, lists unreadable inputs with the reason, and holds the
dataset's quality figures (ITF and stability score before/after).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datagen.errors import DatagenError
from datagen.jobs import FORMATS, StoreJob
from datagen.parallel import Task
from datagen.sources.video import VideoSource
from datagen.stabilize.params import validate_params
from datagen.stabilize.task import CLIPS_PER_VIDEO_SLOT, stabilize_video
from datagen.stabilize.videogan_format import strip_path, write_strip
from datagen.store.manifest import shard_name, write_shard

GENERATOR = {"name": "stabilize", "version": "2"}  # 2: meta JSON by orjson
VIDEOGAN_DIR = "videogan"
_QUALITY_KEYS = (
    "itf_before",
    "itf_after",
    "stability_before",
    "stability_after",
    "stability_mean_before",
    "stability_mean_after",
    "residual_motion_before_mean",
    "residual_motion_after_mean",
    "filled_fraction_mean",
)


def write_stabilized_shard(
    out: str,
    params: dict,
    seed: int,
    prefix: str,
    formats: list[str],
    video_index: int,
    source: tuple[str, str],
    videogan: bool,
) -> dict:
    """Dask task: stabilize one video and write its shard(s); returns shard entries and a video summary."""
    p = validate_params(params)
    r = stabilize_video(VideoSource(*source), video_index, p, seed)
    attrs = {"generator": GENERATOR["name"], "generator_version": GENERATOR["version"], "params": params}
    shards = [
        write_shard(Path(out), shard_name(prefix, video_index, fmt), fmt, r.samples, {**attrs, "seed": seed})
        for fmt in formats
    ]
    if videogan:
        for s in r.samples:
            n = s.meta["n_frames"]  # the strip holds the real frames only; VideoGAN's loader pads itself
            write_strip(strip_path(Path(out) / VIDEOGAN_DIR, video_index, s.meta["clip_index"]), s.video[:n])
    video = {
        "index": video_index,
        "source": source[0],
        "kept": len(r.samples),
        "rejected": r.rejected,
        "dropped_short": r.cut.dropped_short,
        "dropped_failed": r.cut.dropped_failed,
        "frames_decoded": r.n_decoded,
        "frames_expected": r.n_expected,
        "error": r.error,
        "warning": r.warning,
        "clips": [{k: s.meta[k] for k in _QUALITY_KEYS} for s in r.samples],
    }
    return {"shards": shards, "video": video}


class NoReadableInput(DatagenError):
    """Every input failed to decode: there is no dataset to write (the reasons are in the message)."""


REASONS_SHOWN = 3


def check_some_readable(videos: list[dict]) -> None:
    """Raise NoReadableInput, one line with the first reasons, when not one input could be read."""
    failed = [v for v in videos if v["error"]]
    if not videos or len(failed) < len(videos):
        return
    reasons = [v["error"] if v["source"] in v["error"] else f"{v['source']}: {v['error']}" for v in failed]
    more = len(reasons) - REASONS_SHOWN
    listed = "; ".join(reasons[:REASONS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
    raise NoReadableInput(f"no input could be read ({len(failed)} of {len(videos)} failed): {listed}")


def summarize(results: list[dict]) -> dict:
    """Manifest `stabilize` entry: counts, unreadable inputs and the dataset's quality figures.

    Raises NoReadableInput when every input failed: the store is not written.
    """
    videos = [r["video"] for r in results]
    check_some_readable(videos)
    clips = [c for v in videos for c in v["clips"]]
    quality = {k: float(np.mean([c[k] for c in clips])) if clips else None for k in _QUALITY_KEYS}
    return {
        "stabilize": {
            "videos": len(videos),
            "clips_kept": sum(v["kept"] for v in videos),
            "clips_rejected": sum(len(v["rejected"]) for v in videos),
            "clips_dropped_short": sum(v["dropped_short"] for v in videos),
            "clips_dropped_failed": sum(v["dropped_failed"] for v in videos),
            "unreadable": [{"source": v["source"], "reason": v["error"]} for v in videos if v["error"]],
            "warnings": [{"source": v["source"], "warning": v["warning"]} for v in videos if v["warning"]],
            "rejected": [{"source": v["source"], **rej} for v in videos for rej in v["rejected"]],
            "quality": quality,
        }
    }


def stabilization_job(
    out: Path,
    sources: list[VideoSource],
    params: dict[str, Any],
    *,
    seed: int = 0,
    formats: list[str],
    prefix: str = "stabilize",
    videogan: bool = False,
) -> StoreJob:
    """Validate and plan: the record names every input, so --resume refuses a different input list."""
    p = validate_params(params)
    if p.max_clips > CLIPS_PER_VIDEO_SLOT:
        raise DatagenError(f"max_clips must be <= {CLIPS_PER_VIDEO_SLOT}, got {p.max_clips}")
    if not 0 <= seed < 2**63:
        raise DatagenError(f"--seed must be in [0, 2**63), got {seed}")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DatagenError(f"unknown format {bad[0] if bad else ''!r}; choose from wds, hdf5, both")
    if len(sources) * CLIPS_PER_VIDEO_SLOT >= 10**9:
        raise DatagenError(f"at most {10**9 // CLIPS_PER_VIDEO_SLOT - 1} input videos per store")
    formats = sorted(set(formats))
    if not p.pad and "hdf5" in formats:
        raise DatagenError("unpadded clips vary in length; HDF5 shards need pad=True (or use --format wds)")
    params = p.to_json()
    shape = [p.max_frames if p.pad else None, p.size, p.size, 3]
    record = {
        "generator": GENERATOR,
        "params": {**params, "inputs": [[s.path, s.kind] for s in sources]},
        "seed": seed,
        "layout": {"n_videos": len(sources), "formats": formats, "prefix": prefix, "videogan": videogan},
        "sample": {
            "video": {"dtype": "uint8", "shape": shape, "layout": "THWC"},
            "key": "video_index * 1000 + clip_index, zero-padded to 9 digits",
        },
    }
    tasks = [
        Task(
            id=f"video-{i:06d}",
            fn=write_stabilized_shard,
            args=(str(out), params, seed, prefix, formats, i, (s.path, s.kind), videogan),
        )
        for i, s in enumerate(sources)
    ]
    return StoreJob(
        out=Path(out),
        record=record,
        tasks=tasks,
        summarize=summarize,
        progress_unit="videos",
        keep_result=lambda r: not r["video"]["error"],  # --resume retries inputs that could not be read
    )
