"""JSON text of many rounded float arrays at once, byte-identical to `json.dumps` of their `.tolist()`.

`json.dumps` spends ~250 ns per float (Python's shortest-repr formatting), which makes the per-frame ground
truth of a bouncing-balls clip (360 floats) cost more to encode than to simulate and render. Here the digits
of every number of a batch are produced with integer numpy arithmetic and the texts cut out of one buffer.

Exactness: for x = round(v, d) = k / 10^d (numpy's `round`: `rint(v * 10^d) / 10^d`, a correctly rounded
division), Python's repr is the decimal k / 10^d with trailing zeros dropped: fixed notation for
1e-4 <= |x| < 1e16 ('12.5', '3.0', '-0.25'), scientific below 1e-4 ('5e-05', '1.2e-05', '7e-06'), and
'0.0' / '-0.0' for zero. Only d <= 6 is supported (so that every non-zero |x| >= 1e-6 has at most 2
significant digits below 1e-4), and |x| * 10^d < 1e18 (int64 digits; repr turns scientific only at 1e16).
"""

from __future__ import annotations

import numpy as np

MAX_DECIMALS = 6
_PAD = 0  # marks unused character cells; removed before the text is cut out


def rounded_json(values: np.ndarray, decimals: int = MAX_DECIMALS) -> list[bytes]:
    """`json.dumps(np.round(values[i], decimals).tolist(), separators=(",", ":"))` for every i, as bytes."""
    if not 0 <= decimals <= MAX_DECIMALS:
        raise ValueError(f"decimals must be in [0, {MAX_DECIMALS}], got {decimals}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 2:
        raise ValueError(f"need an array (N, ...) with one or more axes per item, got {values.shape}")
    if values.shape[0] == 0:
        return []
    scaled = np.rint(values * 10.0**decimals)
    if not np.isfinite(scaled).all() or np.abs(scaled).max(initial=0) >= 1e18:
        raise ValueError(f"values must be finite and below 1e{18 - decimals} in magnitude")
    prefix, suffix = _bracket_cells(values.shape[1:])  # (per item, depth) / (per item, depth + 1)
    k = np.abs(scaled.ravel()).astype(np.int64)
    whole, frac = np.divmod(k, 10**decimals)
    W = _number_width(whole, decimals)
    P, S = prefix.shape[1], suffix.shape[1]
    cells = np.empty((values.shape[0], prefix.shape[0], P + W + S), np.uint8)
    cells[:, :, :P] = prefix
    cells[:, :, P + W :] = suffix
    flat = cells.reshape(-1, P + W + S)
    _fill_number_cells(flat[:, P : P + W], np.signbit(scaled.ravel()), k, whole, frac, decimals)
    cells = cells.reshape(values.shape[0], -1)
    keep = cells != _PAD
    ends = np.cumsum(keep.sum(axis=1))
    text = cells[keep].tobytes()
    starts = np.concatenate([[0], ends[:-1]])
    return [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def _number_width(whole: np.ndarray, decimals: int) -> int:
    """Characters per number: sign, integer digits, '.', fraction digits; at least 8 for '-D.De-05'."""
    int_width = max(1, len(str(int(whole.max(initial=0)))))
    return max(1 + int_width + 1 + max(decimals, 1), 8)


def _fill_number_cells(
    cells: np.ndarray, negative: np.ndarray, k: np.ndarray, whole: np.ndarray, frac: np.ndarray, decimals: int
) -> None:
    """Write repr(±k / 10^decimals) into each row of `cells` (M, W), padded with _PAD.

    Built one column at a time with scalar divisors (numpy's fast integer division path).
    """
    W = cells.shape[1]
    int_width = W - 2 - max(decimals, 1)
    unit = 10**decimals
    if whole.max(initial=0) < 2**31:
        whole = whole.astype(np.int32)
    frac = frac.astype(np.int32)
    cells[:, 0] = np.where(negative, ord("-"), _PAD)
    # fixed notation: integer digits without leading zeros, '.', fraction digits without trailing zeros
    for j in range(int_width):
        place = 10 ** (int_width - 1 - j)
        digit = (whole // place % 10).astype(np.uint8) + ord("0")
        cells[:, 1 + j] = digit if place == 1 else np.where(whole >= place, digit, _PAD)  # '0.5' keeps its 0
    cells[:, 1 + int_width] = ord(".")
    if decimals:
        for j in range(decimals):
            digit = (frac // 10 ** (decimals - 1 - j) % 10).astype(np.uint8) + ord("0")
            kept = digit if j == 0 else np.where(frac % 10 ** (decimals - j) != 0, digit, _PAD)  # '3.0'
            cells[:, 2 + int_width + j] = kept
    else:
        cells[:, 2 + int_width] = ord("0")
    # scientific notation below 1e-4: k has 1 or 2 digits ('7e-06', '1.2e-05', '5e-05' for 6 decimals)
    small = (k > 0) & (k < unit // 10**4)
    if small.any():
        ks = k[small]
        two = ks >= 10
        second = np.where(two, ks % 10, 0)
        sci = np.full((ks.size, W - 1), _PAD, np.uint8)
        sci[:, 0] = np.where(two, ks // 10, ks) + ord("0")
        sci[:, 1] = np.where(second != 0, ord("."), _PAD)
        sci[:, 2] = np.where(second != 0, second + ord("0"), _PAD)
        sci[:, 3:6] = np.frombuffer(b"e-0", np.uint8)
        sci[:, 6] = decimals - two + ord("0")
        cells[small, 1:] = sci


def _bracket_cells(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Opening brackets before and closing brackets + comma after each number of one nested list."""
    depth = len(shape)
    index = np.indices(shape).reshape(depth, -1).T  # (numbers, depth)
    first = index == 0
    last = index == np.array(shape) - 1
    # '[' for every axis from the innermost outwards while this number is the first along all inner axes
    opens = np.cumprod(first[:, ::-1], axis=1)[:, ::-1].astype(bool)
    closes = np.cumprod(last[:, ::-1], axis=1)[:, ::-1].astype(bool)
    prefix = np.where(opens, ord("["), _PAD).astype(np.uint8)
    suffix = np.zeros((index.shape[0], depth + 1), np.uint8)
    suffix[:, :depth] = np.where(closes[:, ::-1], ord("]"), _PAD)
    suffix[:, depth] = np.where(closes[:, 0], _PAD, ord(","))
    return prefix, suffix


class EncodedMeta(dict):
    """A sample's `meta` dict that also carries its JSON text, so shard writers need not encode it again.

    `encoded_json` equals `json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()` (the writers'
    encoding; tests check it), so using it changes no byte. Treat the dict as read-only.
    """

    __slots__ = ("encoded_json",)

    def __init__(self, content: dict, encoded_json: bytes) -> None:
        super().__init__(content)
        self.encoded_json = encoded_json
