"""GLO building blocks: two-stream generator, Laplacian loss, on-disk latent table, stage-2 mappings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datagen.errors import DatagenError
from recipes.latent_mappings import (
    GaussianMapping,
    GaussianMixtureMapping,
    IMLEMapping,
    VAEMapping,
    load_mapping,
    make_mapping,
    nearest_indices,
    save_mapping,
)
from recipes.latents import LatentStore
from recipes.losses.laplacian import LaplacianLoss, gaussian_kernel, laplacian_pyramid
from recipes.losses.vgg_perceptual import VGGDistance, load_vgg16_features, vgg16_features
from recipes.models.glo import TwoStreamGenerator, mask_l1_penalty

# --- generator ---------------------------------------------------------------------------------------------


def test_generator_reference_shapes_and_layers():
    torch.manual_seed(0)
    g = TwoStreamGenerator()  # VideoGAN / GLANN-VIDEO: 100-d z -> (3, 32, 64, 64)
    out = g.parts(torch.randn(2, 100))
    assert out.video.shape == (2, 3, 32, 64, 64)
    assert out.foreground.shape == (2, 3, 32, 64, 64)
    assert out.background.shape == (2, 3, 64, 64)
    assert out.mask.shape == (2, 1, 32, 64, 64)
    convs3d = [m for m in g.trunk.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [tuple(c.weight.shape[:2]) for c in convs3d] == [(100, 512), (512, 256), (256, 128), (128, 64)]
    assert convs3d[0].kernel_size == (2, 4, 4)
    convs2d = [m for m in g.background.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [tuple(c.weight.shape[:2]) for c in convs2d] == [
        (100, 512),
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 3),
    ]


def test_generator_composites_mask_foreground_background():
    torch.manual_seed(1)
    g = TwoStreamGenerator(8, frames=8, size=16, channels=1, width=4)
    out = g.parts(torch.randn(3, 8))
    assert out.video.shape == (3, 1, 8, 16, 16)
    assert 0 <= out.mask.min() and out.mask.max() <= 1
    expected = out.mask * out.foreground + (1 - out.mask) * out.background[:, :, None].expand(
        -1, -1, 8, -1, -1
    )
    torch.testing.assert_close(out.video, expected)
    assert out.video.abs().max() <= 1
    # z is normalised inside: scaling z changes nothing
    g.eval()
    z = torch.randn(2, 8)
    torch.testing.assert_close(g(z), g(5 * z))
    assert mask_l1_penalty(out.mask).item() == pytest.approx(0.1 * out.mask.mean().item(), rel=1e-6)


@pytest.mark.parametrize(("frames", "size"), [(32, 30), (10, 16), (2, 16)])
def test_generator_rejects_sizes_it_cannot_make(frames, size):
    with pytest.raises(ValueError):
        TwoStreamGenerator(8, frames=frames, size=size, width=4)


def test_generator_inits_follow_the_references():
    torch.manual_seed(0)
    g = TwoStreamGenerator(8, frames=8, size=16, width=8, init="videogan")
    w = g.trunk[0].weight
    assert abs(w.std().item() - 0.01) < 0.002 and g.trunk[0].bias.abs().max() == 0
    g.reset_parameters("xavier")
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(g.trunk[0].weight)
    expected = (2.0**0.5) * (2.0 / (fan_in + fan_out)) ** 0.5
    assert abs(g.trunk[0].weight.std().item() - expected) / expected < 0.1


# --- Laplacian pyramid loss --------------------------------------------------------------------------------


def _smooth_noise(shape, seed=0, sigma=3.0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    k = gaussian_kernel(13, sigma)
    c = shape[1]
    return F.conv2d(F.pad(x, (6,) * 4, mode="circular"), k.expand(c, 1, 13, 13), groups=c) * 4


def _blur(x, sigma):
    k = gaussian_kernel(9, sigma)
    c = x.shape[1]
    return F.conv2d(F.pad(x, (4,) * 4, mode="replicate"), k.expand(c, 1, 9, 9), groups=c)


def test_laplacian_zero_for_identical_and_grows_with_blur_and_shift():
    loss = LaplacianLoss(3)
    x = _smooth_noise((2, 3, 64, 64), sigma=1.5)
    assert torch.all(loss(x, x.clone()) == 0)
    blurs = [loss(x, _blur(x, s)).mean().item() for s in (0.5, 1.0, 2.0, 3.0)]
    assert all(a < b for a, b in zip(blurs, blurs[1:], strict=False)), blurs
    shifts = [loss(x, torch.roll(x, k, dims=-1)).mean().item() for k in (1, 2, 4)]
    assert all(a < b for a, b in zip(shifts, shifts[1:], strict=False)), shifts
    assert shifts[0] > 0


def test_laplacian_matches_straightforward_pyramid_of_each_input():
    x, y = _smooth_noise((2, 1, 32, 32), 1), _smooth_noise((2, 1, 32, 32), 2)
    k = gaussian_kernel()
    px, py = laplacian_pyramid(x, 3, k), laplacian_pyramid(y, 3, k)
    assert [p.shape[-1] for p in px] == [32, 16, 8, 4]
    reference = sum(F.l1_loss(a, b) for a, b in zip(px, py, strict=True))  # minimal_glo's LapLoss
    torch.testing.assert_close(LaplacianLoss(3)(x, y).mean(), reference)
    # only the finest band: the high-pass difference
    finest = LaplacianLoss(3, weighting=[1, 0, 0, 0])(x, y).mean()
    torch.testing.assert_close(finest, F.l1_loss(px[0], py[0]))
    decayed = LaplacianLoss(3, weighting="decay")(x, y).mean()
    torch.testing.assert_close(
        decayed, sum(4.0**-j * F.l1_loss(a, b) for j, (a, b) in enumerate(zip(px, py, strict=True)))
    )


def test_laplacian_on_videos_is_mean_over_frames():
    x = _smooth_noise((2, 3, 64, 64), 3).view(2, 3, 1, 64, 64).repeat(1, 1, 4, 1, 1)
    y = x.clone()
    y[:, :, 2] = torch.roll(y[:, :, 2], 2, dims=-1)  # one frame of four differs
    loss = LaplacianLoss(3)
    frame = loss(x[:, :, 2], y[:, :, 2])
    torch.testing.assert_close(loss(x, y), frame / 4)
    with pytest.raises(ValueError):
        loss(x, y[:, :, :3])
    with pytest.raises(ValueError):
        LaplacianLoss(4)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# --- per-frame VGG perceptual distance ---------------------------------------------------------------------


def test_vgg_distance_loads_torchvision_layout_and_is_zero_on_identical(tmp_path):
    torch.manual_seed(0)
    feats = vgg16_features()
    assert len(feats) == 31 and isinstance(feats[30], torch.nn.MaxPool2d)
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "vgg16.pth")
    loaded = load_vgg16_features(tmp_path / "vgg16.pth")
    torch.testing.assert_close(loaded[28].weight, feats[28].weight)
    dist = VGGDistance(loaded, levels=3)
    assert dist.taps == (3, 8, 12)  # post-ReLU except the last tapped layer, as GLANN's in-place ReLU gives
    x = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    assert torch.all(dist(x, x) == 0)
    d = dist(x, x.flip(-1))
    assert d.shape == (2,) and torch.all(d > 0)
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DatagenError):
        load_vgg16_features(tmp_path / "bad.pth")


# --- latent table ------------------------------------------------------------------------------------------


def test_latent_store_is_on_sphere_and_deterministic(tmp_path):
    a = LatentStore.create(tmp_path / "a", 20, 16, seed=3)
    b = LatentStore.create(tmp_path / "b", 10, 16, seed=3)
    c = LatentStore.create(tmp_path / "c", 20, 16, seed=4)
    z = a.read_all()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(z[:10], b.read_all())  # row content depends on (seed, row) only
    assert not np.allclose(z, c.read_all())
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["n"] == 20
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "z.npy", allow_pickle=False), z)
    with pytest.raises(DatagenError):
        LatentStore.create(tmp_path / "a", 20, 16, seed=3)
    with pytest.raises(DatagenError):
        a.gather(np.array([3, 20]))


def test_latent_adam_step_matches_dense_adam_on_touched_rows(tmp_path):
    store = LatentStore.create(tmp_path / "z", 8, 5, seed=0)
    start = store.read_all()
    rows = np.array([1, 6, 1])  # row 1 twice: its gradients add
    ref = torch.tensor(start[[1, 6]], requires_grad=True)
    opt = torch.optim.Adam([ref], lr=0.01, betas=(0.5, 0.999))
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = rng.normal(size=(3, 5)).astype(np.float32)
        store.adam_step(rows, g, lr=0.01, betas=(0.5, 0.999))
        ref.grad = torch.tensor(np.stack([g[0] + g[2], g[1]]))
        opt.step()
        with torch.no_grad():
            ref /= ref.norm(dim=1, keepdim=True)
    z = store.read_all()
    np.testing.assert_allclose(z[[1, 6]], ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(8), rows)
    np.testing.assert_array_equal(z[untouched], start[untouched])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-6)
    assert store.t.tolist() == [0, 3, 0, 0, 0, 0, 3, 0]
    store.reset_moments()
    assert not store.t.any() and not store.m.any()


def test_latent_snapshot_and_restore_round_trip(tmp_path):
    store = LatentStore.create(tmp_path / "work", 6, 4, seed=1)
    store.adam_step(np.array([2]), np.ones((1, 4)), lr=0.1)
    snap = store.snapshot(tmp_path / "snap")
    saved = store.read_all()
    store.adam_step(np.array([2, 3]), np.ones((2, 4)), lr=0.1)
    assert not np.array_equal(store.read_all(), saved)
    restored = LatentStore.restore(snap, tmp_path / "work")
    np.testing.assert_array_equal(restored.read_all(), saved)
    assert restored.t.tolist() == [0, 0, 1, 0, 0, 0]
    assert not (tmp_path / "snap.tmp").exists()
    with pytest.raises(DatagenError):
        LatentStore(tmp_path / "missing")


def test_latent_assign_sets_rows_on_the_sphere(tmp_path):
    store = LatentStore.create(tmp_path / "z", 5, 3, seed=0)
    before = store.read_all()
    store.assign(np.array([1, 3]), np.array([[3.0, 0, 4], [0, -2, 0]]))
    z = store.read_all()
    np.testing.assert_allclose(z[[1, 3]], [[0.6, 0, 0.8], [0, -1, 0]], atol=1e-7)
    np.testing.assert_array_equal(z[[0, 2, 4]], before[[0, 2, 4]])
    with pytest.raises(DatagenError, match="outside the latent table"):
        store.assign(np.array([5]), np.ones((1, 3)))


# --- stage 2 mappings --------------------------------------------------------------------------------------


def test_nearest_indices_match_brute_force_across_chunks():
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(37, 6, generator=g), torch.randn(53, 6, generator=g)
    got = nearest_indices(q, c, query_chunk=8, candidate_chunk=10)
    brute = np.argmin(((q[:, None].numpy() - c[None].numpy()) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(got.numpy(), brute)
    dup = torch.cat([c[:5], c[:5]])  # exact ties across chunks: the lowest index wins
    np.testing.assert_array_equal(nearest_indices(c[:5], dup, candidate_chunk=5).numpy(), np.arange(5))


def test_imle_assigns_each_latent_its_nearest_mapped_noise():
    torch.manual_seed(0)
    imle = IMLEMapping(6, noise_dim=3, hidden=16).eval()
    g = torch.Generator().manual_seed(1)
    z, e = torch.randn(25, 6, generator=g), torch.randn(60, 3, generator=g)
    got = imle.match(z, e, batch_size=7)
    te = imle(e).detach()
    brute = torch.cdist(z, te).argmin(1)
    np.testing.assert_array_equal(got.numpy(), brute.numpy())


def _clustered_codes(n=200, nz=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(3, nz, generator=g), dim=1)
    z = centers[torch.arange(n) % 3] + 0.05 * torch.randn(n, nz, generator=g)
    return F.normalize(z, dim=1), centers


@pytest.mark.parametrize("name", ["imle", "vae", "gmm", "gaussian"])
def test_mappings_fit_sample_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    z, centers = _clustered_codes()
    small = {"imle": {"noise_dim": 4, "hidden": 32}, "vae": {"latent_dim": 4, "hidden": 32},
             "gmm": {"n_components": 3}, "gaussian": {}}[name]  # fmt: skip
    fit_kw = {"imle": {"epochs": 30, "batch_size": 32, "lr": 5e-3},
              "vae": {"epochs": 30, "batch_size": 16, "lr": 3e-3},
              "gmm": {"n_init": 2}, "gaussian": {}}[name]  # fmt: skip
    m = make_mapping(name, 6, **small)
    history = m.fit(z, seed=0, **fit_kw)
    if name in ("imle", "vae"):
        assert history[-1] < history[0]
    s = m.sample(300, generator=torch.Generator().manual_seed(5))
    assert s.shape == (300, 6)
    torch.testing.assert_close(s.norm(dim=1), torch.ones(300))
    if name != "gaussian":  # a mixture-like mapping puts most samples near one of the three clusters
        near = torch.cdist(s, centers).min(1).values
        assert (near < 0.5).float().mean() > 0.7, near.median()
    save_mapping(m, tmp_path / "m.pt")
    again = load_mapping(tmp_path / "m.pt")
    torch.testing.assert_close(again.sample(10, generator=torch.Generator().manual_seed(9)),
                               m.sample(10, generator=torch.Generator().manual_seed(9)))  # fmt: skip


def test_gaussian_mapping_fits_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([[1.0, 0.0], [0.5, 0.3]])
    x = torch.randn(4000, 2, generator=g) @ a.T + torch.tensor([2.0, -1.0])
    m = GaussianMapping(2)
    m.fit(x)
    torch.testing.assert_close(m.means[0], x.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(m.chol[0] @ m.chol[0].T, torch.cov(x.T), atol=1e-4, rtol=1e-4)


def test_gmm_uses_at_most_one_component_per_code_and_reloads_its_size(tmp_path):
    z, _ = _clustered_codes(n=5)
    m = GaussianMixtureMapping(6, n_components=100)
    m.fit(z, n_init=1)
    assert m.means.shape == (5, 6)
    save_mapping(m, tmp_path / "gmm.pt")
    assert load_mapping(tmp_path / "gmm.pt").means.shape == (5, 6)
    assert isinstance(make_mapping("vae", 6), VAEMapping)
    with pytest.raises(ValueError):
        make_mapping("flow", 6)


# --- video perceptual distance on I3D features ----------------------------------------------------------


def test_i3d_distance_matches_separate_feature_passes():
    from recipes.losses.i3d_perceptual import I3DDistance
    from recipes.models.i3d import InceptionI3d

    torch.manual_seed(0)
    i3d = InceptionI3d().eval()
    taps = ("Conv3d_2c_3x3", "Mixed_3c")
    dist = I3DDistance(i3d, taps)
    x = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    y = (x.flip(-1) * 0.8).requires_grad_(True)
    got = dist(y, x)
    expected = (y - x).abs().flatten(1).mean(1)
    hx, hy = x.expand(-1, 3, -1, -1, -1), y.expand(-1, 3, -1, -1, -1)
    for name, layer in i3d.features.items():
        hx, hy = layer(hx), layer(hy)
        if name in taps:
            expected = expected + (hy - hx).abs().flatten(1).mean(1)
        if name == taps[-1]:
            break
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in dist.parameters())
    assert torch.all(dist(x, x) == 0)
    with pytest.raises(ValueError):
        I3DDistance(i3d, ("Mixed_9z",))


def test_mapping_fits_log_about_twenty_epochs_and_the_last():
    lines: list[str] = []
    codes = F.normalize(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    history = IMLEMapping(4, noise_dim=2, hidden=8).fit(codes, epochs=40, batch_size=8, log=lines.append)
    assert len(history) == 40 and len(lines) == 21  # epochs 0, 2, ..., 38 and 39
    assert lines[0].startswith("imle epoch 0:") and lines[-1].startswith("imle epoch 39:")
