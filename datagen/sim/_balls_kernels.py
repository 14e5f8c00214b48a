"""Numba kernels of the bouncing-balls generator: per-sample random draws, physics and rendering.

Each kernel loops over the samples of a batch and does one sample's work in scalar code; numpy's batched
version spent most of its time in temporaries, in per-sample `default_rng` objects (~8 us each) and in exp
of pixels that quantize to 0 anyway.

Random draws: this module defines the datasets' random stream, and it is numpy's stream today:
`SeedSequence(seed, spawn_key=(i,))` (entropy mixing and `generate_state(4, uint64)`), PCG64 (128-bit LCG,
XSL-RR output), `random()` = 53 high bits / 2^53 and `standard_normal()` = numpy's 256-layer ziggurat
(its tables stored in `datagen.sim._ziggurat`; the rare wedge and tail paths call the same libm
`exp`/`log1p` as numpy's C code). Why not numpy itself: per-sample Generator objects cost ~30 us a sample
against ~0.5 us here (1.2-1.4x the CPU of a whole `datagen balls` / `datagen mnist` job, `bench/
bench_library.py`), and numpy promises the same stream only for the same numpy build on the same machine,
while the canonical sets' digests (`data_manifests/`) must hold for any install. Tests pin the stream
(hashes of draws) and compare it, and the clips, with numpy's and the reference port's.

Physics: the reference operations in the reference order, in float64 without fused multiply-adds, so the
trajectories are bit-identical to the numpy version's.

Rendering: a pixel's value is `rint(255 * min(1, sum_c exp(-q_c^4)))`, `q_c = min(dx^2/r^2, Q_CAP/2) +
min(dy^2/r^2, Q_CAP/2)` for ball c at the pixel centre, summed in ball order, as the numpy version computed
it, with numpy's exp (called on buffers of exponents). Work is skipped only where it cannot matter: pixels
where every term is <= 0.49/255/n (they store 0) are not computed, and a ball's terms below ~1e-17 are left
out of a pixel's sum (a byte could change only if the sum lay within 1e-17 of a rounding boundary). The
canonical 100,000-clip sets (`data_manifests/`) keep their digests and tests compare thousands of clips
with the reference port.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from datagen.sim._ziggurat import FI, KI, WI, ZIGGURAT_NOR_INV_R, ZIGGURAT_NOR_R

_U = np.uint64
_M32 = _U(0xFFFFFFFF)
_M52 = _U(0x000FFFFFFFFFFFFF)
_ONE, _EIGHT, _ELEVEN, _XSHIFT, _THIRTY2 = _U(1), _U(8), _U(11), _U(16), _U(32)
_SIXTY3, _SIXTY4_MASK, _ROT_SHIFT = _U(63), _U(63), _U(58)
_BYTE = _U(0xFF)
# numpy/random/bit_generator.pyx (SeedSequence) constants
_INIT_A, _MULT_A = _U(0x43B0D7E5), _U(0x931E8875)
_INIT_B, _MULT_B = _U(0x8B51F9DD), _U(0x58F38DED)
_MIX_L, _MIX_R = _U(0xCA01F9DD), _U(0x4973F715)
POOL_SIZE = 4
# PCG64's 128-bit multiplier (numpy/random/src/pcg64/pcg64.h), as high and low 64-bit halves
_MUL_HI, _MUL_LO = _U(2549297995355413924), _U(4865540595714422341)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53

# --- numpy's SeedSequence and PCG64 ---------------------------------------------------------------------


def entropy_words(seed: int) -> np.ndarray:
    """The root seed as SeedSequence's uint32 words (little end first), zero-padded to the pool size.

    numpy pads the run entropy to the pool size whenever a spawn key follows, as it always does here.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    words = []
    while True:
        words.append(seed & 0xFFFFFFFF)
        seed >>= 32
        if not seed:
            break
    words += [0] * (POOL_SIZE - len(words))
    return np.array(words, np.uint64)


@njit(cache=True)
def _hashmix(value, hash_const):
    value = (value ^ hash_const) & _M32
    hash_const = (hash_const * _MULT_A) & _M32
    value = (value * hash_const) & _M32
    return value ^ (value >> _XSHIFT), hash_const


@njit(cache=True)
def _mix(x, y):
    result = (_MIX_L * x - _MIX_R * y) & _M32
    return result ^ (result >> _XSHIFT)


@njit(cache=True)
def _entropy_word(run_words, index, k):
    """Word k of the assembled entropy: the padded run words, then the spawn key (index) as uint32 words."""
    if k < run_words.size:
        return run_words[k]
    if k == run_words.size:
        return _U(index) & _M32
    return _U(index) >> _THIRTY2


@njit(cache=True)
def seed_pcg64(run_words, index, state):
    """state[:] = (state hi, state lo, inc hi, inc lo) of `PCG64(SeedSequence(seed, spawn_key=(index,)))`."""
    n_entropy = run_words.size + (2 if _U(index) >> _THIRTY2 else 1)
    pool = np.empty(POOL_SIZE, np.uint64)
    h = _INIT_A
    for i in range(POOL_SIZE):
        pool[i], h = _hashmix(_entropy_word(run_words, index, i) if i < n_entropy else _U(0), h)
    for i_src in range(POOL_SIZE):
        for i_dst in range(POOL_SIZE):
            if i_src != i_dst:
                mixed, h = _hashmix(pool[i_src], h)
                pool[i_dst] = _mix(pool[i_dst], mixed)
    for i_src in range(POOL_SIZE, n_entropy):
        for i_dst in range(POOL_SIZE):
            mixed, h = _hashmix(_entropy_word(run_words, index, i_src), h)
            pool[i_dst] = _mix(pool[i_dst], mixed)
    # generate_state(4, uint64): 8 uint32 words from the pool, paired little end first
    h = _INIT_B
    words = np.empty(8, np.uint64)
    for i in range(8):
        value = (pool[i % POOL_SIZE] ^ h) & _M32
        h = (h * _MULT_B) & _M32
        value = (value * h) & _M32
        words[i] = value ^ (value >> _XSHIFT)
    seed_hi, seed_lo = words[0] | (words[1] << _THIRTY2), words[2] | (words[3] << _THIRTY2)
    inc_hi, inc_lo = words[4] | (words[5] << _THIRTY2), words[6] | (words[7] << _THIRTY2)
    # pcg_setseq_128_srandom_r: inc = 2 * initseq + 1; step; state += initstate; step
    state[0], state[1] = _U(0), _U(0)
    state[2] = (inc_hi << _ONE) | (inc_lo >> _SIXTY3)
    state[3] = (inc_lo << _ONE) | _ONE
    _step(state)
    lo = state[1] + seed_lo
    state[0] = state[0] + seed_hi + (_ONE if lo < seed_lo else _U(0))
    state[1] = lo
    _step(state)


@njit(cache=True)
def _mulhi64(a, b):
    a0, a1 = a & _M32, a >> _THIRTY2
    b0, b1 = b & _M32, b >> _THIRTY2
    p00, p01, p10 = a0 * b0, a0 * b1, a1 * b0
    mid = (p00 >> _THIRTY2) + (p01 & _M32) + (p10 & _M32)
    return a1 * b1 + (p01 >> _THIRTY2) + (p10 >> _THIRTY2) + (mid >> _THIRTY2)


@njit(cache=True)
def _step(state):
    """state = state * MULT + inc (mod 2^128)."""
    hi, lo = state[0], state[1]
    new_hi = hi * _MUL_LO + lo * _MUL_HI + _mulhi64(lo, _MUL_LO)
    new_lo = lo * _MUL_LO
    lo2 = new_lo + state[3]
    state[0] = new_hi + state[2] + (_ONE if lo2 < new_lo else _U(0))
    state[1] = lo2


@njit(cache=True)
def next_uint64(state):
    """PCG64's next output: step, then XSL-RR of the new state."""
    _step(state)
    hi, lo = state[0], state[1]
    value, rot = hi ^ lo, hi >> _ROT_SHIFT
    return (value >> rot) | (value << ((_U(64) - rot) & _SIXTY4_MASK))


@njit(cache=True)
def next_double(state):
    return float(next_uint64(state) >> _ELEVEN) * _TO_UNIT


@njit(cache=True)
def standard_normal(state):
    """numpy's `random_standard_normal` (ziggurat; distributions.c)."""
    while True:
        r = next_uint64(state)
        idx = r & _BYTE
        r >>= _EIGHT
        sign = r & _ONE
        rabs = (r >> _ONE) & _M52
        x = float(rabs) * WI[idx]
        if sign:
            x = -x
        if rabs < KI[idx]:
            return x
        if idx == 0:
            while True:
                xx = -ZIGGURAT_NOR_INV_R * math.log1p(-next_double(state))
                yy = -math.log1p(-next_double(state))
                if yy + yy > xx * xx:
                    return -(ZIGGURAT_NOR_R + xx) if (rabs >> _EIGHT) & _ONE else ZIGGURAT_NOR_R + xx
        elif (FI[idx - 1] - FI[idx]) * next_double(state) + FI[idx] < math.exp(-0.5 * x * x):
            return x


# --- initial state ------------------------------------------------------------------------------------


@njit(cache=True)
def _placed(x, radius, box):
    """The reference's test: every ball inside the box and no pair closer than 2 radius."""
    n = x.shape[0]
    for i in range(n):
        for z in range(2):
            if x[i, z] - radius < 0 or x[i, z] + radius > box:
                return False
    for i in range(n):
        for j in range(i):
            d0, d1 = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1]
            if math.sqrt(d0 * d0 + d1 * d1) < radius + radius:
                return False
    return True


@njit(cache=True)
def initial_draws(run_words, indices, radius, box, max_tries, raw_v, x0, tries):
    """Per sample k: raw_v[k] = standard_normal((n, 2)), then x0[k] = box/5 + (4 box/5) random((n, 2)) drawn
    until placed, as the reference draws them; tries[k] = attempts. Returns the first k that used up
    max_tries (x0[k] is then not placed), or -1."""
    n = raw_v.shape[1]
    state = np.empty(4, np.uint64)
    low, span = box / 5, box * 4 / 5
    for k in range(indices.size):
        seed_pcg64(run_words, indices[k], state)
        for i in range(n):
            for z in range(2):
                raw_v[k, i, z] = standard_normal(state)
        tries[k] = 0
        while tries[k] < max_tries:
            tries[k] += 1
            for i in range(n):
                for z in range(2):
                    x0[k, i, z] = low + next_double(state) * span
            if _placed(x0[k], radius, box):
                break
        else:
            return k
    return -1


@njit(cache=True)
def count_placed(cands, radius, box):
    """How many candidate position sets (K, n, 2) pass the reference's placement test."""
    count = 0
    for k in range(cands.shape[0]):
        count += _placed(cands[k], radius, box)
    return count


# --- physics ------------------------------------------------------------------------------------------


EVENT_FIELDS = 7
"""Columns of an event record: sample, frame (the step from frame t to t + 1), kind (0 wall, 1 collision),
first ball, second ball (-1 for a wall), x, y (world units: the ball's centre, a collision's midpoint)."""


@njit(cache=True)
def _event(events, count, k, t, kind, i, j, x, y):
    """Append one event record if there is room; the count grows regardless (the caller sees overflow)."""
    if count < events.shape[0]:
        row = events[count]
        row[0], row[1], row[2], row[3], row[4], row[5], row[6] = k, t, kind, i, j, x, y
    return count + 1


@njit(cache=True)
def simulate(x0, v0, radius, box, eps, steps, X, V, events):
    """X[k, t], V[k, t] = state before frame t's `steps` sub-steps of `x += eps * v`, walls, collisions.

    With a non-empty `events` array (E, EVENT_FIELDS), every wall bounce that reverses a velocity component
    and every collision the physics applies is recorded there (recording never changes the trajectories);
    returns the number of events (more than E: the array was too small, call again with a larger one)."""
    N, frames, n = X.shape[0], X.shape[1], X.shape[2]
    x = np.empty((n, 2))
    v = np.empty((n, 2))
    reach = radius + radius
    record = events.shape[0] > 0
    count = 0
    for k in range(N):
        x[:] = x0[k]
        v[:] = v0[k]
        for t in range(frames):
            X[k, t] = x
            V[k, t] = v
            for _ in range(steps):
                for i in range(n):
                    for z in range(2):
                        x[i, z] += eps * v[i, z]
                for i in range(n):
                    for z in range(2):
                        if x[i, z] - radius < 0:
                            if record and v[i, z] < 0:
                                count = _event(events, count, k, t, 0, i, -1, x[i, 0], x[i, 1])
                            v[i, z] = abs(v[i, z])
                        if x[i, z] + radius > box:
                            if record and v[i, z] > 0:
                                count = _event(events, count, k, t, 0, i, -1, x[i, 0], x[i, 1])
                            v[i, z] = -abs(v[i, z])
                for i in range(n):
                    for j in range(i):
                        d0, d1 = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1]
                        if math.sqrt(d0 * d0 + d1 * d1) < reach:
                            if record:
                                mx, my = (x[i, 0] + x[j, 0]) / 2, (x[i, 1] + x[j, 1]) / 2
                                count = _event(events, count, k, t, 1, j, i, mx, my)
                            _collide(x, v, i, j)
    return count


@njit(cache=True)
def _collide(x, v, i, j):
    """Elastic collision of balls i and j (unit masses) along their line of centres, as the original."""
    w0, w1 = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1]
    norm = math.sqrt(w0 * w0 + w1 * w1)
    w0, w1 = w0 / norm, w1 / norm
    vi0, vi1, vj0, vj1 = v[i, 0], v[i, 1], v[j, 0], v[j, 1]
    v_i = w0 * vi0 + w1 * vi1
    v_j = w0 * vj0 + w1 * vj1
    m_i = m_j = 1.0
    new_v_j = (2 * m_i * v_i + v_j * (m_j - m_i)) / (m_i + m_j)
    new_v_i = new_v_j + (v_j - v_i)
    v[i, 0], v[i, 1] = vi0 + w0 * (new_v_i - v_i), vi1 + w1 * (new_v_i - v_i)
    v[j, 0], v[j, 1] = vj0 + w0 * (new_v_j - v_j), vj1 + w1 * (new_v_j - v_j)


# --- rendering ----------------------------------------------------------------------------------------
# A frame is rendered as boxes, one per ball: the pixels where that ball's q < q_zero. Every pixel outside
# all boxes stores 0 (each term <= 0.49 / 255 / n there). For the pixels of a box, `box_terms` writes the
# exponents -(q_c^4) of its own ball and, over the part of the box within q_skip of it on both axes, of
# every other ball that comes that close, ball after ball in ball order; numpy's exp turns them into terms
# (the same exp as the numpy renderer had) and `sum_terms` adds each pixel's terms in ball order and
# quantizes. A term left out is <= exp(-min(q_skip, Q_CAP / 2)^4) ~ 1e-17. Pixels in two boxes are
# written twice, with the same value.

BOX_FIELDS = 7
"""Columns of a box record: frame, first row, end row, first column, end column, balls, first ball record."""
MEMBER_FIELDS = 5
"""Columns of a ball record of a box: first row, end row, first column, end column, first exponent."""


@njit(cache=True)
def _axis_q(centre, x, r2, q_half_cap):
    d = centre - x
    return min(d * d / r2, q_half_cap)


@njit(cache=True)
def _axis_range(x, reach, scale, res):
    """[lo, hi): the pixels along one axis whose centre (k + 0.5) / scale is within `reach` of x.

    `reach` carries a small margin: a pixel left out then has q > q_zero even with rounding, and one let
    in needlessly is rendered exactly anyway."""
    lo = min(max(int(math.ceil((x - reach) * scale - 0.5)), 0), res)
    hi = min(max(int(math.floor((x + reach) * scale - 0.5)) + 1, lo), res)
    return lo, hi


@njit(cache=True)
def _gap(x, lo, hi):
    """Distance from x to the interval [lo, hi]."""
    return max(lo - x, x - hi, 0.0)


@njit(cache=True)
def box_terms(positions, first, centres, scale, r2, q_half_cap, q_zero, q_skip, args, boxes, members):
    """Exponents of the boxes of frames first, first+1, ... of positions (F, n, 2) until args or boxes
    would overflow (a frame is never split); scale = pixels per world unit. A box's balls (`members`
    rows: first row, end row, first column, end column, first exponent) cover the whole box for its own
    ball and, for another ball, the part of the box within q_skip of it on both axes. Returns (next frame,
    boxes written, exponents written)."""
    F, n = positions.shape[0], positions.shape[1]
    res = centres.size
    ranges = np.empty((n, 4), np.int64)  # per ball: row lo, row hi, col lo, col hi
    qx = np.empty(res)
    reach = math.sqrt(q_zero * r2) * (1 + 1e-9)
    reach_skip = math.sqrt(q_skip * r2) * (1 + 1e-9)  # generous: a term let in needlessly is still exact
    n_boxes, n_args, n_members = 0, 0, 0
    for f in range(first, F):
        frame_boxes, frame_args = n_boxes, n_args
        for b in range(n):
            ranges[b, 0], ranges[b, 1] = _axis_range(positions[f, b, 1], reach, scale, res)
            ranges[b, 2], ranges[b, 3] = _axis_range(positions[f, b, 0], reach, scale, res)
        for b in range(n):
            r0, r1, c0, c1 = ranges[b, 0], ranges[b, 1], ranges[b, 2], ranges[b, 3]
            area = (r1 - r0) * (c1 - c0)
            if area == 0:
                continue
            if n_args + n * area > args.size or n_boxes == boxes.shape[0]:
                return f, frame_boxes, frame_args
            first_member, m = n_members, 0
            for c in range(n):
                x, y = positions[f, c, 0], positions[f, c, 1]
                ra, rb, ca, cb = r0, r1, c0, c1
                if c != b:
                    gx, gy = _gap(x, centres[c0], centres[c1 - 1]), _gap(y, centres[r0], centres[r1 - 1])
                    if gx * gx + gy * gy >= reach_skip * reach_skip:
                        continue
                    lo, hi = _axis_range(y, reach_skip, scale, res)
                    ra, rb = max(ra, lo), min(rb, hi)
                    lo, hi = _axis_range(x, reach_skip, scale, res)
                    ca, cb = max(ca, lo), min(cb, hi)
                    if ra >= rb or ca >= cb:
                        continue
                member = members[n_members]
                member[0], member[1], member[2], member[3], member[4] = ra, rb, ca, cb, n_args
                n_members += 1
                m += 1
                w = cb - ca
                cols, rows = centres[ca:cb], centres[ra:rb]  # slices: loops over range(w) vectorize
                for p in range(w):
                    qx[p] = _axis_q(cols[p], x, r2, q_half_cap)
                for row in range(rb - ra):
                    qy_row = _axis_q(rows[row], y, r2, q_half_cap)
                    line = args[n_args : n_args + w]
                    for col in range(w):
                        q = qx[col] + qy_row
                        p = q * q
                        line[col] = -(p * p)
                    n_args += w
            box = boxes[n_boxes]
            box[0], box[1], box[2], box[3], box[4], box[5], box[6] = f, r0, r1, c0, c1, m, first_member
            n_boxes += 1
    return F, n_boxes, n_args


@njit(cache=True)
def sum_terms(terms, boxes, members, pixels, res):
    """Frame pixels (F * res * res,) = rint(255 * min(1, the pixel's terms summed in ball order)), per box."""
    sums = np.empty(res * res)
    for k in range(boxes.shape[0]):
        f, r0, r1, c0, c1, m, first = (
            boxes[k, 0],
            boxes[k, 1],
            boxes[k, 2],
            boxes[k, 3],
            boxes[k, 4],
            boxes[k, 5],
            boxes[k, 6],
        )
        w = c1 - c0
        if m == 1:  # the own ball alone: its terms cover the box
            a = members[first, 4]
            for row in range(r0, r1):
                out = (f * res + row) * res + c0
                line = pixels[out : out + w]  # slices: indexing with non-negative range indices vectorizes
                own = terms[a + (row - r0) * w : a + (row - r0 + 1) * w]
                for col in range(w):
                    line[col] = np.uint8(np.rint(min(own[col], 1.0) * 255.0))
            continue
        box_sums = sums[: (r1 - r0) * w]
        for i in range(box_sums.size):
            box_sums[i] = 0.0
        for j in range(first, first + m):
            ra, rb, ca, cb, a = members[j, 0], members[j, 1], members[j, 2], members[j, 3], members[j, 4]
            wj = cb - ca
            for row in range(ra, rb):
                dst = box_sums[(row - r0) * w + ca - c0 : (row - r0) * w + cb - c0]
                src = terms[a + (row - ra) * wj : a + (row - ra + 1) * wj]
                for col in range(wj):
                    dst[col] += src[col]
        for row in range(r0, r1):
            out = (f * res + row) * res + c0
            line = pixels[out : out + w]
            total = box_sums[(row - r0) * w : (row - r0 + 1) * w]
            for col in range(w):
                line[col] = np.uint8(np.rint(min(total[col], 1.0) * 255.0))


# --- ground truth fields ------------------------------------------------------------------------------
# Masks, flow and visibility from the same per-ball q as the renderer (q_c = capped dx^2/r^2 + dy^2/r^2): a
# rendered pixel belongs to the ball of smallest q (largest term exp(-q^4); ties to the lower index), a pixel
# whose stored byte is 0 to the background. Only the balls' boxes are visited (outside them every byte is 0).


@njit(cache=True)
def _boxes_meet(ranges, b, c):
    """Do the pixel boxes (row lo, row hi, col lo, col hi) of balls b and c share a pixel?"""
    return (
        ranges[b, 0] < ranges[c, 1]
        and ranges[c, 0] < ranges[b, 1]
        and ranges[b, 2] < ranges[c, 3]
        and ranges[c, 2] < ranges[b, 3]
    )


LIT_Q4 = math.log(510.0)
"""A ball alone lights a pixel (rint(255 exp(-q^4)) > 0, i.e. exp(-q^4) > 1/510) where q^4 < log(510)."""


@njit(cache=True)
def label_frames(positions, video, centres, scale, r2, q_half_cap, q_zero, disp, mask, flow, alone, visible):
    """Per sample k and frame t of positions (N, T, n, 2) and video (N, T, H, W) uint8:
    mask[k, t] = 1 + the ball of largest term where the byte is > 0, else 0;
    alone[k, t, c] = pixels ball c would light alone (q^4 < LIT_Q4), visible[k, t, c] = those of them
    labelled c; with flow of shape (N, T - 1, H, W, 2), flow[k, t] = disp[k, t, c] on ball c's pixels, 0
    elsewhere (an empty flow array: none). Flow and disp are float16 bit patterns (uint16): numba has no
    float16, and a float32 flow converted afterwards cost 10x the labelling."""
    N, T, n = positions.shape[0], positions.shape[1], positions.shape[2]
    res = centres.size
    with_flow = flow.shape[0] > 0
    reach = math.sqrt(q_zero * r2) * (1 + 1e-9)
    best = np.empty((res, res))
    ranges = np.empty((n, 4), np.int64)
    shared = np.empty(n, np.bool_)  # the ball's box meets another's
    qx = np.empty(res)
    for k in range(N):
        for t in range(T):
            for c in range(n):
                ranges[c, 0], ranges[c, 1] = _axis_range(positions[k, t, c, 1], reach, scale, res)
                ranges[c, 2], ranges[c, 3] = _axis_range(positions[k, t, c, 0], reach, scale, res)
            for c in range(n):
                shared[c] = False
                for b in range(n):
                    if b != c and _boxes_meet(ranges, b, c):
                        shared[c] = True
                if shared[c]:
                    for row in range(ranges[c, 0], ranges[c, 1]):
                        for col in range(ranges[c, 2], ranges[c, 3]):
                            best[row, col] = np.inf
            frame, labels = video[k, t], mask[k, t]
            labels[:] = 0  # written here, in order (a calloc'd output faulted in at random cost 5x more)
            moving = with_flow and t < T - 1
            if moving:
                flow[k, t] = 0
            for c in range(n):  # pass 1: each pixel's smallest q and its ball; what each ball lights alone
                x, y = positions[k, t, c, 0], positions[k, t, c, 1]
                lit, seen = 0, 0
                for col in range(ranges[c, 2], ranges[c, 3]):
                    qx[col] = _axis_q(centres[col], x, r2, q_half_cap)
                for row in range(ranges[c, 0], ranges[c, 1]):
                    qy = _axis_q(centres[row], y, r2, q_half_cap)
                    for col in range(ranges[c, 2], ranges[c, 3]):
                        q = qx[col] + qy
                        p = q * q
                        own = p * p < LIT_Q4
                        lit += own
                        if shared[c]:
                            if q < best[row, col]:
                                best[row, col] = q
                                labels[row, col] = c + 1
                        elif frame[row, col] > 0:  # a box of its own: every lit pixel is this ball's
                            labels[row, col] = c + 1
                            seen += own
                            if moving:
                                flow[k, t, row, col, 0] = disp[k, t, c, 0]
                                flow[k, t, row, col, 1] = disp[k, t, c, 1]
                alone[k, t, c], visible[k, t, c] = lit, seen
            for c in range(n):  # pass 2 (shared boxes): dark pixels to background; own pixels seen, moved
                if not shared[c]:
                    continue
                seen = 0
                for row in range(ranges[c, 0], ranges[c, 1]):
                    for col in range(ranges[c, 2], ranges[c, 3]):
                        if frame[row, col] == 0:
                            labels[row, col] = 0
                        elif labels[row, col] == c + 1:
                            p = best[row, col] * best[row, col]  # the ball's own q here
                            seen += p * p < LIT_Q4
                            if moving:
                                flow[k, t, row, col, 0] = disp[k, t, c, 0]
                                flow[k, t, row, col, 1] = disp[k, t, c, 1]
                visible[k, t, c] = seen
