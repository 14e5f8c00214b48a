"""Warp frames into the clip's first frame and turn them into square output frames.

VideoGAN warps every full-resolution frame with the chained homography, warps an all-255 image the same way,
erodes it once with a 5x5 kernel (so interpolated border pixels count as uncovered), applies the same
resize + centre crop to both, and composites `previous * (1 - mask) + warped * mask`: pixels the warp does
not cover are filled from the previous output frame. `fill="crop"` instead keeps only the centred square
that every frame of the clip covers.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

_ERODE_KERNEL = np.ones((5, 5), np.uint8)
_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def resize_crop(image: np.ndarray, size: int, interp: Literal["area", "linear"] = "area") -> np.ndarray:
    """VideoGAN's `process_im`: scale so the short side is `size`, then take the centred size x size."""
    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = size, max(size, round(w * size / h))
    else:
        new_h, new_w = max(size, round(h * size / w)), size
    if (new_h, new_w) != (h, w):
        image = cv2.resize(image, (new_w, new_h), interpolation=_INTERP[interp])
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[top : top + size, left : left + size]


def output_transform(height: int, width: int, size: int) -> np.ndarray:
    """3x3 map from full-resolution pixel coordinates to output (resized + cropped) pixel coordinates."""
    if height <= width:
        new_h, new_w = size, max(size, round(width * size / height))
    else:
        new_h, new_w = max(size, round(height * size / width)), size
    sx, sy = new_w / width, new_h / height
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.array([[sx, 0, 0.5 * sx - 0.5 - left], [0, sy, 0.5 * sy - 0.5 - top], [0, 0, 1.0]])


def warp_to_reference(frame: np.ndarray, chained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame warped into the reference frame, and its eroded validity mask (uint8, 0 or 255)."""
    h, w = frame.shape[:2]
    warped = cv2.warpPerspective(frame, chained, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), chained, (w, h), flags=cv2.INTER_LINEAR)
    return warped, cv2.erode(mask, _ERODE_KERNEL, iterations=1)


def composite_fill(warped: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill uncovered pixels from the previous output frame.

    warped: (T, S, S, C) float32 output-size frames; masks: (T, S, S) in [0, 1]. Returns uint8 frames and the
    filled fraction per frame (1 - mean mask). The recurrence is over time only (T <= 32, cheap).
    """
    out = np.empty(warped.shape, np.float32)
    prev = np.zeros(warped.shape[1:], np.float32)
    for t in range(len(warped)):
        m = masks[t][..., None]
        prev = prev * (1.0 - m) + warped[t] * m
        out[t] = prev
    frames = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return frames, 1.0 - masks.reshape(len(masks), -1).mean(axis=1)


def largest_centred_square(valid: np.ndarray) -> int:
    """Half-size r of the largest all-valid square centred in `valid` (H, W bool); 0 when there is none."""
    h, w = valid.shape
    cy, cx = h // 2, w // 2
    integral = cv2.integral(valid.astype(np.uint8))

    def all_valid(r: int) -> bool:
        y0, y1, x0, x1 = cy - r, cy + r, cx - r, cx + r
        area = (y1 - y0) * (x1 - x0)
        return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0] == area

    lo, hi = 0, min(cy, cx, h - cy, w - cx)
    while lo < hi:  # largest r with all_valid(r); validity shrinks monotonically with r
        mid = (lo + hi + 1) // 2
        if all_valid(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def crop_common(
    warped_full: list[np.ndarray], masks_full: list[np.ndarray], size: int, interp: Literal["area", "linear"]
) -> tuple[np.ndarray, float]:
    """Crop every frame to the centred square all frames cover; returns frames and the kept side fraction."""
    common = np.logical_and.reduce([m == 255 for m in masks_full])
    r = largest_centred_square(common)
    h, w = common.shape
    if r == 0:
        return np.zeros((len(warped_full), size, size, warped_full[0].shape[2]), np.uint8), 0.0
    cy, cx = h // 2, w // 2
    frames = [resize_crop(f[cy - r : cy + r, cx - r : cx + r], size, interp) for f in warped_full]
    return np.stack(frames), 2 * r / min(h, w)
