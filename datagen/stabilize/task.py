"""One input video -> its stabilized clips (Samples), the clips rejected by quality thresholds, and a summary.

Nothing here raises for a bad input: an unreadable or truncated video is reported in `VideoResult.error` /
`warning`, so one corrupt file never stops a dataset run. Clips finished before a mid-video read error are
kept. Results depend only on (frames, params, seed, video_index): OpenCV runs single-threaded here and
RANSAC is seeded per frame pair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from datagen.errors import DatagenError
from datagen.sources.video import FrameReader, VideoSource
from datagen.stabilize.chain import composite_fill, crop_common, output_transform
from datagen.stabilize.clips import CutStats, RawClip, cut_clips
from datagen.stabilize.matching import FeatureExtractor, Features, StepMatch, match_step
from datagen.stabilize.params import StabilizeParams
from datagen.stabilize.quality import itf, motion_figures
from datagen.store.sample import Sample, sample_key

CLIPS_PER_VIDEO_SLOT = 1000  # global index = video_index * 1000 + clip_index (keys stay 9 digits, sorted)
VALID_MASK = 0.999  # an output pixel counts as real content (not filled) when its mask is at least this


def clip_global_index(video_index: int, clip_index: int) -> int:
    if not 0 <= clip_index < CLIPS_PER_VIDEO_SLOT:
        raise ValueError(f"clip index {clip_index} out of range [0, {CLIPS_PER_VIDEO_SLOT})")
    return video_index * CLIPS_PER_VIDEO_SLOT + clip_index


@dataclass
class VideoResult:
    video_index: int
    source: str
    samples: list[Sample] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {clip_index, frame range, reasons}
    error: str | None = None
    warning: str | None = None
    n_decoded: int = 0
    n_expected: int | None = None
    cut: CutStats = field(default_factory=CutStats)


def _round(values: Any, digits: int = 6) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def finalize_clip(raw: RawClip, p: StabilizeParams, source_shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Composite (or crop) a cut clip into RGB output frames; returns frames (T, S, S, 3) and its figures."""
    raw_out = np.stack(raw.raw_out)
    masks = np.stack(raw.masks_out)
    if p.fill == "previous":
        frames, filled = composite_fill(np.stack(raw.warped_out), masks)
        valid = masks >= VALID_MASK
        crop_side = 1.0
    else:
        frames, crop_side = crop_common(raw.warped, raw.masks, p.size, p.resize_interp)
        filled = np.zeros(len(frames))
        valid = np.ones(frames.shape[:3], bool)
    before, after = motion_figures(raw_out), motion_figures(frames, valid)
    steps: list[StepMatch] = raw.steps
    figures = {
        "source_size": list(source_shape),
        "output_transform": _round(output_transform(*source_shape, p.size)),
        "homographies": [_round(s.homography, 9) for s in steps],
        "matches": [s.n_matches for s in steps],
        "inliers": [s.n_inliers for s in steps],
        "residual_motion_before": _round(before["residual_motion"]),
        "residual_motion_after": _round(after["residual_motion"]),
        "residual_motion_before_mean": round(before["residual_motion_mean"], 6),
        "residual_motion_after_mean": round(after["residual_motion_mean"], 6),
        "filled_fraction": _round(filled),
        "filled_fraction_mean": round(float(np.mean(filled)), 6),
        "crop_side_fraction": round(float(crop_side), 6),
        "itf_before": round(itf(raw_out), 6),
        "itf_after": round(itf(frames), 6),
        **{f"{k}_before": round(before[k], 6) for k in ("stability", "stability_mean")},
        **{f"{k}_after": round(after[k], 6) for k in ("stability", "stability_mean")},
    }
    return frames[..., ::-1], figures  # BGR -> RGB


def reject_reasons(figures: dict, p: StabilizeParams) -> list[str]:
    """Why a clip fails the quality thresholds (empty list: keep it)."""
    reasons = []
    if figures["residual_motion_after_mean"] > p.max_residual_motion:
        reasons.append(
            f"residual motion {figures['residual_motion_after_mean']:.3f} > {p.max_residual_motion}"
        )
    if figures["filled_fraction_mean"] > p.max_filled_fraction:
        reasons.append(f"filled fraction {figures['filled_fraction_mean']:.3f} > {p.max_filled_fraction}")
    ratios = [i / m for i, m in zip(figures["inliers"], figures["matches"], strict=True) if m]
    if ratios and min(ratios) < p.min_inlier_ratio:
        reasons.append(f"inlier ratio {min(ratios):.3f} < {p.min_inlier_ratio}")
    if figures["crop_side_fraction"] == 0.0:
        reasons.append("no pixel is covered by every frame")
    return reasons


def pad_frames(frames: np.ndarray, length: int) -> np.ndarray:
    """Repeat the last frame up to `length` frames (VideoGAN's loader does this for short clips)."""
    if len(frames) >= length:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], length - len(frames), axis=0)])


def stabilize_video(source: VideoSource, video_index: int, p: StabilizeParams, seed: int) -> VideoResult:
    """Cut, stabilize and check every clip of one video."""
    cv2.setNumThreads(1)  # SIFT and RANSAC deterministic: one thread, seeded RNG per frame pair
    # FFmpeg's own log lines ("moov atom not found") would add to the one-line errors; the reason is in
    # VideoResult.error. Read at OpenCV's first capture; set OPENCV_FFMPEG_LOGLEVEL=24 to see them.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    result = VideoResult(video_index, source.path)
    extract = FeatureExtractor(p.match_short_side)

    def match(current: Features, previous: Features, rng_seed: int) -> StepMatch:
        return match_step(
            current,
            previous,
            ratio=p.ratio,
            ransac_px=p.ransac_px,
            min_matches=p.min_matches,
            matcher=p.matcher,
            rng_seed=rng_seed,
        )

    reader = FrameReader(source)
    shape: tuple[int, int] | None = None

    def frames():
        nonlocal shape
        for frame in reader:
            shape = shape or frame.shape[:2]
            yield frame

    try:
        clips = cut_clips(frames(), p, extract, match, seed=seed, video_index=video_index, stats=result.cut)
        for clip_index, raw in enumerate(clips):
            video, figures = finalize_clip(raw, p, shape)
            index = clip_global_index(video_index, clip_index)
            meta = {
                "index": index,
                "source": source.path,
                "video_index": video_index,
                "clip_index": clip_index,
                "frame_start": raw.start,
                "frame_stop": raw.stop,
                "n_frames": len(video),
                "end_reason": raw.end_reason,
                **figures,
            }
            reasons = reject_reasons(figures, p)
            if reasons:
                result.rejected.append(
                    {**{k: meta[k] for k in ("clip_index", "frame_start", "frame_stop")}, "reasons": reasons}
                )
                continue
            video = pad_frames(video, p.max_frames) if p.pad else video
            result.samples.append(Sample(sample_key(index), np.ascontiguousarray(video), meta))
    except (DatagenError, cv2.error, OSError, ValueError) as e:  # a bad input, never a reason to stop the run
        result.error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    result.n_decoded, result.n_expected = reader.n_decoded, reader.n_expected
    if result.error is None and reader.n_expected and reader.n_decoded < reader.n_expected:
        result.warning = f"decoded {reader.n_decoded} of {reader.n_expected} frames (truncated file?)"
    return result
