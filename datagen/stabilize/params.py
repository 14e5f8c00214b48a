"""Every knob of the stabilizer in one validated, JSON-serialisable value (it goes into the manifest)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from datagen.errors import DatagenError

# Chosen from bench/bench_stabilize.py: on 1280x720 footage, SIFT matching at a 256 px short side is ~8x
# faster than at full resolution (whole stabilizer, one core) and its 32-frame chain stays at 0.15 px mean
# corner error (full resolution 0.05 px; 128 px: 0.7 px). 256 px is 4x the 64 px output (2x the 128 option),
# so the error is ~0.02 output pixels. Inputs already smaller than this are matched at full resolution.
DEFAULT_MATCH_SHORT_SIDE = 256


@dataclass(frozen=True)
class StabilizeParams:
    """VideoGAN's constants where it has them (ratio 0.7, RANSAC 5 px, 10 matches, 16 frames, skip 2)."""

    size: int = 64  # output frames are size x size (short side resized, centre crop); VideoGAN: 128
    max_frames: int = 32  # a clip is cut here and the next frame starts a new clip
    min_frames: int = 16  # shorter clips are dropped
    skip_frames: int = 2  # VideoGAN's FRAMES_DELAY: the first frames of every video are skipped
    max_clips: int = 100  # per video, as VideoGAN
    match_short_side: int | None = DEFAULT_MATCH_SHORT_SIDE  # None = SIFT at full resolution (VideoGAN)
    matcher: Literal["bf", "flann"] = "bf"  # VideoGAN uses FLANN (randomised kd-trees); bf is exact
    ratio: float = 0.7
    ransac_px: float = 5.0
    min_matches: int = 10
    on_match_failure: Literal["cut", "drop"] = "cut"  # cut: end the clip there; drop: VideoGAN's code
    fill: Literal["previous", "crop"] = (
        "previous"  # uncovered pixels: from the previous output frame, or crop
    )
    resize_interp: Literal["area", "linear"] = "area"  # VideoGAN's cv2.resize default is bilinear
    pad: bool = True  # repeat the last frame up to max_frames (VideoGAN's loader does the same)
    # Quality thresholds: clips failing any of them are rejected (counted, not written).
    max_residual_motion: float = 0.5  # mean median background flow after stabilization, output pixels
    max_filled_fraction: float = 0.3  # mean fraction of output pixels filled from the previous frame
    min_inlier_ratio: float = 0.2  # worst RANSAC inliers / good matches over the clip's steps

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "matcher": ("bf", "flann"),
    "on_match_failure": ("cut", "drop"),
    "fill": ("previous", "crop"),
    "resize_interp": ("area", "linear"),
}


def validate_params(raw: dict[str, Any] | StabilizeParams) -> StabilizeParams:
    """Check ranges and choices; unknown keys are an error (a typo must not silently use a default)."""
    if isinstance(raw, StabilizeParams):
        raw = raw.to_json()
    known = {f.name for f in dataclasses.fields(StabilizeParams)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DatagenError(f"unknown stabilize parameter(s) {unknown}; known: {sorted(known)}")
    p = StabilizeParams(**raw)
    for name, choices in _CHOICES.items():
        if getattr(p, name) not in choices:
            raise DatagenError(f"{name} must be one of {choices}, got {getattr(p, name)!r}")
    if p.size < 8:
        raise DatagenError(f"size must be >= 8, got {p.size}")
    if not 2 <= p.min_frames <= p.max_frames:
        raise DatagenError(f"need 2 <= min_frames <= max_frames, got {p.min_frames}, {p.max_frames}")
    if p.skip_frames < 0 or p.max_clips < 1:
        raise DatagenError("skip_frames must be >= 0 and max_clips >= 1")
    if p.match_short_side is not None and p.match_short_side < 16:
        raise DatagenError(f"match_short_side must be >= 16 or None, got {p.match_short_side}")
    if not 0 < p.ratio < 1 or p.ransac_px <= 0 or p.min_matches < 4:
        raise DatagenError("need 0 < ratio < 1, ransac_px > 0 and min_matches >= 4")
    return p
