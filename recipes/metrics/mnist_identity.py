"""Moving MNIST digit identity persistence: does each digit stay the same digit along a clip?

Per video (research note videogen_anchors.md section 3.2): find the digits (pixels above ``threshold``, grown
by ``dilate`` px so a digit's strokes form one component), keep frames that show exactly ``n_digits``
separate digits, each no larger than a digit can be (bounding box at most ``28 + 2 * dilate`` px a side: a
frame-filling grey blob, or two digits touching, is not a digit; an untrained generator's uniform grey frame
is otherwise one centred "digit" the CNN labels with ~0.9 confidence), crop 28x28 around each digit's
intensity centroid (MNIST digits are centred by centre of mass, so the crop matches the classifier's
training data; pixels outside the digit's component are zeroed),
classify every crop with the project's digit CNN, and link the digits into tracks (Hungarian matching on
constant-velocity predictions, bridging frames where the digits overlap). Reported:

* ``identity_persistence``: fraction of tracks (>= ``min_track`` frames) whose most frequent label covers at
  least ``agreement`` (95%) of the track's frames;
* ``label_agreement``: mean fraction of frames agreeing with the track's label;
* ``confidence``: mean max-softmax probability (a blurriness proxy);
* ``label_entropy``: entropy of the label marginal over all crops / log 10 (1 = all digits equally used);
* ``feature_drift``: mean over tracks of mean_t ``|f(crop_t) - f(crop_first)|`` on the classifier's
  penultimate features (MoCoGAN's average content distance idea);
* ``valid_frame_fraction``: fraction of frames with ``n_digits`` separate digits (components);
* ``confident_frame_fraction``: fraction of *all* frames that are valid and whose every digit the classifier
  labels with max softmax >= ``confident`` (0.8): "the classifier is confident on X% of the frames" (a
  frame without recognisable digits counts against it, so blank or blurred videos cannot score).

With two digits, real Moving MNIST has touching digits in about half of its frames (64x64, 28 px digits):
those frames are invalid by the definition above, so a per-frame criterion tops out near the real data's own
``confident_frame_fraction`` (measure it on real clips and report both).
"""

from __future__ import annotations

import numpy as np
import torch

from recipes.metrics.blobs import Blobs, detect_blobs, link_tracks, unit_gray
from recipes.models.digit_classifier import DigitClassifier

CROP = 28


def crop_digits(frames: np.ndarray, blobs: Blobs, rows: np.ndarray) -> np.ndarray:
    """``(len(rows), 28, 28)`` crops centred on the components ``rows``; pixels outside the component (its
    dilated mask) are zeroed, so a neighbouring digit never leaks into the crop."""
    half = CROP // 2
    pad_width = ((0, 0), (0, 0), (half, half), (half, half))
    frames_p, labels_p = np.pad(frames, pad_width), np.pad(blobs.label_image, pad_width)
    crops = np.zeros((len(rows), CROP, CROP), np.float32)
    for j, i in enumerate(rows):
        v, f = blobs.video[i], blobs.frame[i]
        # the crop's top-left corner in the padded frame (= centroid - half in the original frame)
        r0, c0 = (int(round(x)) for x in blobs.centroid[i])
        window = (slice(r0, r0 + CROP), slice(c0, c0 + CROP))
        crops[j] = frames_p[v, f][window] * (labels_p[v, f][window] == blobs.label[i])
    return crops


@torch.no_grad()
def mnist_identity_metrics(
    videos: torch.Tensor | np.ndarray,
    classifier: DigitClassifier,
    *,
    n_digits: int = 2,
    threshold: float = 0.3,
    dilate: int = 2,
    min_area: int = 15,
    max_jump: float = 12.0,
    agreement: float = 0.95,
    min_track: int = 3,
    confident: float = 0.8,
) -> dict[str, float]:
    """The metrics of the module docstring for ``(B, C, T, H, W)`` videos in [-1, 1]."""
    frames = unit_gray(videos)
    b, t_len = frames.shape[:2]
    blobs = detect_blobs(frames, threshold=threshold, dilate=dilate, min_area=min_area)
    per_frame = [[blobs.in_frame(v, t) for t in range(t_len)] for v in range(b)]
    extent = blobs.bbox[:, 2:] - blobs.bbox[:, :2]  # (K, 2) height, width of each component
    digit_sized = (extent <= CROP + 2 * dilate).all(axis=1)
    valid = np.array([[len(r) == n_digits and bool(digit_sized[r].all()) for r in vid] for vid in per_frame])
    rows = [r for vid, ok in zip(per_frame, valid, strict=True) for r, o in zip(vid, ok, strict=True) if o]
    rows = np.concatenate(rows).astype(int) if rows else np.zeros(0, int)
    crops = crop_digits(frames, blobs, rows)
    feats = classifier.features(torch.from_numpy(crops)[:, None])
    probs = torch.softmax(classifier.fc2(feats), dim=1).numpy()
    feats = feats.numpy()
    label_of = dict(zip(rows.tolist(), probs.argmax(1).tolist(), strict=True))
    # crops come in valid-frame order, n_digits per frame
    sure = (probs.max(1) >= confident).reshape(-1, n_digits).all(axis=1) if len(probs) else np.zeros(0, bool)
    feat_of = dict(zip(rows.tolist(), feats, strict=True))

    persistent, agree, drift = [], [], []
    for vid, ok in zip(per_frame, valid, strict=True):
        pts = [blobs.centroid[r] if o else np.zeros((0, 2)) for r, o in zip(vid, ok, strict=True)]
        pos, det = link_tracks(pts, max_jump=max_jump, max_gap=t_len)
        for k in range(pos.shape[1]):
            ts = np.flatnonzero(det[:, k] >= 0)
            if len(ts) < min_track:
                continue
            comp = [int(vid[t][det[t, k]]) for t in ts]
            labels = np.array([label_of[c] for c in comp])
            share = np.bincount(labels, minlength=10).max() / len(labels)
            agree.append(share)
            persistent.append(share >= agreement)
            f = np.stack([feat_of[c] for c in comp])
            drift.append(np.linalg.norm(f[1:] - f[0], axis=1).mean())
    marginal = probs.argmax(1) if len(probs) else np.zeros(0, int)
    hist = np.bincount(marginal, minlength=10) / max(len(marginal), 1)
    entropy = -(hist[hist > 0] * np.log(hist[hist > 0])).sum() / np.log(10)
    return {
        "identity_persistence": _mean(persistent),
        "label_agreement": _mean(agree),
        "confidence": float(probs.max(1).mean()) if len(probs) else float("nan"),
        "label_entropy": float(entropy),
        "feature_drift": _mean(drift),
        "valid_frame_fraction": float(valid.mean()),
        "confident_frame_fraction": float(sure.sum() / valid.size),
        "n_tracks": float(len(agree)),
    }


def _mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")
