"""Bouncing-balls variants (issue 17): physics invariants (unequal-mass collisions, parabolas under gravity,
damping and wall restitution), per-ball radius, per-clip counts, colours, the curtain, and the ground-truth
fields under every option; defaults unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.api import make_store
from datagen.cli import main
from datagen.errors import DatagenError
from datagen.sim import _balls_variants as kv
from datagen.sim import balls
from datagen.sim import balls_variants as bv
from datagen.sim.balls import BALLS
from datagen.store.format import load_manifest
from datagen.store.wds import meta_bytes

ALL = ["video", "mask", "flow", "events", "visibility"]
SCALE = 3.0  # pixels per world unit at 30 px in a box of 10


def params(**options) -> dict:
    return BALLS.validate({"n_balls": 3, **options})


def generate(n: int, seed: int = 7, fields=ALL, **options) -> list:
    return list(BALLS.generate({**params(**options), "fields": fields}, seed, 0, n))


def event_steps(batch: bv.Batch, kind: int) -> set[tuple[int, int, int]]:
    """(sample, frame, ball) of every event of a kind (0 wall, 1 collision) in the batch's table."""
    out = set()
    for k, t, kd, i, j, _, _ in batch.events.tolist():
        if kd == kind:
            out |= {(int(k), int(t), int(i))} | ({(int(k), int(t), int(j))} if j >= 0 else set())
    return out


# --- defaults and draws -------------------------------------------------------------------------------------


def test_off_values_are_the_plain_generator():
    off = params(min_balls=3, min_radius=1.2, masses=None, gravity=0, damping=0.0, restitution=1, colors=None)
    assert off == params() == {"n_balls": 3, "frames": 30, "size": 30, "radius": 1.2, "box": 10.0}
    assert not bv.is_variant(off)


def test_unit_masses_with_the_default_collision_rule_reproduce_the_default_physics():
    """The general kernels (per-ball radii and masses, gravity/damping hooks) with neutral options give the
    default's trajectories bit for bit; masses are drawn after the base draws, so the start is the same."""
    x0, v0 = balls.initial_states(3, 1.2, 10.0, 3, range(200))
    plain = balls.simulate(x0, v0, 30, 1.2, 10.0)
    p = params(masses=[1.0, 1.0])
    b = bv.simulate_batch(p, 3, range(200), events=False, approach_only=False)
    assert np.array_equal(plain.positions, b.positions) and np.array_equal(plain.velocities, b.velocities)
    # the variants' own rule (only approaching pairs collide) changes few clips; the start never
    g = bv.simulate_batch(params(gravity=0.01), 3, range(200), events=False)
    assert np.array_equal(g.positions[:, 0], x0) and np.array_equal(g.velocities[:, 0], v0)
    # the variant renderer (per-ball radius and colour) sums the same terms: the default's bytes
    assert np.array_equal(bv.render_batch(b, p)[..., 0], balls.render(plain.positions, 30, 1.2, 10.0))


# --- masses -------------------------------------------------------------------------------------------------


def test_unequal_mass_collision_conserves_momentum_and_energy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, v = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
        m = rng.uniform(0.1, 10, 2)
        before = v.copy()
        kv.collide(x, v, m, 1, 0)
        p0, p1 = (m[:, None] * before).sum(0), (m[:, None] * v).sum(0)
        e0, e1 = (m * (before**2).sum(1)).sum() / 2, (m * (v**2).sum(1)).sum() / 2
        assert np.allclose(p0, p1, rtol=0, atol=1e-12 * np.abs(m[:, None] * before).sum())
        assert abs(e0 - e1) <= 1e-12 * e0
        w = (x[1] - x[0]) / np.linalg.norm(x[1] - x[0])
        assert np.isclose((v[1] - v[0]) @ w, -((before[1] - before[0]) @ w))  # normal relative velocity flips
        t = np.array([-w[1], w[0]])
        assert np.allclose(v @ t, before @ t)  # tangential components kept


def test_masses_conserve_energy_over_clips_and_momentum_through_collisions():
    p = params(masses=[0.5, 4.0])
    b = bv.simulate_batch(p, 5, range(150), events=True)
    m = b.masses[:, None, :]
    assert (b.masses >= 0.5).all() and (b.masses <= 4.0).all() and b.masses.std() > 0.5
    energy = (m * (b.velocities**2).sum(-1)).sum(-1) / 2  # (N, T): walls keep |v|, collisions conserve
    assert np.abs(energy / energy[:, :1] - 1).max() < 1e-12
    walls = {(k, t) for k, t, _ in event_steps(b, 0)}
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for k, t, kind, i, j, _, _ in b.events.tolist():
        if kind == 1:
            pairs.setdefault((int(k), int(t)), []).append((int(i), int(j)))
    checked = 0
    for (k, t), hit in pairs.items():
        if t + 1 < 30 and (k, t) not in walls:  # collisions only: total momentum conserved
            mv = b.masses[k][None, :, None] * b.velocities[k, [t, t + 1]]  # (2, n, 2)
            assert np.allclose(mv[0].sum(0), mv[1].sum(0), rtol=0, atol=1e-12)
            if len(hit) == 1:  # one pair: equal and opposite momentum changes, the lighter ball turns more
                (i, j), dp = hit[0], mv[1] - mv[0]
                assert np.allclose(dp[i], -dp[j], rtol=0, atol=1e-12) and np.abs(dp[i]).max() > 1e-6
                checked += 1
    assert checked > 20


# --- gravity, damping, restitution --------------------------------------------------------------------------


def free_steps(b: bv.Batch) -> np.ndarray:
    """(N, T - 1, n) True where ball i went through no wall or collision between frames t and t + 1."""
    free = np.ones(b.positions.shape[:1] + (b.positions.shape[1] - 1, b.positions.shape[2]), bool)
    for k, t, i in event_steps(b, 0) | event_steps(b, 1):
        if t < free.shape[1]:
            free[k, t, i] = False
    return free


def test_gravity_gives_parabolas_between_bounces():
    g = 0.02
    b = bv.simulate_batch(params(gravity=g), 2, range(60), events=True)
    free = free_steps(b)
    both = free[:, 1:] & free[:, :-1]  # frames t-1 -> t -> t+1 without events
    second = b.positions[:, 2:] - 2 * b.positions[:, 1:-1] + b.positions[:, :-2]  # (N, T - 2, n, 2)
    assert both.sum() > 3000
    assert np.abs(second[both][:, 1] - g).max() < 1e-12 and np.abs(second[both][:, 0]).max() < 1e-12
    # a least-squares parabola through the longest free run of the y coordinate: residuals ~0, t^2 = g/2
    k, i, t0, length = max(
        ((k, i, t0, n) for k in range(60) for i in range(3) for t0, n in _runs(free[k, :, i])),
        key=lambda r: r[3],
    )
    assert length >= 8
    t = np.arange(length + 1)
    coef, residual, *_ = np.polyfit(t, b.positions[k, t0 : t0 + length + 1, i, 1], 2, full=True)
    assert abs(coef[0] - g / 2) < 1e-10 and residual[0] < 1e-18
    assert (np.diff(b.velocities[:, :, :, 1], axis=1)[free] - g < 1e-12).all()


def _runs(flags: np.ndarray):
    """(start, length) of the runs of True."""
    start = None
    for t, f in enumerate([*flags, False]):
        if f and start is None:
            start = t
        elif not f and start is not None:
            yield start, t - start
            start = None


def test_damping_multiplies_velocities_per_frame():
    d = 0.03
    b = bv.simulate_batch(params(damping=d), 4, range(60), events=True)
    free = free_steps(b)
    v = b.velocities
    assert free.sum() > 3000
    assert np.abs(v[:, 1:][free] - (1 - d) * v[:, :-1][free]).max() < 1e-15
    speed = np.linalg.norm(v, axis=-1).sum(-1)
    assert (np.diff(speed, axis=1) < 0).mean() > 0.9  # drag: the total speed mostly decays


def test_restitution_loses_energy_at_walls_only():
    e = 0.7
    b = bv.simulate_batch(params(restitution=e, masses=[1.0, 2.0]), 4, range(60), events=True)
    m = b.masses[:, None, :]
    energy = (m * (b.velocities**2).sum(-1)).sum(-1) / 2  # (N, T)
    walls, hits = event_steps(b, 0), event_steps(b, 1)
    wall_frames = {(k, t) for k, t, _ in walls}
    change = np.diff(energy, axis=1) / energy[:, :-1]
    lost = [change[k, t] for k, t in wall_frames if t < 29]
    assert len(lost) > 50 and max(lost) < -1e-9 and np.median(lost) < -0.01  # each wall bounce loses
    quiet = np.ones(change.shape, bool)
    for k, t in wall_frames:
        quiet[k, min(t, 28)] = False
    assert np.abs(change[quiet]).max() < 1e-12  # collisions and free flight keep it
    # a lone wall bounce: the normal component is reversed and scaled by e, the other one kept
    for k, t, i in walls:
        if t < 29 and (k, t, i) not in hits and sum((k, t, i) == w for w in walls) == 1:
            before, after = b.velocities[k, t, i], b.velocities[k, t + 1, i]
            flipped = np.sign(before) != np.sign(after)
            if flipped.sum() == 1:
                z = int(np.argmax(flipped))
                assert np.isclose(after[z], -e * before[z]) and after[1 - z] == before[1 - z]
    assert (len(hits) > 0) and (np.abs(change[quiet]) < 1e-12).all()


def test_gravity_with_restitution_settles_on_the_floor_without_sinking():
    p = params(gravity=0.02, restitution=0.5, frames=300, min_radius=0.8)
    b = bv.simulate_batch(p, 1, range(30), events=True)
    r = b.radii[:, None, :, None]
    assert ((b.positions >= r) & (b.positions <= 10 - r)).all()  # put back onto the walls, never through
    floor = 10 - b.radii
    assert np.abs(b.positions[:, -1, :, 1] - floor).max() < 1e-9  # at rest on the floor at the end
    assert np.abs(b.velocities[:, -1, :, 1]).max() < 0.02  # bouncing ~eps g at most
    assert len(b.events) / 30 < 100  # resting contact is not an event (~45 per clip; ~1,500 if it were)


# --- radius and count ---------------------------------------------------------------------------------------


def test_radius_range_places_renders_and_collides_per_ball():
    b = bv.simulate_batch(params(min_radius=0.6, radius=1.8), 3, range(200), events=True)
    r = b.radii
    assert (r >= 0.6).all() and (r <= 1.8).all() and r.std() > 0.25
    x0 = b.positions[:, 0]
    assert ((x0 - r[..., None] >= 0) & (x0 + r[..., None] <= 10)).all()
    d = np.linalg.norm(b.positions[:, :, :, None] - b.positions[:, :, None], axis=-1)  # (N, T, n, n)
    reach = r[:, None, :, None] + r[:, None, None, :]
    assert (d[:, 0] + np.eye(3) * 99 >= reach[:, 0]).all()  # placed without overlap
    assert ((d + np.eye(3) * 99) / reach).min() > 0.85  # collisions happen at the per-pair distance
    for k, t, _, i, j, _, _ in b.events[b.events[:, 2] == 1].tolist():
        k, t, i, j = int(k), int(t), int(i), int(j)
        assert d[k, t, i, j] < reach[k, 0, i, j] + 1.0  # a collision only near contact
    # rendered size follows the radius: isolated balls light ~pi (1.26 r)^2 pixels (q^4 < log 510)
    samples = generate(40, min_radius=0.6, radius=1.8, fields=["video", "mask", "visibility"])
    ratios = []
    for s in samples:
        vis, rad = np.asarray(s.meta["visibility"]), np.asarray(s.meta["radius_px"])
        for t, c in zip(*np.nonzero(vis == 1), strict=True):
            area = np.pi * (np.log(510) ** 0.125 * rad[c]) ** 2
            ratios.append((s.fields["mask"][t] == c + 1).sum() / area)
    assert len(ratios) > 1000 and 0.85 < np.median(ratios) < 1.15 and np.percentile(ratios, 5) > 0.6


def test_variable_count_per_clip():
    samples = generate(120, min_balls=1, n_balls=5)
    counts = [s.meta["n_balls"] for s in samples]
    assert set(counts) == {1, 2, 3, 4, 5}
    for s in samples:
        n = s.meta["n_balls"]
        assert s.video.shape == (30, 30, 30, 1) and s.fields["mask"].shape == (30, 30, 30)
        assert np.asarray(s.meta["positions"]).shape == (30, n, 2)
        assert np.asarray(s.meta["visibility"]).shape == (30, n)
        assert s.fields["mask"].max() <= n and set(np.unique(s.fields["mask"][0])) == set(range(n + 1))
        assert all(max(e["objects"]) < n for e in s.meta["events"])


# --- colours and curtain ------------------------------------------------------------------------------------


def test_colors_tint_each_ball_and_keep_the_grey_clip_where_balls_are_apart():
    frames = 0
    grey = generate(40, masses=[1.0, 1.0], fields=["video", "mask", "visibility"])
    for mode in ("palette", "random"):
        rgb = generate(40, masses=[1.0, 1.0], colors=mode, fields=["video", "mask", "visibility"])
        for g, c in zip(grey, rgb, strict=True):
            colors = np.asarray(c.meta["colors"])  # drawn last: same trajectories as the grey clips
            assert c.video.shape == (30, 30, 30, 3) and (colors.max(1) == 255).all()
            assert np.array_equal(c.meta["positions"], g.meta["positions"])
            assert ((c.fields["mask"] > 0) == (c.video.max(-1) > 0)).all()
            pos = np.asarray(c.meta["positions"])
            d = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1) + np.eye(3) * 99  # (T, n, n) px
            for t in np.nonzero(d.min((1, 2)) > 4 * 3.6)[0]:  # balls apart: the top channel is the grey one
                frames += 1
                assert np.array_equal(c.video[t].max(-1), g.video[t, ..., 0])
                for ball in range(3):
                    on = c.fields["mask"][t] == ball + 1
                    dark = colors[ball] == 0
                    assert (c.video[t][on][:, dark] == 0).all()  # channels the colour lacks stay 0
    assert frames > 100
    assert main(["balls", "--n", "2", "--colors", "blue", "--out", "/nonexistent/x"]) == 2


def test_occluder_curtain_masks_and_visibility():
    base = generate(60, masses=[1.0, 1.0])
    occ = generate(60, masses=[1.0, 1.0], occluder=[0.3, 0.7])
    cols = slice(9, 21)  # centres (c + 0.5) / 30 in [0.3, 0.7)
    assert bv.Variant.of(params(occluder=[0.3, 0.7])).occluder_columns(30) == (9, 21)
    behind = apart = 0
    for a, o in zip(base, occ, strict=True):
        assert (o.video[:, :, cols] == 255).all() and (o.fields["mask"][:, :, cols] == bv.OCCLUDER_ID).all()
        assert (o.fields["flow"][:, :, cols] == 0).all()
        assert np.array_equal(np.delete(o.video, np.s_[9:21], 2), np.delete(a.video, np.s_[9:21], 2))
        x = np.asarray(o.meta["positions"])[..., 0]  # (T, n) pixel columns
        vis, vis0 = np.asarray(o.meta["visibility"]), np.asarray(a.meta["visibility"])
        hidden = (x > 8 + 4.6) & (x < 21 - 4.6)  # the whole lit disc (radius 4.53 px) behind the curtain
        assert (vis[hidden] == 0).all()
        near = np.abs(x - 14.5) < 5
        assert (vis <= vis0).all() and (vis[near] < vis0[near]).all()
        far = (x < 9 - 0.5 - 4.6) | (x > 20 + 0.5 + 4.6)
        assert np.array_equal(vis[far], vis0[far])
        behind += hidden.sum()
        apart += far.sum()
    assert behind > 200 and apart > 300


# --- fields under every option ------------------------------------------------------------------------------

EVERYTHING = {
    "min_balls": 1,
    "n_balls": 4,
    "min_radius": 0.8,
    "radius": 1.6,
    "masses": [0.5, 2.0],
    "gravity": 0.01,
    "damping": 0.01,
    "restitution": 0.9,
    "colors": "random",
    "occluder": [0.7, 0.8],
}


def test_fields_with_every_option():
    """Masks agree with the rendering and are the ball of largest term (smallest d / r_i); flow is each
    ball's exact displacement; wall events match velocity sign flips."""
    rows, cols = np.mgrid[0:30, 0:30]
    checked = 0
    for s in generate(50, **EVERYTHING):
        mask, flow = s.fields["mask"], s.fields["flow"]
        pos, rad = np.asarray(s.meta["positions"]), np.asarray(s.meta["radius_px"])
        assert ((mask > 0) == (s.video.max(-1) > 0)).all()
        q = ((cols - pos[..., 0, None, None]) ** 2 + (rows - pos[..., 1, None, None]) ** 2) / (
            rad[None, :, None, None] ** 2
        )  # (T, n, H, W)
        ball = (mask > 0) & (mask < bv.OCCLUDER_ID)
        qs = np.sort(q, axis=1)
        clear = ball & ((qs[:, 1] - qs[:, 0] > 1e-3) if q.shape[1] > 1 else True)
        assert (mask[clear] == q.argmin(1)[clear] + 1).all()
        disp = pos[1:] - pos[:-1]
        for c in range(pos.shape[1]):
            on = mask[:-1] == c + 1
            target = np.broadcast_to(disp[:, c, None, None], flow.shape)[on]
            assert np.abs(flow[on].astype(np.float64) - target).max() < 0.01
            checked += on.sum()
        assert (flow[~ball[:-1]] == 0).all()
    assert checked > 10_000


def test_events_agree_with_velocity_flips_with_masses_and_radii():
    for s in generate(60, seed=5, min_radius=0.8, radius=1.6, masses=[0.5, 3.0], fields=["video", "events"]):
        vel, events = np.asarray(s.meta["velocities"]), s.meta["events"]
        in_collision = {(e["frame"], o) for e in events if e["kind"] == "collision" for o in e["objects"]}
        walls = {(e["frame"], e["objects"][0]) for e in events if e["kind"] == "wall"}
        flips = np.sign(vel[1:]) != np.sign(vel[:-1])
        for t, i in zip(*np.nonzero(flips.any(axis=2)), strict=True):
            assert (t, i) in walls or (t, i) in in_collision


# --- options, CLI, store ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_balls": 0}, "min_balls must be"),
        ({"min_balls": 4}, "min_balls must be"),
        ({"min_radius": 2.0}, "min_radius must be"),
        ({"masses": [2, 1]}, "lo <= hi"),
        ({"masses": [0, 1]}, "masses must satisfy"),
        ({"masses": "heavy"}, "masses must be a range"),
        ({"gravity": 5}, "gravity must be"),
        ({"gravity": float("nan")}, "gravity must be a finite"),
        ({"damping": 1}, "damping must be"),
        ({"restitution": 0}, "restitution must be"),
        ({"colors": "blue"}, "colors must be one of"),
        ({"occluder": [0.5, 1.5]}, "occluder must satisfy"),
        ({"occluder": [0.5, 0.51]}, "covers no pixel column"),
        ({"mass": 1}, "unknown balls parameter"),
    ],
)
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(DatagenError, match=message) as e:
        params(**options)
    assert "\n" not in str(e.value)


def test_cli_variants_store_and_defaults(tmp_path):
    out = tmp_path / "v"
    args = ["balls", "--n", "12", "--frames", "6", "--size", "16", "--seed", "1", "--workers", "0", "-q"]
    variant = [
        "--balls", "1-4", "--radius", "0.9-1.4", "--masses", "1-3", "--gravity", "0.01", "--damping", "0.02",
        "--restitution", "0.9", "--colors", "palette", "--occluder", "0.2-0.3", "--fields", "video,mask,flow",
    ]  # fmt: skip
    assert main([*args, *variant, "--out", str(out)]) == 0
    m = load_manifest(out)
    assert m["params"] == {
        "n_balls": 4, "frames": 6, "size": 16, "radius": 1.4, "box": 10.0, "min_balls": 1, "min_radius": 0.9,
        "masses": [1.0, 3.0], "gravity": 0.01, "damping": 0.02, "restitution": 0.9, "colors": "palette",
        "occluder": [0.2, 0.3], "fields": ["video", "mask", "flow"],
    }  # fmt: skip
    assert m["sample"]["video"]["shape"] == [6, 16, 16, 3]
    assert main(["verify", str(out)]) == 0
    # the explicit off values record the plain params (and so the plain digest)
    off = ["--balls", "3-3", "--radius", "1.2", "--gravity", "0", "--restitution", "1"]
    assert main([*args, *off, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = load_manifest(tmp_path / "a"), load_manifest(tmp_path / "b")
    assert a["params"] == b["params"] and a["digest"] == b["digest"]
    for bad in (["--balls", "1-x"], ["--masses", "2-1"], ["--occluder", "0.9-0.1"], ["--balls", "300"]):
        assert main([*args, *bad, "--fields", "video,mask", "--out", str(tmp_path / "x")]) == 2


def test_variant_samples_are_the_same_in_any_batch():
    """Sample i depends only on (params, seed, i): generating 3..9 alone gives the same clips and metas."""
    p = {**params(**EVERYTHING), "fields": ALL}
    whole = list(BALLS.generate(p, 3, 0, 10))
    part = list(BALLS.generate(p, 3, 3, 9))
    for a, b in zip(whole[3:9], part, strict=True):
        assert np.array_equal(a.video, b.video) and meta_bytes(a.meta) == meta_bytes(b.meta)
        assert all(np.array_equal(a.fields[k], b.fields[k]) for k in ("mask", "flow"))


def test_variant_store_bytes_do_not_depend_on_workers(tmp_path):
    """A store with every variant option on, masks and flow, is the same bytes with 1 and 2 Dask workers
    (per-sample streams and the shard writers, not the process layout, decide every byte)."""
    p = {**EVERYTHING, "frames": 8, "size": 20, "fields": "video,mask,flow,events,visibility"}
    a = make_store(tmp_path / "a", "balls", p, n=24, seed=5, shard_size=8, workers=1)
    b = make_store(tmp_path / "b", "balls", p, n=24, seed=5, shard_size=8, workers=2)
    assert a["params"]["occluder"] == [0.7, 0.8] and a["sample"]["video"]["shape"] == [8, 20, 20, 3]
    assert a["sample"]["fields"] == ALL and len(a["shards"]) == 3
    assert a["digest"] == b["digest"] and a["shards"] == b["shards"]
