"""TGAN networks and WGAN constraints: shapes, init, singular value / gamma / weight clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipes.losses.wgan import (
    apply_lipschitz_constraint_,
    clip_bn_gamma_,
    clip_singular_values_,
    clip_weights_,
    critic_loss,
    generator_loss,
    svc_parameters,
)
from recipes.models.tgan import (
    FrameCritic,
    TemporalGenerator,
    VideoCritic,
    VideoGenerator,
    interpolate_trajectory,
    minibatch_stddev,
    one_hot_labels,
)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_shapes_64x64x16() -> None:
    torch.manual_seed(0)
    gen = VideoGenerator(out_channels=1, size=64, n_frames=16)
    z0 = gen.sample_z(2)
    assert z0.shape == (2, 100) and z0.min() >= -1 and z0.max() <= 1
    z1 = gen.g0(z0)
    assert z1.shape == (2, 100, 16)
    video = gen(z0)
    assert video.shape == (2, 1, 16, 64, 64)
    assert video.abs().max() < 1  # tanh
    critic = VideoCritic(in_channels=1, size=64, n_frames=16)
    assert critic(video).shape == (2,)
    # the layer widths of the notes: G0 512-256-128-128-100, critic 64-128-256-512 then 512 -> 1 (k4)
    g0_out = [m.out_channels for m in gen.g0.modules() if isinstance(m, nn.ConvTranspose1d)]
    assert g0_out == [512, 256, 128, 128, 100]
    g1_out = [m.out_channels for m in gen.g1.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert g1_out == [256, 128, 64, 32, 1]
    assert [m.out_channels for m in critic.modules() if isinstance(m, nn.Conv3d)] == [64, 128, 256, 512]
    assert critic.head.kernel_size == (4, 4) and critic.head.in_channels == 512
    # BN without beta where the authors use use_beta=False (G0, critic); with beta in G1
    assert all(m.bias is None for m in critic.modules() if isinstance(m, nn.BatchNorm3d))
    assert all(m.bias is None for m in gen.g0.modules() if isinstance(m, nn.BatchNorm1d))
    assert all(m.bias is not None for m in gen.g1.modules() if isinstance(m, nn.BatchNorm2d))


def test_uniform_init() -> None:
    critic = VideoCritic(in_channels=3, size=32, n_frames=8)
    for name, p in critic.named_parameters():
        if p.ndim >= 2:
            assert p.abs().max() <= 0.01 and p.abs().max() > 0.009, name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name


def test_small_sizes_and_multi_step_critic() -> None:
    gen = VideoGenerator(out_channels=3, size=32, n_frames=16, conv_ch=64)
    video = gen(gen.sample_z(3))
    assert video.shape == (3, 3, 16, 32, 32)
    critic = VideoCritic(in_channels=3, size=32, n_frames=16, mid_ch=8)  # ends with T' = 2
    scores = critic(video)
    assert scores.shape == (3,)
    with pytest.raises(ValueError, match="multiple of 8"):
        VideoCritic(size=32, n_frames=4)
    with pytest.raises(ValueError, match="4 \\* 2\\*\\*n"):
        VideoGenerator(size=48)
    with pytest.raises(ValueError, match="power of 2"):
        TemporalGenerator(n_frames=12)


def test_time_steps_of_critic_are_not_mixed_with_channels() -> None:
    """Scores of a T'=2 critic equal the sum of the head applied to each time step separately."""
    critic = VideoCritic(in_channels=1, size=16, n_frames=8, mid_ch=4).eval()
    x = torch.randn(2, 1, 8, 16, 16)
    h = critic.features(x)
    assert h.shape[2] == 2
    expected = sum(critic.head(h[:, :, t]).flatten() for t in range(2))
    torch.testing.assert_close(critic(x), expected)


def test_conditional_inputs() -> None:
    gen = VideoGenerator(out_channels=1, size=32, n_frames=8, conv_ch=64, n_classes=10)
    critic = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8, n_classes=10)
    cond = one_hot_labels(torch.tensor([3, 7]), 10)
    assert cond.shape == (2, 10) and cond.sum() == 2 and cond[0, 3] == 1
    z0 = gen.sample_z(2)
    gen.eval()
    video = gen(z0, cond)
    assert critic(video, cond).shape == (2,)
    # the condition changes the output for the same z0 (multi-hot works too: two digits in one clip)
    assert not torch.allclose(video, gen(z0, one_hot_labels(torch.tensor([4, 7]), 10)))
    assert gen(z0, cond + one_hot_labels(torch.tensor([1, 1]), 10)).shape == video.shape
    with pytest.raises(ValueError, match="condition is required"):
        gen(z0)
    with pytest.raises(ValueError, match="shape"):
        critic(video, cond[:, :5])
    with pytest.raises(ValueError, match="unconditional"):
        VideoCritic(size=32, n_frames=8)(video, cond)


def test_interpolated_trajectory_renders_more_frames() -> None:
    gen = VideoGenerator(out_channels=1, size=32, n_frames=8, conv_ch=64).eval()
    z0 = gen.sample_z(2)
    with torch.no_grad():
        z1 = gen.g0(z0)
        fine = interpolate_trajectory(z1, 15)
        torch.testing.assert_close(fine[:, :, ::2], z1)
        torch.testing.assert_close(fine[:, :, 1], (z1[:, :, 0] + z1[:, :, 1]) / 2)
        video = gen.render(z0, fine)
        assert video.shape == (2, 1, 15, 32, 32)
        torch.testing.assert_close(video[:, :, ::2], gen(z0))


def _top_singular_values(p: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(p.reshape(p.shape[0], -1).double(), ord=2)


def test_svc_bounds_every_critic_kernel() -> None:
    torch.manual_seed(1)
    critic = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=16)
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(300) if p.ndim > 1 else p.fill_(5.0)  # kernels far outside the unit ball
    kernels = svc_parameters(critic, "code")
    assert len(kernels) == 4  # three Conv3d + the Conv2d head
    before = [p.detach().clone() for p in kernels]
    largest = clip_singular_values_(critic)
    assert largest > 1
    for p, b in zip(kernels, before, strict=True):
        assert _top_singular_values(p) <= 1 + 1e-5
        # the result is the SVD definition U diag(min(s, 1)) V^T of the original weight (computed in float64)
        u, s, vh = torch.linalg.svd(b.reshape(b.shape[0], -1).double(), full_matrices=False)
        expected = (u * s.clamp(max=1)) @ vh
        torch.testing.assert_close(p.detach().reshape(expected.shape).double(), expected, atol=1e-5, rtol=0)
    assert all(torch.all(p == 5.0) for p in critic.parameters() if p.ndim == 1)  # biases, gammas untouched


def test_svc_scope_paper_also_clips_linear_layers() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4), nn.Conv1d(4, 4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(100)
    lin, conv1d = net[2].weight, net[3].weight
    lin_before, conv1d_before = lin.detach().clone(), conv1d.detach().clone()
    clip_singular_values_(net, scope="code")
    assert torch.equal(lin, lin_before) and torch.equal(conv1d, conv1d_before)
    assert _top_singular_values(net[0].weight) <= 1 + 1e-5
    clip_singular_values_(net, scope="paper")
    assert _top_singular_values(lin) <= 1 + 1e-5 and _top_singular_values(conv1d) <= 1 + 1e-5
    with pytest.raises(ValueError, match="scope"):
        clip_singular_values_(net, scope="all")  # type: ignore[arg-type]


def test_svc_leaves_weights_inside_the_ball_bit_identical() -> None:
    critic = VideoCritic(in_channels=1, size=16, n_frames=4, mid_ch=4)
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    assert clip_singular_values_(critic) <= 1
    assert all(torch.equal(before[k], v) for k, v in critic.state_dict().items())


def test_gamma_clipping_bounds() -> None:
    critic = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8)
    bns = [m for m in critic.modules() if isinstance(m, nn.BatchNorm3d)]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for bn in bns:
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) * 4 + 0.01)
            bn.weight.copy_((torch.rand(bn.num_features, generator=gen) - 0.3) * 5)
    inside = [
        (bn.weight >= 0.01 * bn.running_var.sqrt()) & (bn.weight <= bn.running_var.sqrt()) for bn in bns
    ]
    kept = [bn.weight[m].clone() for bn, m in zip(bns, inside, strict=True)]
    assert clip_bn_gamma_(critic) == len(bns) == 2
    for bn, m, k in zip(bns, inside, kept, strict=True):
        std = bn.running_var.sqrt()
        assert torch.all(bn.weight <= std + 1e-7) and torch.all(bn.weight >= 0.01 * std - 1e-7)
        assert torch.equal(bn.weight[m], k)  # values already inside are unchanged
        assert torch.any(bn.weight == std) and torch.any(torch.isclose(bn.weight, 0.01 * std))


def test_weight_clipping_and_schedule() -> None:
    critic = VideoCritic(in_channels=1, size=16, n_frames=4, mid_ch=4)
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(1.0)
    clip_weights_(critic)
    assert all(p.abs().max() <= 0.01 for p in critic.parameters())
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(1000)
    # SVC runs on iterations 5, 10, ...; not on 4
    state = {k: v.clone() for k, v in critic.state_dict().items()}
    assert apply_lipschitz_constraint_(critic, method="svc", iteration=4) is None
    assert all(torch.equal(state[k], v) for k, v in critic.state_dict().items())
    assert apply_lipschitz_constraint_(critic, method="svc", iteration=5) > 1
    assert all(_top_singular_values(p) <= 1 + 1e-5 for p in svc_parameters(critic))


def test_wgan_losses() -> None:
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -1.5])
    assert critic_loss(d_real, d_fake).item() == pytest.approx(-0.5 - 2.0)
    assert generator_loss(d_fake).item() == pytest.approx(0.5)


def test_orthogonal_critic_init_puts_every_singular_value_at_one() -> None:
    from recipes.models.tgan import orthogonal_init_

    critic = VideoCritic(in_channels=1, size=16, n_frames=4, mid_ch=4)
    orthogonal_init_(critic)
    kernels = [p for p in critic.parameters() if p.ndim > 1]
    assert len(kernels) == 3
    for w in kernels:
        s = torch.linalg.svdvals(w.detach().reshape(w.shape[0], -1))
        torch.testing.assert_close(s, torch.ones_like(s))
    assert all(torch.all(p == 0) for n, p in critic.named_parameters() if n.endswith("bias"))


def test_pytorch_default_generator_init_replaces_the_uniform_one() -> None:
    from recipes.models.tgan import default_init_

    gen = VideoGenerator(out_channels=1, size=16, n_frames=4, z_slow_dim=8, z_fast_dim=8, conv_ch=16)
    last = gen.g1.up[-2]
    assert float(last.weight.detach().abs().max()) <= 0.01  # the paper's U(-0.01, 0.01)
    default_init_(gen)
    assert float(last.weight.detach().abs().max()) > 0.05  # kaiming-uniform: 1 / sqrt(fan_in) bounds
    assert last.weight.is_contiguous(memory_format=torch.channels_last)  # re-initialised in place
    with torch.no_grad():
        assert float(gen(gen.sample_z(2)).abs().max()) > 0.5  # full-contrast output from the start


def test_minibatch_stddev_sees_alike_clips_within_consecutive_groups_only() -> None:
    torch.manual_seed(0)
    h = torch.randn(8, 5, 2, 4, 4)
    h[4:] = h[4]  # the second group of four: four copies of one clip (collapse)
    out = minibatch_stddev(h, 4)
    assert out.shape == (8, 6, 2, 4, 4) and torch.equal(out[:, :5], h)
    plane = out[:, 5]
    assert torch.all(plane[:4] == plane[0, 0, 0, 0]) and torch.all(plane[4:] == plane[4, 0, 0, 0])
    expected = h[:4].var(0, unbiased=False).add(1e-8).sqrt().mean().item()
    assert plane[0, 0, 0, 0] == pytest.approx(expected, rel=1e-5)
    assert plane[4, 0, 0, 0] < 1e-3 < plane[0, 0, 0, 0]
    h2 = h.clone()
    h2[4:] = torch.randn(4, 5, 2, 4, 4)  # another second half (the reals of a joint batch) ...
    assert torch.equal(minibatch_stddev(h2, 4)[:4], out[:4])  # ... leaves the first half's channel alone
    assert minibatch_stddev(h[:6], 4)[:, 5].unique().numel() == 3  # groups of gcd(6, 4) = 2 for other sizes


def test_critic_with_minibatch_stddev_scores_a_collapsed_batch_apart_and_stays_under_svc() -> None:
    torch.manual_seed(0)
    critic = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8, mbstd_group=4)
    assert critic.head.in_channels == 8 * 4 + 1
    one = torch.randn(1, 1, 8, 32, 32)
    varied = torch.cat([one, torch.randn(3, 1, 8, 32, 32)])
    collapsed = one.expand(4, -1, -1, -1, -1)
    critic.eval()
    # the first clip is the same in both batches; only its batch-mates differ, and its score sees that
    assert critic(varied)[0] != critic(collapsed)[0]
    plain = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8).eval()
    assert plain(varied)[0] == plain(collapsed)[0]
    with torch.no_grad():
        critic.head.weight.mul_(100)
    clip_singular_values_(critic)
    assert _top_singular_values(critic.head.weight) <= 1 + 1e-5


def test_frame_critic_branch_adds_the_mean_frame_score_and_stays_under_the_constraints() -> None:
    """The clip's score is the video critic's plus the mean of the frame critic's scores over its frames
    (so the WGAN losses are the two critics' losses summed), the frame part ignores the frames' order, and
    SVC and BN gamma clipping reach the frame branch through the one critic module."""
    torch.manual_seed(0)
    critic = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8, frame_ch=4).eval()
    plain = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8).eval()
    video_part = {k: v for k, v in critic.state_dict().items() if not k.startswith("frame_critic.")}
    plain.load_state_dict(video_part)
    assert isinstance(critic.frame_critic, FrameCritic)
    clips = torch.rand(3, 1, 8, 32, 32) * 2 - 1
    frames = clips.transpose(1, 2).reshape(24, 1, 32, 32)
    expected = plain(clips) + critic.frame_critic(frames).view(3, 8).mean(1)
    torch.testing.assert_close(critic(clips), expected)
    shuffled = clips[:, :, torch.randperm(8)]  # right frames, wrong order: only the video part can tell
    torch.testing.assert_close(critic(shuffled) - plain(shuffled), critic(clips) - plain(clips))
    assert not torch.allclose(plain(shuffled), plain(clips))
    with torch.no_grad():
        for m in critic.frame_critic.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(100)
    assert clip_singular_values_(critic) > 1
    for m in critic.frame_critic.modules():
        if isinstance(m, nn.Conv2d):
            assert _top_singular_values(m.weight) <= 1 + 1e-5
    assert clip_bn_gamma_(critic) == 2 * 2  # 32x32: two BN layers in each branch
    conditional = VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8, n_classes=3, frame_ch=4)
    assert conditional.frame_critic.layers[0].in_channels == 1 + 3  # the condition planes reach it too
    assert conditional(clips, torch.eye(3)).shape == (3,)
    with pytest.raises(ValueError, match="frame_ch"):
        VideoCritic(in_channels=1, size=32, n_frames=8, mid_ch=8, frame_ch=-1)
