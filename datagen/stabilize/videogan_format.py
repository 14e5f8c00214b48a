"""VideoGAN's on-disk clip format, so its loaders (and TGAN's golf loader) read our clips unchanged.

A clip is one JPEG: its square frames stacked vertically (np.vstack), so frame k is rows [k*W, (k+1)*W).
A list file names one clip per line, relative to the list's folder (VideoGAN's loader takes the first
whitespace token of each line). Layout written here: `<root>/<video:06d>/<clip:04d>.jpg` and
`<root>/list.txt`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datagen.errors import DatagenError
from datagen.store.atomic import write_bytes_atomic, write_error

JPEG_QUALITY = 95  # cv2.imwrite's default, which VideoGAN's script used
LIST_NAME = "list.txt"


def encode_strip(frames_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """(T, S, S, 3) uint8 RGB -> JPEG bytes of the (T*S, S) vertical stack."""
    t, h, w, c = frames_rgb.shape
    if h != w or c != 3:
        raise ValueError(f"frames must be (T, S, S, 3), got {frames_rgb.shape}")
    stack = cv2.cvtColor(frames_rgb.reshape(t * h, w, 3), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", stack, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DatagenError("JPEG encoding failed")
    return buf.tobytes()


def decode_strip(data: bytes) -> np.ndarray:
    """JPEG bytes of a vertical stack -> (height // width, W, W, 3) uint8 RGB."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatagenError("cannot decode stacked JPEG clip")
    h, w = image.shape[:2]
    t = h // w
    return cv2.cvtColor(image[: t * w], cv2.COLOR_BGR2RGB).reshape(t, w, w, 3)


def strip_path(root: Path, video_index: int, clip_index: int) -> Path:
    return Path(root) / f"{video_index:06d}" / f"{clip_index:04d}.jpg"


def write_strip(path: Path, frames_rgb: np.ndarray) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path.parent) from None
    write_bytes_atomic(path, encode_strip(frames_rgb))


def read_strip(path: Path) -> np.ndarray:
    return decode_strip(Path(path).read_bytes())


def write_list(root: Path) -> Path:
    """List every strip under `root` (sorted, relative paths) in `root/list.txt`; returns its path."""
    root = Path(root)
    lines = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    final = root / LIST_NAME
    write_bytes_atomic(final, "".join(f"{line}\n" for line in lines).encode())
    return final


def read_list(list_file: Path) -> list[Path]:
    """Clip paths named by a VideoGAN list file (first token per line, relative to the list's folder)."""
    list_file = Path(list_file)
    out = []
    for line in list_file.read_text().splitlines():
        tokens = line.split()
        if tokens:
            p = Path(tokens[0])
            out.append(p if p.is_absolute() else list_file.parent / p)
    return out
