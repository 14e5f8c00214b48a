"""Cut a stream of frames into stabilized clips (VideoGAN's rules, with the issue's clip length).

- The first `skip_frames` frames of a video are skipped; a clip's first frame is its reference.
- Each next frame is matched to the previous one; the step homographies are chained (H_t = H_{t-1} @ M_t) so
  frame t is warped into the reference.
- Matching fails (too few keypoints, < min_matches ratio-test matches): the clip ends there and the failing
  frame starts the next clip (`on_match_failure="drop"` drops the failed clip instead, as VideoGAN's code).
- The warped frame leaves the view (its eroded validity mask is empty in the output crop): the clip ends and
  that frame starts the next clip.
- A clip is cut at `max_frames`; the next frame starts a new one. Clips shorter than `min_frames` are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from datagen.stabilize.chain import resize_crop, warp_to_reference
from datagen.stabilize.matching import Features, StepMatch
from datagen.stabilize.params import StabilizeParams

Extract = Callable[[np.ndarray], Features]
Match = Callable[[Features, Features, int], StepMatch]  # (current, previous, rng_seed) -> step


@dataclass
class RawClip:
    """One clip before compositing: everything warped into its first frame (index `start` in the source)."""

    start: int
    chained: list[np.ndarray] = field(default_factory=list)  # (3, 3) frame t -> reference, full-res pixels
    steps: list[StepMatch] = field(default_factory=list)  # len(chained) - 1
    warped: list[np.ndarray] = field(default_factory=list)  # full-res warped BGR (crop mode only)
    masks: list[np.ndarray] = field(default_factory=list)  # full-res eroded masks (crop mode only)
    warped_out: list[np.ndarray] = field(default_factory=list)  # output-size float32 warped BGR
    masks_out: list[np.ndarray] = field(default_factory=list)  # output-size float32 masks in [0, 1]
    raw_out: list[np.ndarray] = field(default_factory=list)  # output-size unwarped BGR, for "before" figures
    end_reason: str = ""

    def __len__(self) -> int:
        return len(self.chained)

    @property
    def stop(self) -> int:
        """One past the last source frame index."""
        return self.start + len(self)


@dataclass
class CutStats:
    """What happened to the frames of one video: clips kept by the cutter and dropped, with reasons."""

    n_frames: int = 0
    dropped_short: int = 0
    dropped_failed: int = 0
    end_reasons: dict[str, int] = field(default_factory=dict)


def step_seed(seed: int, video_index: int, frame_index: int) -> int:
    """RANSAC's seed for one frame pair: depends only on (seed, video, frame), never on clip boundaries."""
    ss = np.random.SeedSequence(seed, spawn_key=(video_index, frame_index))
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def _add_frame(clip: RawClip, frame: np.ndarray, chained: np.ndarray, p: StabilizeParams) -> bool:
    """Warp `frame` into the clip; False (and nothing added) when its warped mask misses the output crop."""
    warped, mask = warp_to_reference(frame, chained)
    mask_out = resize_crop(mask, p.size, p.resize_interp).astype(np.float32) / 255.0
    if not mask_out.any():
        return False
    clip.chained.append(chained)
    clip.masks_out.append(mask_out)
    clip.warped_out.append(resize_crop(warped, p.size, p.resize_interp).astype(np.float32))
    clip.raw_out.append(resize_crop(frame, p.size, p.resize_interp))
    if p.fill == "crop":
        clip.warped.append(warped)
        clip.masks.append(mask)
    return True


def cut_clips(
    frames: Iterable[np.ndarray],
    p: StabilizeParams,
    extract: Extract,
    match: Match,
    *,
    seed: int = 0,
    video_index: int = 0,
    stats: CutStats | None = None,
) -> Iterator[RawClip]:
    """Yield the clips of one video that pass the cutting rules, in source order (at most `max_clips`)."""
    stats = stats if stats is not None else CutStats()
    n_kept = 0
    clip: RawClip | None = None
    prev: Features | None = None

    def finish(c: RawClip, reason: str, failed: bool = False) -> RawClip | None:
        c.end_reason = reason
        stats.end_reasons[reason] = stats.end_reasons.get(reason, 0) + 1
        if failed and p.on_match_failure == "drop":
            stats.dropped_failed += 1
            return None
        if len(c) < p.min_frames:
            stats.dropped_short += 1
            return None
        return c

    for index, frame in enumerate(frames):
        stats.n_frames += 1
        if index < p.skip_frames:
            continue
        feats = extract(frame)
        finished: list[RawClip | None] = []
        if clip is not None:
            step = match(feats, prev, step_seed(seed, video_index, index))
            if step.homography is None:
                finished.append(finish(clip, "match failed", failed=True))
                clip = None
            elif _add_frame(clip, frame, clip.chained[-1] @ step.homography, p):
                clip.steps.append(step)
            else:
                finished.append(finish(clip, "out of view"))
                clip = None
        if clip is None:
            clip = RawClip(start=index)
            _add_frame(clip, frame, np.eye(3), p)
        elif len(clip) == p.max_frames:
            finished.append(finish(clip, "max frames"))
            clip = None
        prev = feats
        for done in finished:
            if done is not None:
                n_kept += 1
                yield done
                if n_kept >= p.max_clips:
                    return
    if clip is not None:
        last = finish(clip, "end of video")
        if last is not None:
            yield last
