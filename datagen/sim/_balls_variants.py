"""Numba kernels of the bouncing-balls variants: draws, physics, rendering and labels with per-ball radius,
mass and colour, a per-clip ball count, gravity, damping, wall restitution and an occluding curtain.

The default generator keeps its own, faster kernels (`datagen.sim._balls_kernels`); these are the general
ones, used only when a variant option is on. Arrays are padded to the largest count `n` with a per-sample
count `counts[k]`: balls `counts[k]..n-1` are absent (never drawn, simulated, rendered or labelled).

Draws, per sample k from its stream (`seed_pcg64`, as the default): the count (one uniform, only with a count
range), the radii (one uniform per ball, only with a radius range), then the default's base draws for that
count and those radii (velocities `standard_normal((count, 2))`, positions redrawn until placed), then one
uniform per ball for the mass (only with a mass range) and one per ball for the colour (only with colours).
Without a count or radius range, the initial positions and velocities are exactly the default's.

Physics, per frame `steps` sub-steps of: gravity `v_y += eps g`; `x += eps v`; walls (a ball beyond a wall
moving into it leaves with its normal component times `restitution`, as the default's sign rule when it is
1; under gravity it is also put back onto the wall, else a ball too slow to climb out of its overshoot
would sink through the floor); collisions of every pair j < i closer than r_i + r_j that approach each
other (unequal masses, elastic, along the line of centres: momentum and kinetic energy conserved); after
the frame's sub-steps `v *= 1 - damping`. With `approach_only` false (the default's rule: overlapping
pairs collide even while separating), unit masses, equal radii and no gravity, damping or restitution the
trajectories are the default's bit for bit. There is no resting-contact model: under gravity with
restitution < 1 a ball comes to rest on the floor by tiny bounces (not recorded as events: a wall event on
the gravity axis needs a normal speed above 2 eps |g|), and balls piled on one another may overlap.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from datagen.sim._balls_kernels import (
    LIT_Q4,
    _axis_range,
    _event,
    next_double,
    seed_pcg64,
    standard_normal,
)

OCCLUDER_ID = 255
"""Mask id of the curtain's pixels (balls are 1..254)."""

# --- draws --------------------------------------------------------------------------------------------------


@njit(cache=True)
def _placed(x, radii, count, box):
    """Every ball inside the box and no pair closer than the sum of their radii (the default's test)."""
    for i in range(count):
        for z in range(2):
            if x[i, z] - radii[i] < 0 or x[i, z] + radii[i] > box:
                return False
    for i in range(count):
        for j in range(i):
            d0, d1 = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1]
            if math.sqrt(d0 * d0 + d1 * d1) < radii[i] + radii[j]:
                return False
    return True


@njit(cache=True)
def variant_draws(
    run_words, indices, n_min, r_lo, r_hi, box, m_lo, m_hi, with_colors, max_tries,
    counts, radii, raw_v, x0, masses, color_u, tries,
):  # fmt: skip
    """Per sample k (see the module docstring for the order): counts[k], radii[k], raw_v[k] (unnormalised
    normals), x0[k], masses[k], color_u[k] (uniforms; with_colors only). Absent balls get radius 0, mass 1,
    zero velocity and position. Returns the first k whose placement used up max_tries, or -1."""
    n = raw_v.shape[1]
    state = np.empty(4, np.uint64)
    low, span = box / 5, box * 4 / 5
    for k in range(indices.size):
        seed_pcg64(run_words, indices[k], state)
        count = n
        if n_min < n:
            count = n_min + min(int(next_double(state) * (n - n_min + 1)), n - n_min)
        counts[k] = count
        radii[k, :], masses[k, :], raw_v[k], x0[k], color_u[k] = 0.0, 1.0, 0.0, 0.0, 0.0
        for i in range(count):
            radii[k, i] = r_lo + next_double(state) * (r_hi - r_lo) if r_hi > r_lo else r_hi
        for i in range(count):
            for z in range(2):
                raw_v[k, i, z] = standard_normal(state)
        tries[k] = 0
        while tries[k] < max_tries:
            tries[k] += 1
            for i in range(count):
                for z in range(2):
                    x0[k, i, z] = low + next_double(state) * span
            if _placed(x0[k], radii[k], count, box):
                break
        else:
            return k
        if m_hi > m_lo:
            for i in range(count):
                masses[k, i] = m_lo + next_double(state) * (m_hi - m_lo)
        elif m_hi > 0:
            masses[k, :count] = m_hi
        if with_colors:
            for i in range(count):
                color_u[k, i] = next_double(state)
    return -1


# --- physics ------------------------------------------------------------------------------------------------


@njit(cache=True)
def collide(x, v, masses, i, j):
    """Elastic collision of balls i and j along their line of centres, masses m_i, m_j: the normal
    components exchange as in 1-D (v_j' = (2 m_i v_i + (m_j - m_i) v_j) / (m_i + m_j), relative velocity
    reversed), the tangential ones are kept. The default's arithmetic when both masses are 1."""
    w0, w1 = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1]
    norm = math.sqrt(w0 * w0 + w1 * w1)
    w0, w1 = w0 / norm, w1 / norm
    vi0, vi1, vj0, vj1 = v[i, 0], v[i, 1], v[j, 0], v[j, 1]
    v_i = w0 * vi0 + w1 * vi1
    v_j = w0 * vj0 + w1 * vj1
    m_i, m_j = masses[i], masses[j]
    new_v_j = (2 * m_i * v_i + v_j * (m_j - m_i)) / (m_i + m_j)
    new_v_i = new_v_j + (v_j - v_i)
    v[i, 0], v[i, 1] = vi0 + w0 * (new_v_i - v_i), vi1 + w1 * (new_v_i - v_i)
    v[j, 0], v[j, 1] = vj0 + w0 * (new_v_j - v_j), vj1 + w1 * (new_v_j - v_j)


@njit(cache=True)
def simulate(
    x0, v0, counts, radii, masses, box, eps, steps, gravity, damping, restitution, approach_only, X, V, events
):
    """X[k, t], V[k, t] = state before frame t's sub-steps (module docstring); absent balls stay at 0.
    Records wall bounces and applied collisions in `events` as `_balls_kernels.simulate` does; returns the
    number of events (more than the array holds: call again with a larger one)."""
    N, frames = X.shape[0], X.shape[1]
    x = np.empty((x0.shape[1], 2))
    v = np.empty((x0.shape[1], 2))
    record = events.shape[0] > 0
    keep = 1.0 - damping
    clamp = gravity != 0.0  # else a slow ball under gravity would sink through the floor it overshot
    resting = 2 * eps * abs(gravity)  # slower at a floor or ceiling: resting contact, not an event
    count = 0
    for k in range(N):
        n, r, m = counts[k], radii[k], masses[k]
        x[:] = x0[k]
        v[:] = v0[k]
        for t in range(frames):
            X[k, t] = x
            V[k, t] = v
            for _ in range(steps):
                if gravity != 0.0:
                    for i in range(n):
                        v[i, 1] += eps * gravity
                for i in range(n):
                    for z in range(2):
                        x[i, z] += eps * v[i, z]
                for i in range(n):
                    for z in range(2):
                        if x[i, z] - r[i] < 0 and v[i, z] < 0:
                            if record and (z == 0 or -v[i, z] > resting):
                                count = _event(events, count, k, t, 0, i, -1, x[i, 0], x[i, 1])
                            v[i, z] = -v[i, z] * restitution
                            if clamp:
                                x[i, z] = r[i]
                        if x[i, z] + r[i] > box and v[i, z] > 0:
                            if record and (z == 0 or v[i, z] > resting):
                                count = _event(events, count, k, t, 0, i, -1, x[i, 0], x[i, 1])
                            v[i, z] = -v[i, z] * restitution
                            if clamp:
                                x[i, z] = box - r[i]
                for i in range(n):
                    for j in range(i):
                        d0, d1 = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1]
                        if math.sqrt(d0 * d0 + d1 * d1) < r[i] + r[j]:
                            if approach_only and (v[i, 0] - v[j, 0]) * d0 + (v[i, 1] - v[j, 1]) * d1 >= 0:
                                continue
                            if record:
                                mx, my = (x[i, 0] + x[j, 0]) / 2, (x[i, 1] + x[j, 1]) / 2
                                count = _event(events, count, k, t, 1, j, i, mx, my)
                            collide(x, v, m, i, j)
            if damping != 0.0:
                for i in range(n):
                    for z in range(2):
                        v[i, z] *= keep
    return count


# --- rendering and labels -----------------------------------------------------------------------------------


@njit(cache=True)
def _ball_q(centres, x, y, r2, q_half_cap, row, col):
    dx, dy = centres[col] - x, centres[row] - y
    return min(dx * dx / r2, q_half_cap) + min(dy * dy / r2, q_half_cap)


@njit(cache=True)
def boxes(positions, counts, radii, scale, q_zero, q_skip, res, ranges, offsets):
    """ranges[k, t, c] = the pixels (row lo, row hi, col lo, col hi) where ball c's term is summed, offsets[k,
    t, c] = where its exponents start in a flat buffer; returns the buffer's size. A ball's range is the
    bounding box of the parts of every ball's lit box (q < q_zero: outside all of them a pixel stores 0) that
    lie within q_skip of it, so a pixel in any lit box sums every term above ~1e-17 (the default's rule)."""
    n = positions.shape[2]
    lit = np.empty((n, 4), np.int64)
    total = 0
    for k in range(positions.shape[0]):
        for t in range(positions.shape[1]):
            for c in range(counts[k]):
                reach = math.sqrt(q_zero * (radii[k, c] * radii[k, c])) * (1 + 1e-9)
                lit[c, 0], lit[c, 1] = _axis_range(positions[k, t, c, 1], reach, scale, res)
                lit[c, 2], lit[c, 3] = _axis_range(positions[k, t, c, 0], reach, scale, res)
            for c in range(counts[k]):
                reach = math.sqrt(q_skip * (radii[k, c] * radii[k, c])) * (1 + 1e-9)
                s0, s1 = _axis_range(positions[k, t, c, 1], reach, scale, res)
                s2, s3 = _axis_range(positions[k, t, c, 0], reach, scale, res)
                r0, r1, c0, c1 = lit[c, 0], lit[c, 1], lit[c, 2], lit[c, 3]
                for b in range(counts[k]):
                    a0, a1 = max(s0, lit[b, 0]), min(s1, lit[b, 1])
                    a2, a3 = max(s2, lit[b, 2]), min(s3, lit[b, 3])
                    if b != c and a0 < a1 and a2 < a3:
                        r0, r1, c0, c1 = min(r0, a0), max(r1, a1), min(c0, a2), max(c1, a3)
                ranges[k, t, c, 0], ranges[k, t, c, 1], ranges[k, t, c, 2], ranges[k, t, c, 3] = (
                    r0,
                    r1,
                    c0,
                    c1,
                )
                offsets[k, t, c] = total
                total += (r1 - r0) * (c1 - c0)
    return total


@njit(cache=True)
def box_exponents(positions, counts, radii, centres, q_half_cap, ranges, offsets, args):
    """args[...] = -(q_c^4) over each ball's box, row by row, q_c = d^2 / r_c^2 capped per axis as the
    default renderer (numpy's exp turns them into terms, as there)."""
    for k in range(positions.shape[0]):
        for t in range(positions.shape[1]):
            for c in range(counts[k]):
                x, y, r2 = positions[k, t, c, 0], positions[k, t, c, 1], radii[k, c] * radii[k, c]
                r0, r1, c0, c1 = (
                    ranges[k, t, c, 0],
                    ranges[k, t, c, 1],
                    ranges[k, t, c, 2],
                    ranges[k, t, c, 3],
                )
                a = offsets[k, t, c]
                for row in range(r0, r1):
                    for col in range(c0, c1):
                        q = _ball_q(centres, x, y, r2, q_half_cap, row, col)
                        p = q * q
                        args[a] = -(p * p)
                        a += 1


@njit(cache=True)
def render(terms, counts, ranges, offsets, colors, occluder, occ_value, out):
    """out[k, t] (H, W, C) uint8, zero on entry, = rint(255 min(1, sum_c terms_c colors[k, c])) per channel
    over the balls' ranges (`boxes`), summed in ball order; then the curtain columns [occluder[0],
    occluder[1]) are set to occ_value. Pixels outside every range stay 0 (each term <= 0.49 / 255 / n)."""
    N, T, res, C = out.shape[0], out.shape[1], out.shape[2], out.shape[4]
    sums = np.zeros((res, res, C))
    for k in range(N):
        for t in range(T):
            for c in range(counts[k]):
                r0, r1, c0, c1 = (
                    ranges[k, t, c, 0],
                    ranges[k, t, c, 1],
                    ranges[k, t, c, 2],
                    ranges[k, t, c, 3],
                )
                a = offsets[k, t, c]
                for row in range(r0, r1):
                    for col in range(c0, c1):
                        for ch in range(C):
                            sums[row, col, ch] += terms[a] * colors[k, c, ch]
                        a += 1
            frame = out[k, t]
            for c in range(counts[k]):  # quantize each box (twice where boxes meet: the same value), reset
                r0, r1, c0, c1 = (
                    ranges[k, t, c, 0],
                    ranges[k, t, c, 1],
                    ranges[k, t, c, 2],
                    ranges[k, t, c, 3],
                )
                for row in range(r0, r1):
                    for col in range(c0, c1):
                        for ch in range(C):
                            frame[row, col, ch] = np.uint8(np.rint(min(sums[row, col, ch], 1.0) * 255.0))
            for c in range(counts[k]):
                r0, r1, c0, c1 = (
                    ranges[k, t, c, 0],
                    ranges[k, t, c, 1],
                    ranges[k, t, c, 2],
                    ranges[k, t, c, 3],
                )
                sums[r0:r1, c0:c1] = 0.0
            for row in range(res):
                for col in range(occluder[0], occluder[1]):
                    for ch in range(C):
                        frame[row, col, ch] = occ_value


@njit(cache=True)
def label(positions, counts, radii, video, centres, scale, q_half_cap, q_zero, occluder, disp, mask, flow,
          alone, visible):  # fmt: skip
    """mask[k, t] = 1 + the ball of smallest q (largest term; ties to the lower index) where any channel of
    the byte is > 0, OCCLUDER_ID on the curtain, else 0; alone[k, t, c] = pixels ball c lights alone (q^4 <
    LIT_Q4: its colours have a channel at 1), visible[k, t, c] = those of them labelled c; flow[k, t] =
    disp[k, t, c] on ball c's pixels (float16 bits; an empty flow array: none)."""
    N, T, C = positions.shape[0], positions.shape[1], video.shape[4]
    res = centres.size
    with_flow = flow.shape[0] > 0
    best = np.empty((res, res))
    for k in range(N):
        for t in range(T):
            labels, frame = mask[k, t], video[k, t]
            labels[:] = 0
            best[:] = np.inf
            moving = with_flow and t < T - 1
            if moving:
                flow[k, t] = 0
            for c in range(counts[k]):  # pass 1: each pixel's smallest q and its ball
                x, y, r2 = positions[k, t, c, 0], positions[k, t, c, 1], radii[k, c] * radii[k, c]
                reach = math.sqrt(q_zero * r2) * (1 + 1e-9)
                r0, r1 = _axis_range(y, reach, scale, res)
                c0, c1 = _axis_range(x, reach, scale, res)
                for row in range(r0, r1):
                    for col in range(c0, c1):
                        q = _ball_q(centres, x, y, r2, q_half_cap, row, col)
                        if q < best[row, col]:
                            best[row, col] = q
                            labels[row, col] = c + 1
            for row in range(res):  # dark pixels to the background, the curtain to its id
                for col in range(res):
                    if labels[row, col] > 0:
                        lit = False
                        for ch in range(C):
                            lit = lit or frame[row, col, ch] > 0
                        if not lit:
                            labels[row, col] = 0
                for col in range(occluder[0], occluder[1]):
                    labels[row, col] = OCCLUDER_ID
            for c in range(counts[k]):  # pass 2: what each ball lights alone, what of it is seen; flow
                x, y, r2 = positions[k, t, c, 0], positions[k, t, c, 1], radii[k, c] * radii[k, c]
                reach = math.sqrt(q_zero * r2) * (1 + 1e-9)
                r0, r1 = _axis_range(y, reach, scale, res)
                c0, c1 = _axis_range(x, reach, scale, res)
                lit, seen = 0, 0
                for row in range(r0, r1):
                    for col in range(c0, c1):
                        q = _ball_q(centres, x, y, r2, q_half_cap, row, col)
                        p = q * q
                        own = p * p < LIT_Q4
                        lit += own
                        if labels[row, col] == c + 1:
                            seen += own
                            if moving:
                                flow[k, t, row, col, 0] = disp[k, t, c, 0]
                                flow[k, t, row, col, 1] = disp[k, t, c, 1]
                alone[k, t, c], visible[k, t, c] = lit, seen
