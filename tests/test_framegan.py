"""FrameGAN models and multi-discriminator losses: authors' shapes, fixed projections, batched == loop, HV."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from recipes.losses.multi_d import (
    combine_generator_losses,
    discriminator_losses,
    generator_losses,
    hypervolume_loss,
    r1_penalties,
)
from recipes.models.framegan import (
    ConvSpec,
    FrameGenerator,
    LoopDiscriminators,
    MultiDiscriminator,
    VideoGenerator,
    frame_discriminators,
    freeze,
    one_output_position,
    render_video,
    video_discriminators,
)
from recipes.train_framegan import FrameGANConfig, build_discriminators, build_frame_generator, train_step


def conv_output_shapes(d: MultiDiscriminator, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Spatial shape after every grouped conv (hooks), and check channel counts are K * out."""
    shapes = []
    hooks = [c.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for c in d.convs]
    d(x)
    for h in hooks:
        h.remove()
    return shapes


def test_frame_generator_shapes_30_and_64() -> None:
    g = FrameGenerator()  # paper widths: Linear 100 -> 2*2*1024, ConvT 1024 -> 1024 -> 512 -> 256 -> 1
    assert g.fc[0].weight.shape == (2 * 2 * 1024, 100)
    convs = [m for m in g.deconv if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.padding) for c in convs] == [
        (1024, 1024, (1, 1)),
        (1024, 512, (1, 1)),
        (512, 256, (1, 1)),
        (256, 1, (2, 2)),
    ]
    x = g(torch.randn(3, 100))
    assert x.shape == (3, 1, 30, 30) and x.abs().max() <= 1
    g64 = FrameGenerator(size=64, channels=3, width=64)
    assert g64(torch.randn(2, 100)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="30 or 64"):
        FrameGenerator(size=32)


def test_frame_discriminator_authors_shapes() -> None:
    d = frame_discriminators(2, width=256)
    assert [c.out_channels for c in d.convs] == [2 * 256, 2 * 512, 2 * 1024, 2 * 1]
    assert all(c.groups == 2 for c in d.convs) and d.projection.shape == (2, 1, 8, 8)
    shapes = conv_output_shapes(d, torch.randn(3, 1, 30, 30))
    assert shapes == [(512, 8, 8), (1024, 4, 4), (2048, 2, 2), (2, 1, 1)]  # 30 -P-> 15 -> 8 -> 4 -> 2 -> 1
    d64 = frame_discriminators(3, size=64, channels=3, width=4)
    assert conv_output_shapes(d64, torch.randn(2, 3, 64, 64))[-1] == (3, 1, 1)
    assert d64(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_video_discriminator_authors_shapes() -> None:
    d = video_discriminators(1, width=256)
    assert d.projection.shape == (1, 1, 1, 8, 8)
    shapes = conv_output_shapes(d, torch.randn(2, 1, 30, 30, 30))
    assert shapes == [(256, 15, 4, 4), (512, 7, 3, 3), (768, 4, 2, 2), (1, 1, 1, 1)]
    assert d(torch.randn(2, 1, 30, 30, 30)).shape == (2, 1)


def test_video_generator_shapes_and_per_sample_view() -> None:
    gv = VideoGenerator()
    linears = [m for m in gv.fc if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in linears] == [
        (100, 512, None),
        (512, 1024, None),
        (1024, 2048, None),
        (2048, 3840, None),
    ]
    assert (gv.lstm.input_size, gv.lstm.hidden_size, gv.lstm.num_layers, gv.lstm.bidirectional) == (
        128,
        256,
        2,
        True,
    )
    assert (gv.out.in_features, gv.out.out_features) == (512, 100)
    codes = gv(torch.randn(2, 100))
    assert codes.shape == (2, 30, 100) and codes.abs().max() <= 1
    small = VideoGenerator(hidden=(16, 32, 64))  # the batch-mixing check needs no paper widths
    z = torch.randn(4, 100)
    small(z)  # one training-mode pass moves the BN running stats off their init
    small.eval()  # BN running stats: each sample's codes must depend on that sample only
    assert torch.allclose(small(z)[1], small(z[1:2])[0], atol=1e-6)
    quirk = VideoGenerator(hidden=(16, 32, 64), raw_view=True)
    quirk.load_state_dict(small.state_dict())
    quirk.eval()
    assert not torch.allclose(quirk(z)[1], quirk(z[1:2])[0], atol=1e-3)  # authors' view mixes batch items
    codes = small(z)
    video = render_video(freeze(FrameGenerator(width=16)), codes.detach())
    assert video.shape == (4, 1, 30, 30, 30)


def test_spread_codes_cover_the_frame_latent_space() -> None:
    """G_V at PyTorch's init emits codes near 0; spread_codes_ makes them unit-std (pre-tanh), BN kept."""
    torch.manual_seed(0)
    gv = VideoGenerator(hidden=(16, 32, 64), frames=6)
    z = torch.randn(64, 100)
    assert gv(z).norm(dim=-1).mean() < 2  # G_F's z ~ N(0, I_100) has norm ~10
    buffers = {k: v.clone() for k, v in gv.named_buffers()}
    gv.spread_codes_(z)
    for k, v in gv.named_buffers():
        assert torch.equal(v, buffers[k]), k
    with torch.no_grad():
        pre = torch.atanh(gv(z).double()).flatten(0, 1)  # the codes before G_V's tanh, seen from outside
        fresh = gv(torch.randn(64, 100))
    assert torch.allclose(pre.mean(0), torch.zeros(100, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(pre.std(0), torch.ones(100, dtype=torch.float64), atol=1e-3)
    assert 4 < fresh.norm(dim=-1).mean() < 8  # as tanh(N(0, I_100)): about 6.3
    assert fresh.std(0).mean() > 0.3  # and they differ between z
    with torch.no_grad():  # because the LSTM's outputs now carry z (PyTorch's init: std 0.02 over z)
        h = gv.fc(z).view(64, 6, 128).transpose(0, 1)
        assert gv.lstm(h)[0].std(1).mean() > 0.2


def test_sphere_codes_lie_where_the_frame_generator_was_trained() -> None:
    torch.manual_seed(0)
    gv = VideoGenerator(hidden=(16, 32, 64), frames=6, output="sphere")
    z = torch.randn(64, 100)
    gv.spread_codes_(z)
    codes = gv(z)
    assert torch.allclose(codes.norm(dim=-1), torch.full((64, 6), 10.0), atol=1e-4)  # sqrt(100)
    cos = torch.nn.functional.cosine_similarity(codes[:32, 0], codes[32:, 0], dim=-1)
    assert cos.abs().mean() < 0.3  # independent z: codes in unrelated directions, as N(0, I) draws


@pytest.mark.parametrize("init", ["gaussian", "uniform"])
def test_projections_unit_norm_buffers_fixed_after_training(init: str) -> None:
    g = FrameGenerator(width=16)
    d = frame_discriminators(3, width=4, projection_init=init, projection_seed=7)
    before = d.projection.clone()
    assert torch.allclose(before.flatten(1).norm(dim=1), torch.ones(3))
    assert "projection" in dict(d.named_buffers()) and "projection" in d.state_dict()
    assert all(p is not d.projection for p in d.parameters())
    opt_g, opt_d = torch.optim.RMSprop(g.parameters(), lr=1e-2), torch.optim.RMSprop(d.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    w0 = d.convs[0].weight.clone()
    for _ in range(3):
        train_step(
            g,
            d,
            opt_g,
            opt_d,
            torch.rand(4, 1, 30, 30) * 2 - 1,
            torch.randn(4, 100),
            g_loss="hypervolume",
            nadir_slack=1.5,
            scaler=scaler,
            autocast=contextlib.nullcontext,
        )
    assert torch.equal(d.projection, before)
    assert not torch.equal(d.convs[0].weight, w0)  # the discriminators themselves did train
    again = frame_discriminators(3, width=4, projection_init=init, projection_seed=7)
    assert torch.equal(again.projection, before)  # reproducible from the seed


@pytest.mark.parametrize("stage", [1, 2])
def test_batched_discriminators_equal_per_discriminator_loop(stage: int) -> None:
    torch.manual_seed(0)
    if stage == 1:
        d, x = frame_discriminators(5, width=4), torch.randn(3, 1, 30, 30)
    else:
        d, x = video_discriminators(4, width=3), torch.randn(2, 1, 30, 30, 30)
    loop = LoopDiscriminators.from_batched(d)
    assert loop.k == d.k and all(
        torch.equal(m.projection[0], d.projection[i]) for i, m in enumerate(loop.discriminators)
    )
    xb, xl = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_b, out_l = d(xb), loop(xl)
    assert out_b.shape == out_l.shape == (x.shape[0], d.k)
    torch.testing.assert_close(out_b, out_l, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(out_b)
    (out_b * w).sum().backward()
    (out_l * w).sum().backward()
    torch.testing.assert_close(xb.grad, xl.grad, rtol=1e-4, atol=1e-6)
    for i, grouped in enumerate(d.convs):
        n = grouped.out_channels // d.k
        for k, single in enumerate(loop.discriminators):
            conv = [m for m in single.net if isinstance(m, nn.Conv2d | nn.Conv3d)][i]
            torch.testing.assert_close(
                grouped.weight.grad[k * n : (k + 1) * n], conv.weight.grad, rtol=1e-4, atol=1e-6
            )


def test_hypervolume_gradient_weighting() -> None:
    losses = torch.tensor([0.3, 0.9, 0.6, 1.2], requires_grad=True)
    hv = hypervolume_loss(losses, delta=1.5)
    hv.backward()
    eta = 1.5 * 1.2 + 1e-8
    expected = 1.0 / (eta - losses.detach())  # d/dl_k of -sum log(eta - l): eta is detached
    torch.testing.assert_close(losses.grad, expected)
    torch.testing.assert_close(hv, -torch.log(eta - losses.detach()).sum())
    assert losses.grad.argmax() == 3 and losses.grad.argmin() == 0  # the worst-faring D weighs most
    # proportional to 1 / (eta - l_k): the normalised weights are the hGAN "proba"
    w = losses.grad / losses.grad.sum()
    torch.testing.assert_close(w * (eta - losses.detach()), torch.full((4,), 1 / expected.sum().item()))
    with pytest.raises(ValueError, match="> 1"):
        hypervolume_loss(losses, delta=1.0)


def test_mean_sum_modes_and_bce_losses() -> None:
    losses = torch.tensor([0.5, 1.5], requires_grad=True)
    combine_generator_losses(losses, "mean").backward()
    torch.testing.assert_close(losses.grad, torch.tensor([0.5, 0.5]))
    assert combine_generator_losses(losses, "sum").item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        combine_generator_losses(losses, "gman")
    real, fake = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 3.0]])
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(discriminator_losses(real, fake), sp(-real[0]) + sp(fake[0]))
    torch.testing.assert_close(generator_losses(fake), sp(-fake[0]))


def _conv_and_linear(module: nn.Module) -> list[nn.Module]:
    kinds = nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.Linear
    return [m for m in module.modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("stage", [1, 2])
def test_dcgan_init_by_default_pytorch_as_option(stage: int) -> None:
    """G_F and D weights ~ N(0, 0.02) with zero biases (DCGAN / authors' code); `init="pytorch"` keeps
    PyTorch's Kaiming-uniform default (bounded by 1/sqrt(fan_in), biases not zero)."""
    cfg = FrameGANConfig(stage=stage, k=3, g_width=64, d_width=8)
    for build in (build_frame_generator, build_discriminators):
        torch.manual_seed(0)
        dcgan = _conv_and_linear(build(cfg))
        weights = torch.cat([m.weight.flatten() for m in dcgan])
        assert weights.mean().abs() < 2e-3 and weights.std().item() == pytest.approx(0.02, rel=0.05)
        assert all(m.bias is None or not m.bias.any() for m in dcgan)
        torch.manual_seed(0)
        default = _conv_and_linear(
            build(FrameGANConfig(stage=stage, k=3, g_width=64, d_width=8, init="pytorch"))
        )
        assert any(m.bias is not None and m.bias.any() for m in default)
        for m in default:
            fan_in = m.weight[0].numel()  # PyTorch's convention, transposed convs included
            assert m.weight.abs().max() <= 1 / fan_in**0.5 + 1e-6
    with pytest.raises(ValueError, match="init must be"):
        FrameGenerator(width=16, init="xavier")


@pytest.mark.parametrize("fresh", [True, False])
def test_generator_step_draws_fresh_z(fresh: bool) -> None:
    """The G step renders G(z_g) from a fresh z (authors' stage 1 code); without z_g it reuses D's batch."""
    torch.manual_seed(0)
    g, d = FrameGenerator(width=16), frame_discriminators(2, width=4)
    calls: list[tuple[torch.Tensor, bool]] = []

    def fake_fn(z: torch.Tensor) -> torch.Tensor:
        calls.append((z, torch.is_grad_enabled()))
        return g(z)

    z, z_g = torch.randn(4, 100), torch.randn(4, 100)
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-3), torch.optim.Adam(d.parameters(), 1e-3)
    stats = train_step(
        fake_fn,
        d,
        opt_g,
        opt_d,
        torch.rand(4, 1, 30, 30) * 2 - 1,
        z,
        g_loss="mean",
        nadir_slack=1.5,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        autocast=contextlib.nullcontext,
        z_g=z_g if fresh else None,
    )
    if fresh:  # D's fake batch needs no graph through G; G's batch is new noise
        assert [(c[0] is z, c[1]) for c in calls] == [(True, False), (False, True)] and calls[1][0] is z_g
    else:
        assert len(calls) == 1 and calls[0][0] is z and calls[0][1]
    assert stats["g_objective"] == pytest.approx(stats["g_loss"])  # "mean": the objective is the K-average


def test_mean_loss_gives_each_discriminator_weight_one_over_k() -> None:
    """Paper: G minimises the average of the K discriminators' losses, i.e. the gradient of each l_k / K."""
    torch.manual_seed(0)
    g, d = FrameGenerator(width=16), frame_discriminators(4, width=4)
    z = torch.randn(6, 100)
    per_d = []
    for k in range(4):
        g.zero_grad()
        generator_losses(d(g(z)))[k].backward()
        per_d.append([p.grad.clone() for p in g.parameters()])
    g.zero_grad()
    combine_generator_losses(generator_losses(d(g(z))), "mean").backward()
    for i, p in enumerate(g.parameters()):
        torch.testing.assert_close(p.grad, sum(grads[i] for grads in per_d) / 4, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda dot: frame_discriminators(5, width=4, dot_head=dot), (3, 1, 30, 30)),
        (lambda dot: frame_discriminators(3, size=64, channels=3, width=2, dot_head=dot), (2, 3, 64, 64)),
        (lambda dot: video_discriminators(4, width=3, dot_head=dot), (2, 1, 30, 30, 30)),
    ],
    ids=["frames-30", "frames-64", "videos"],
)
def test_dot_head_is_the_grouped_last_conv(make, shape) -> None:
    """`d_impl="batched_dot"`: the last conv as a dot product gives the grouped conv's logits, input
    gradients, R1's double backward and every weight gradient (float rounding apart), same parameters."""
    torch.manual_seed(0)
    conv, dot = make(False), make(True)
    dot.load_state_dict(conv.state_dict())
    x = torch.randn(shape)
    results = []
    for d in (conv, dot):
        p = d.project(x).detach().requires_grad_(True)
        logits = d(p, projected=True)
        (grad,) = torch.autograd.grad(logits.sum(), p, create_graph=True)  # R1's input gradient
        (logits.square().sum() + grad.square().sum()).backward()
        results.append([logits, grad, *(q.grad for q in d.parameters())])
    assert results[0][0].shape == (shape[0], conv.k)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert [n for n, _ in conv.named_parameters()] == [n for n, _ in dot.named_parameters()]


def test_dot_head_falls_back_to_the_conv_where_the_output_has_several_positions() -> None:
    """Another frame size leaves the last conv several output positions (averaged): there it stays a conv."""
    torch.manual_seed(0)
    conv, dot = (video_discriminators(2, width=2, dot_head=flag) for flag in (False, True))
    dot.load_state_dict(conv.state_dict())
    x = torch.randn(2, 1, 36, 30, 30)  # 36 frames: the last conv maps 6x2x2 to 3x1x1
    assert not one_output_position((6, 2, 2), conv.specs[-1])
    assert torch.equal(conv(x), dot(x))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 6), s=st.integers(1, 3), p=st.integers(0, 3))
def test_one_output_position_matches_the_conv(n: int, k: int, s: int, p: int) -> None:
    """The predicate is true exactly when the conv has one output position whose window covers the input."""
    assume(n + 2 * p >= k)  # the conv has an output at all
    spec = ConvSpec(1, (k,), (s,), (p,))
    # a ones kernel over a ones input counts the input positions each output window sees
    seen = torch.nn.functional.conv1d(torch.ones(1, 1, n), torch.ones(1, 1, k), stride=s, padding=p)
    assert one_output_position((n,), spec) == (seen.shape[-1] == 1 and seen.item() == n)


@pytest.mark.parametrize("stage", [1, 2])
def test_r1_penalty_is_each_discriminators_own_input_gradient(stage: int) -> None:
    """Beyond the paper (`--r1-gamma`): R1 of D_k on its own projected input; batched == per-D reference."""
    torch.manual_seed(0)
    if stage == 1:
        d, x = frame_discriminators(3, width=4), torch.randn(5, 1, 30, 30)
    else:
        d, x = video_discriminators(2, width=2), torch.randn(2, 1, 30, 30, 30)
    loop = LoopDiscriminators.from_batched(d)
    for model in (d, loop):  # projected=True skips the projection: same logits
        torch.testing.assert_close(model(model.project(x), projected=True), model(x), rtol=1e-5, atol=1e-6)
    p = d.project(x).detach().requires_grad_(True)
    r1 = r1_penalties(d(p, projected=True), p)
    expected = []
    for single in loop.discriminators:
        q = single.project(x).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(single(q, projected=True).sum(), q)
        expected.append(g.square().flatten(1).sum(1).mean())
    torch.testing.assert_close(r1, torch.stack(expected), rtol=1e-4, atol=1e-8)
    r1.sum().backward()  # the graph is kept: the penalty trains the discriminators
    assert d.convs[0].weight.grad is not None and d.convs[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("impl", ["batched", "batched_dot", "loop"])
def test_discriminators_on_parts_give_the_joint_logits_and_keep_the_parts_graphs_apart(
    stage: int, impl: str
) -> None:
    """`d((real, fake))` (what `--r1-split` runs): the logits of `d(cat(real, fake))`, but R1's input gradient
    (and so its double backward) runs the convolutions' backward on the real half only, where the joint batch
    runs it on both halves (on zeros for the fake one)."""
    torch.manual_seed(0)
    if stage == 1:
        d, x = frame_discriminators(3, width=4, dot_head=impl == "batched_dot"), torch.randn(7, 1, 30, 30)
    else:
        d, x = video_discriminators(2, width=2, dot_head=impl == "batched_dot"), torch.randn(5, 1, 30, 30, 30)
    d = LoopDiscriminators.from_batched(d) if impl == "loop" else d
    n = len(x) // 2  # real and fake of different sizes, so the shapes below tell the parts apart
    p = d.project(x).detach()
    p_real, p_fake = p[:n].clone().requires_grad_(True), p[n:]  # as train_step: the fake half needs no grad
    joint, parts = d(torch.cat([p_real, p_fake]), projected=True), d((p_real, p_fake), projected=True)
    assert parts.shape == joint.shape == (len(x), d.k)
    torch.testing.assert_close(parts, joint, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d((x[:n], x[n:])), d(x), rtol=1e-5, atol=1e-7)  # unprojected input too
    r1 = {}
    for name, logits in (("joint", joint), ("parts", parts)):
        with torch.profiler.profile(record_shapes=True) as prof:
            r1[name] = r1_penalties(logits[:n], p_real)
        batches = {e.input_shapes[0][0] for e in prof.events() if e.name == "aten::convolution_backward"}
        assert batches == ({len(x)} if name == "joint" else {n})  # R1's input gradient: both parts / real
    torch.testing.assert_close(r1["parts"], r1["joint"], rtol=1e-4, atol=1e-8)


def test_train_step_with_r1_split_updates_the_weights_as_the_joint_batch() -> None:
    """`r1_split` changes only the order of the sums: one step from the same state ends on (nearly) the same
    discriminator and generator weights, with the same logged losses and penalty."""
    torch.manual_seed(0)
    real, z, z_g = torch.rand(4, 1, 30, 30) * 2 - 1, torch.randn(4, 100), torch.randn(4, 100)
    torch.manual_seed(1)
    g0, d0 = FrameGenerator(width=16), frame_discriminators(2, width=4)
    ends = []
    for split in (False, True):
        g, d = FrameGenerator(width=16), frame_discriminators(2, width=4)
        g.load_state_dict(g0.state_dict())
        d.load_state_dict(d0.state_dict())
        opt_g, opt_d = torch.optim.SGD(g.parameters(), 0.1), torch.optim.SGD(d.parameters(), 0.1)
        stats = train_step(
            g, d, opt_g, opt_d, real, z, g_loss="mean", nadir_slack=1.5,
            scaler=torch.amp.GradScaler("cpu", enabled=False), autocast=contextlib.nullcontext,
            z_g=z_g, r1_gamma=10.0, r1_split=split,
        )  # fmt: skip
        ends.append((stats, [t.detach().clone() for t in (*d.parameters(), *g.parameters())]))
    (joint_stats, joint_w), (split_stats, split_w) = ends
    assert joint_stats.keys() == split_stats.keys() and "r1" in split_stats
    for key in joint_stats:
        assert split_stats[key] == pytest.approx(joint_stats[key], rel=1e-5, abs=1e-7)
    assert not torch.equal(d0.convs[0].weight, joint_w[0])  # the step moved D
    for a, b in zip(joint_w, split_w, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_train_step_with_r1_adds_the_penalty_to_the_discriminators_step() -> None:
    torch.manual_seed(0)
    g, real, z = FrameGenerator(width=16), torch.rand(4, 1, 30, 30) * 2 - 1, torch.randn(4, 100)
    weights = {}
    for gamma in (0.0, 10.0):
        torch.manual_seed(1)
        d = frame_discriminators(2, width=4)
        opt_g, opt_d = torch.optim.SGD(g.parameters(), 0.0), torch.optim.SGD(d.parameters(), 0.1)
        stats = train_step(
            g, d, opt_g, opt_d, real, z, g_loss="mean", nadir_slack=1.5,
            scaler=torch.amp.GradScaler("cpu", enabled=False), autocast=contextlib.nullcontext,
            z_g=torch.randn(4, 100), r1_gamma=gamma,
        )  # fmt: skip
        assert ("r1" in stats) is (gamma > 0)
        weights[gamma] = d.convs[0].weight.detach().clone()
    assert not torch.equal(weights[0.0], weights[10.0])
