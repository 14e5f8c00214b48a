"""Stabilization quality figures, implemented from their definitions (videogen_anchors.md 2.5).

- ITF (Morimoto & Chellappa): mean PSNR between consecutive frames, PSNR = 10 log10(255^2 / MSE), MSE over
  all pixels and channels. Identical frames would give infinity; their PSNR is capped at `PSNR_CAP` dB.
- Stability score (Liu et al. 2013): camera path P_t = F_1 ... F_t (P_0 = I) from the homographies F_t
  between consecutive frames; translation signal sqrt(P02^2 + P12^2) and rotation signal atan2(P10, P00) (the
  true angle, not DIFRINT's atan2(P00, P11)); E(k) = |FFT|^2; SS = sum_{k=1..5} E(k) / sum_{k=1..N//2} E(k).
  Liu's figure is min(SS_trans, SS_rot) (`stability`); DIFRINT-style scripts report the mean
  (`stability_mean`).
  A signal with no energy at all (perfectly still) scores 1.
- Residual background motion: median dense-flow magnitude (Farneback, output pixels) between consecutive
  frames over pixels that are valid (not filled) in both; the median ignores a small moving foreground.
  F_t for the camera path is fitted to the same flow field (RANSAC homography), so "before" and "after" are
  measured with one estimator at the output resolution.
"""

from __future__ import annotations

import cv2
import numpy as np

PSNR_CAP = 100.0
SS_LOW_BINS = 5
_FLOW_STRIDE = 2


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * np.log10(peak**2 / mse))


def itf(frames: np.ndarray) -> float:
    """Inter-frame transformation fidelity of (T, H, W[, C]) frames: mean PSNR of consecutive pairs."""
    if len(frames) < 2:
        raise ValueError("ITF needs at least 2 frames")
    return float(np.mean([psnr(frames[k], frames[k + 1]) for k in range(len(frames) - 1)]))


def camera_path(steps: np.ndarray) -> np.ndarray:
    """(N-1, 3, 3) consecutive-frame homographies -> (N, 3, 3) path, P_0 = I, P_t = P_{t-1} @ F_t."""
    path = [np.eye(3)]
    for f in steps:
        p = path[-1] @ f
        path.append(p / p[2, 2])
    return np.stack(path)


def _low_frequency_share(signal: np.ndarray) -> float:
    energy = np.abs(np.fft.fft(signal)) ** 2
    half = len(signal) // 2
    total = energy[1 : half + 1].sum()
    if total <= 1e-20 * max(1.0, float(np.sum(signal**2))):
        return 1.0
    return float(energy[1 : min(SS_LOW_BINS, half) + 1].sum() / total)


def stability_scores(path: np.ndarray) -> tuple[float, float]:
    """(SS_translation, SS_rotation) of a (N, 3, 3) camera path."""
    trans = np.hypot(path[:, 0, 2], path[:, 1, 2])
    rot = np.arctan2(path[:, 1, 0], path[:, 0, 0])
    return _low_frequency_share(trans), _low_frequency_share(rot)


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame


def dense_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Farneback flow (H, W, 2) from frame a to frame b (uint8 BGR or gray)."""
    return cv2.calcOpticalFlowFarneback(_gray(a), _gray(b), None, 0.5, 3, 9, 3, 5, 1.1, 0)


def flow_homography(flow: np.ndarray, valid: np.ndarray, rng_seed: int = 0) -> np.ndarray:
    """Homography mapping frame b's points to frame a's, fitted by RANSAC (0.5 px) to the valid flow."""
    h, w = valid.shape
    ys, xs = np.mgrid[0:h:_FLOW_STRIDE, 0:w:_FLOW_STRIDE]
    keep = valid[ys, xs]
    if keep.sum() < 8:
        return np.eye(3)
    src = np.stack([xs[keep], ys[keep]], axis=1).astype(np.float32)
    dst = src + flow[ys[keep], xs[keep]]
    cv2.setRNGSeed(rng_seed)
    m, _ = cv2.findHomography(dst.reshape(-1, 1, 2), src.reshape(-1, 1, 2), cv2.RANSAC, 0.5)
    if m is None or not np.all(np.isfinite(m)) or abs(m[2, 2]) < 1e-12:
        return np.eye(3)
    return m / m[2, 2]


def motion_figures(frames: np.ndarray, valid: np.ndarray | None = None) -> dict[str, object]:
    """Residual motion per step, its mean, and the stability scores of (T, H, W, C) uint8 frames.

    valid: optional (T, H, W) bool, pixels that show real content (not filled from a previous frame).
    """
    t = len(frames)
    valid = np.ones(frames.shape[:3], bool) if valid is None else valid
    motion, steps = [], []
    for k in range(t - 1):
        flow = dense_flow(frames[k], frames[k + 1])
        both = valid[k] & valid[k + 1]
        mag = np.hypot(flow[..., 0], flow[..., 1])[both]
        motion.append(float(np.median(mag)) if mag.size else 0.0)
        steps.append(flow_homography(flow, both, rng_seed=k))
    ss_t, ss_r = stability_scores(camera_path(np.array(steps).reshape(-1, 3, 3)))
    return {
        "residual_motion": motion,
        "residual_motion_mean": float(np.mean(motion)) if motion else 0.0,
        "stability_translation": ss_t,
        "stability_rotation": ss_r,
        "stability": min(ss_t, ss_r),
        "stability_mean": 0.5 * (ss_t + ss_r),
    }
