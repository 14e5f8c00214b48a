"""JSON text of many rounded float arrays at once, byte-identical to `json.dumps` of their `.tolist()`.

`json.dumps` spends ~250 ns per float (Python's shortest-repr formatting) and `.tolist()` ~25 ns per float or
list, which makes the per-frame ground truth of a bouncing-balls clip (360 floats) cost more to encode than
to simulate and render. Here a numba kernel writes the digits of every number of a batch into one buffer.

Exactness: for x = round(v, d) = k / 10^d (numpy's `round`: `rint(v * 10^d) / 10^d`, a correctly rounded
division), Python's repr is the decimal k / 10^d with trailing zeros dropped: fixed notation for
1e-4 <= |x| < 1e16 ('12.5', '3.0', '-0.25'), scientific below 1e-4 ('5e-05', '1.2e-05', '7e-06'), and
'0.0' / '-0.0' for zero. Only d <= 6 is supported (so that every non-zero |x| >= 1e-6 has at most 2
significant digits below 1e-4), and |x| * 10^d < 1e16 (repr turns scientific at 1e16).
"""

from __future__ import annotations

import json
import math

import numpy as np
from numba import njit

MAX_DECIMALS = 6
_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), np.uint8).copy()
"""'00', '01', ..., '99' as 200 bytes: digits two at a time."""
MAX_SCALED = 1e16
"""Largest |value| * 10^decimals accepted: fixed notation and exact int64 digits below it."""


def rounded_json(values: np.ndarray, decimals: int = MAX_DECIMALS) -> list[bytes]:
    """`json.dumps(np.round(values[i], decimals).tolist(), separators=(",", ":"))` for every i, as bytes."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 2:
        raise ValueError(f"need an array (N, ...) with one or more axes per item, got {values.shape}")
    scaled = scale_for_json(values, decimals)
    texts = NestedJSON(values.shape[1:], decimals)
    return texts.split(*texts.write(scaled.reshape(len(values), math.prod(values.shape[1:])), [], []))


def scale_for_json(values: np.ndarray, decimals: int) -> np.ndarray:
    """rint(values * 10^decimals): the integers whose digits `NestedJSON` writes; checks the range."""
    if not 0 <= decimals <= MAX_DECIMALS:
        raise ValueError(f"decimals must be in [0, {MAX_DECIMALS}], got {decimals}")
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 10.0**decimals)
    if scaled.size and not (np.abs(scaled).max() < MAX_SCALED):  # also catches nan
        raise ValueError(f"values must be finite and below 1e{16 - decimals} in magnitude")
    return scaled


class NestedJSON:
    """JSON texts of many items, each made of fixed byte segments and per-item fields, in one buffer.

    The fields of item k are `ints[i][k]` (decimal) and then the nested lists (of this shape) of
    `arrays[a][k]`; the text is segment 0, field 0, segment 1, field 1, ... (whichever runs out first).
    """

    def __init__(self, shape: tuple[int, ...], decimals: int) -> None:
        self.shape, self.decimals = tuple(shape), decimals
        self.brackets = _bracket_counts(self.shape)
        self.period = math.prod(self.shape[1:]) if len(self.shape) > 1 else math.prod(self.shape)

    def write(
        self, arrays: list[np.ndarray] | np.ndarray, segments: list[bytes], ints: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(buffer, ends): item k's text is buffer[ends[k-1]:ends[k]]. `arrays` hold scaled values (N, L)."""
        arrays = [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
        scaled = np.stack([np.ascontiguousarray(a, dtype=np.float64) for a in arrays], axis=1)
        N = scaled.shape[0]
        seg_bytes = np.frombuffer(b"".join(segments), np.uint8) if segments else np.zeros(0, np.uint8)
        seg_ends = np.cumsum([len(s) for s in segments], dtype=np.int64)
        int_cols = (
            np.stack([np.asarray(i, np.int64) for i in ints], axis=1) if ints else np.zeros((N, 0), np.int64)
        )
        if int_cols.size and int_cols.min() < 0:
            raise ValueError("ints must be non-negative")
        whole_max = int(np.abs(scaled).max(initial=0)) // 10**self.decimals
        per_number = 1 + len(str(whole_max)) + 1 + max(self.decimals, 8) + 2 * len(self.shape) + 1
        per_item = per_number * scaled.shape[1] * scaled.shape[2] + len(seg_bytes) + 20 * int_cols.shape[1]
        buffer = np.empty(N * per_item, np.uint8)
        ends = np.empty(N, np.int64)
        _write_items(
            buffer, ends, scaled, self.brackets, self.period, self.decimals, seg_bytes, seg_ends, int_cols
        )
        return buffer, ends

    @staticmethod
    def split(buffer: np.ndarray, ends: np.ndarray) -> list[bytes]:
        if not ends.size:
            return []
        text = buffer[: ends[-1]].tobytes()
        starts = [0, *ends[:-1].tolist()]
        return [text[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]


def _bracket_counts(shape: tuple[int, ...]) -> np.ndarray:
    """Per number of one nested list: how many '[' before it, how many ']' after it, 1 if a ',' follows."""
    depth = len(shape)
    index = np.indices(shape).reshape(depth, -1).T  # (numbers, depth)
    first = index == 0
    last = index == np.array(shape) - 1
    # '[' for every axis from the innermost outwards while this number is the first along all inner axes
    opens = np.cumprod(first[:, ::-1], axis=1).sum(axis=1)
    closes = np.cumprod(last[:, ::-1], axis=1).sum(axis=1)
    return np.stack([opens, closes, closes < depth], axis=1).astype(np.int64)


@njit(cache=True)
def _write_items(buffer, ends, scaled, brackets, period, decimals, seg_bytes, seg_ends, int_cols):
    n_arrays, n_ints, n_segments = scaled.shape[1], int_cols.shape[1], seg_ends.size
    unit = 1
    for _ in range(decimals):
        unit *= 10
    spans = np.empty((scaled.shape[2], 2), np.int64)
    pos = 0
    for k in range(scaled.shape[0]):
        seg_start = 0
        for j in range(max(n_segments, n_ints + n_arrays)):
            if j < n_segments:
                for b in range(seg_start, seg_ends[j]):
                    buffer[pos] = seg_bytes[b]
                    pos += 1
                seg_start = seg_ends[j]
            if j < n_ints:
                pos = _write_uint(buffer, pos, int_cols[k, j])
            elif j - n_ints < n_arrays:
                pos = _write_list(buffer, pos, scaled[k, j - n_ints], brackets, decimals, unit, period, spans)
        ends[k] = pos


@njit(cache=True, inline="always")
def _write_list(buffer, pos, scaled, brackets, decimals, unit, period, spans):
    """One nested list. A number equal to the one `period` numbers earlier (in a trajectory: a velocity
    unchanged since the previous frame) is copied from that one's text; spans[m] = where number m went."""
    for m in range(scaled.size):
        for _ in range(brackets[m, 0]):
            buffer[pos] = 91  # '['
            pos += 1
        start, prev = pos, m - period
        if prev >= 0 and scaled[m] == scaled[prev] and scaled[m] != 0.0:  # (0.0 == -0.0 but prints apart)
            a, b = spans[prev, 0], spans[prev, 1]
            for i in range(b - a):
                buffer[pos + i] = buffer[a + i]
            pos += b - a
        else:
            pos = _write_number(buffer, pos, scaled[m], decimals, unit)
        spans[m, 0], spans[m, 1] = start, pos
        for _ in range(brackets[m, 1]):
            buffer[pos] = 93  # ']'
            pos += 1
        if brackets[m, 2]:
            buffer[pos] = 44  # ','
            pos += 1
    return pos


@njit(cache=True, inline="always")
def _write_uint(buffer, pos, value):
    """Decimal digits of value >= 0."""
    digits, limit = 1, 10
    while digits < 19 and value >= limit:
        digits += 1
        limit *= 10
    for d in range(digits - 1, -1, -1):
        buffer[pos + d] = 48 + value % 10
        value //= 10
    return pos + digits


@njit(cache=True, inline="always")
def _write_number(buffer, pos, scaled, decimals, unit):
    """repr(±k / unit) for scaled = ±k (an integral float64, |k| < 1e16), unit = 10^decimals; see the module
    docstring."""
    buffer[pos] = 45  # '-', kept only if negative (branch-free: signs are random)
    pos += math.copysign(1.0, scaled) < 0
    magnitude = abs(scaled)
    k = np.int64(magnitude)
    if 0 < k < unit // 10000:  # below 1e-4 (only for decimals > 4): 'De-0X' or 'D.De-0X'
        exponent = decimals
        if k >= 10:
            buffer[pos] = 48 + k // 10
            pos += 1
            if k % 10:
                buffer[pos] = 46  # '.'
                buffer[pos + 1] = 48 + k % 10
                pos += 2
            exponent -= 1
        else:
            buffer[pos] = 48 + k
            pos += 1
        buffer[pos], buffer[pos + 1], buffer[pos + 2], buffer[pos + 3] = 101, 45, 48, 48 + exponent  # e-0X
        return pos + 4
    whole = np.int64(magnitude / unit)  # k // unit without an integer division; exact after the fix-ups
    if whole * unit > k:
        whole -= 1
    elif (whole + 1) * unit <= k:
        whole += 1
    frac = k - whole * unit
    if whole < 100:  # one or two digits, branch-free
        tens = whole >= 10
        buffer[pos] = 48 + whole // 10
        buffer[pos + tens] = 48 + whole % 10
        pos += 1 + tens
    else:
        pos = _write_uint(buffer, pos, whole)
    buffer[pos] = 46  # '.'
    pos += 1
    if frac == 0:
        buffer[pos] = 48
        return pos + 1
    end = pos + decimals  # all `decimals` digits, two at a time from the right, then drop trailing zeros
    while end - pos >= 2:
        frac, pair = divmod(frac, 100)
        buffer[end - 2], buffer[end - 1] = _PAIRS[2 * pair], _PAIRS[2 * pair + 1]
        end -= 2
    if end > pos:
        buffer[pos] = 48 + frac
    end = pos + decimals
    while buffer[end - 1] == 48:
        end -= 1
    return end


class EncodedMeta(dict):
    """A sample's `meta` dict that also carries its JSON text, so shard writers need not encode it again.

    `encoded_json` equals `json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()` (the writers'
    encoding; tests check it), so using it changes no byte. Treat the dict as read-only.
    """

    __slots__ = ("encoded_json",)

    def __init__(self, content: dict, encoded_json: bytes) -> None:
        super().__init__(content)
        self.encoded_json = encoded_json


class LazyMeta(EncodedMeta):
    """An `EncodedMeta` made from its JSON text alone: the values are decoded on first read.

    Shard writers use only the text; building a clip's ~1000 Python floats and lists would cost more than
    simulating, rendering and writing it. The keys are there from the start (placeholders None), so
    `len`, `in` and truthiness need no decoding; every method that reads values or mutates decodes first
    (`json.loads` gives back exactly the floats the text was made from: repr round-trips). Copies and
    pickles are plain `EncodedMeta`s.
    """

    __slots__ = ("_encoded_only",)

    def __init__(self, keys: tuple[str, ...], encoded_json: bytes) -> None:
        super().__init__(dict.fromkeys(keys), encoded_json)
        self._encoded_only = True

    def _decode(self) -> None:
        if self._encoded_only:
            self._encoded_only = False
            dict.update(self, json.loads(self.encoded_json))

    def __eq__(self, other: object) -> bool:
        self._decode()
        if isinstance(other, LazyMeta):
            other._decode()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        return (EncodedMeta, (dict(self.items()), self.encoded_json))

    def copy(self) -> EncodedMeta:
        return EncodedMeta(dict(self.items()), self.encoded_json)


def _decoding(name: str):
    base = getattr(dict, name)

    def method(self, *args, **kwargs):
        self._decode()
        return base(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = base.__doc__
    return method


# every dict method that reads values (or lets the C API read them: overriding __iter__ makes dict(),
# {**m} and update() go through keys() and __getitem__) or mutates
for _name in (
    "__getitem__", "get", "keys", "values", "items", "__iter__", "__reversed__", "__repr__", "__or__",
    "__ror__", "__ior__", "__setitem__", "__delitem__", "pop", "popitem", "setdefault", "update", "clear",
):  # fmt: skip
    setattr(LazyMeta, _name, _decoding(_name))


class TemplateJSON:
    """JSON texts of many items: fixed byte segments around per-item fields, written in one buffer.

    Item k's text is segments[0], field 0 of item k, segments[1], ..., field F-1, segments[F]. A field of
    shape () is one number, any other shape a nested list of that shape. Its numbers are either
    non-negative integers written in decimal (as `json.dumps` writes ints) or, for a token field, indices
    into a table of texts made beforehand: for floats, the table holds the few distinct values
    `json.dumps` formats once (a Moving MNIST clip's 80 velocities take 4 distinct values), so the kernel
    only copies bytes.
    """

    def __init__(
        self, segments: list[bytes], shapes: list[tuple[int, ...]], token_fields: list[bool]
    ) -> None:
        if not len(segments) == len(shapes) + 1 == len(token_fields) + 1:
            raise ValueError("need one more segment than fields, and one token flag per field")
        if any(0 in shape for shape in shapes):
            raise ValueError(f"fields must hold at least one number, got shapes {shapes}")
        self.segments, self.shapes = list(segments), [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.tokens = np.array(token_fields, np.bool_)
        self.columns = np.cumsum([0, *self.sizes], dtype=np.int64)
        counts = [_bracket_counts(s) if s else np.zeros((1, 3), np.int64) for s in self.shapes]
        self.brackets = np.concatenate(counts)  # rows line up with the columns of the stacked fields
        self.seg_bytes = np.frombuffer(b"".join(self.segments), np.uint8)
        self.seg_ends = np.cumsum([len(s) for s in self.segments], dtype=np.int64)

    def write(self, fields: list[np.ndarray], tokens: bytes = b"") -> tuple[np.ndarray, np.ndarray]:
        """(buffer, ends) as `NestedJSON.write`. `fields[f]` is (N, *shapes[f]) integers; `tokens` the table's
        texts joined by commas (e.g. `json.dumps(floats)` without its brackets: no text may hold a comma)."""
        n = len(fields[0]) if fields else 0
        values = np.concatenate(
            [np.asarray(f, np.int64).reshape(n, size) for f, size in zip(fields, self.sizes, strict=True)],
            axis=1,
        )
        table = np.frombuffer(tokens, np.uint8)
        commas = np.flatnonzero(table == 44)
        tok_starts = np.concatenate([[0], commas + 1]).astype(np.int64)
        tok_ends = np.concatenate([commas, [table.size]]).astype(np.int64)
        ints = values[:, ~np.repeat(self.tokens, self.sizes)]
        if ints.size and ints.min() < 0:
            raise ValueError("integer fields must be non-negative")
        picked = values[:, np.repeat(self.tokens, self.sizes)]
        if picked.size and not (0 <= picked.min() and picked.max() < tok_starts.size):
            raise ValueError(f"token indices must lie in [0, {tok_starts.size})")
        per_int = len(str(int(ints.max(initial=0)))) + 1
        per_token = int((tok_ends - tok_starts).max(initial=0)) + 1
        brackets = int(self.brackets[:, :2].sum())
        per_item = self.seg_bytes.size + brackets + ints.shape[1] * per_int + picked.shape[1] * per_token
        buffer = np.empty(n * per_item, np.uint8)
        ends = np.empty(n, np.int64)
        _write_template(
            buffer,
            ends,
            values,
            self.columns,
            self.tokens,
            self.brackets,
            self.seg_bytes,
            self.seg_ends,
            table,
            tok_starts,
            tok_ends,
        )
        return buffer, ends

    split = staticmethod(NestedJSON.split)


@njit(cache=True)
def _write_template(
    buffer, ends, values, columns, tokens, brackets, seg_bytes, seg_ends, table, starts, ends_
):
    pos = 0
    for k in range(values.shape[0]):
        seg_start = 0
        for f in range(seg_ends.size):
            for b in range(seg_start, seg_ends[f]):
                buffer[pos] = seg_bytes[b]
                pos += 1
            seg_start = seg_ends[f]
            if f == tokens.size:
                break
            for c in range(columns[f], columns[f + 1]):
                for _ in range(brackets[c, 0]):
                    buffer[pos] = 91  # '['
                    pos += 1
                if tokens[f]:
                    t = values[k, c]
                    for b in range(starts[t], ends_[t]):
                        buffer[pos] = table[b]
                        pos += 1
                else:
                    pos = _write_uint(buffer, pos, values[k, c])
                for _ in range(brackets[c, 1]):
                    buffer[pos] = 93  # ']'
                    pos += 1
                if brackets[c, 2]:
                    buffer[pos] = 44  # ','
                    pos += 1
        ends[k] = pos
