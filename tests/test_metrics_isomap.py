"""FrameGAN Fig. 5: latent paths, their end points' straight lines and prior samples in one Isomap."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from recipes.metrics.isomap import FIG5_PATHS, PLOT_PATHS, fig5_embedding, write_fig5_png, write_isomap_png

T, D = 30, 16


def _paths(n: int = 8, seed: int = 0) -> np.ndarray:
    """Curved paths in a corner of [-1, 1]^D (tanh codes), like a navigator's: far from a straight line."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, np.pi, T)[None, :, None]
    start, bend = rng.uniform(-0.5, 0.5, (n, 1, D)), rng.uniform(-0.4, 0.4, (n, 1, D))
    return np.tanh(start + bend * np.sin(t) + 0.3 * np.cos(t) * rng.normal(size=(n, 1, D)))


def test_fig5_embeds_six_paths_their_interpolations_and_the_prior() -> None:
    paths = _paths()
    prior = np.random.default_rng(1).normal(size=(120, D))
    emb = fig5_embedding(paths, prior)
    assert emb["paths"].shape == emb["interpolations"].shape == (FIG5_PATHS, T, 2)  # the paper's 6 videos
    assert emb["prior"].shape == (120, 2)
    # the interpolation shares its end points with its path: the same codes land on the same 2-D points
    np.testing.assert_allclose(emb["interpolations"][:, [0, -1]], emb["paths"][:, [0, -1]], atol=1e-6)
    # a curved path strays visibly from its straight line; a path that is its straight line lands on it
    extent = np.ptp(np.concatenate([emb["paths"].reshape(-1, 2), emb["prior"]]), axis=0).max()
    assert np.linalg.norm(emb["paths"] - emb["interpolations"], axis=-1).max() > 0.03 * extent
    w = np.linspace(0, 1, T)[None, :, None]
    straight = fig5_embedding((1 - w) * paths[:, :1] + w * paths[:, -1:], prior)
    np.testing.assert_allclose(straight["paths"], straight["interpolations"], atol=1e-6)
    with pytest.raises(ValueError, match="prior"):
        fig5_embedding(paths, prior[:, :3])


def test_fig5_png_draws_paths_interpolations_and_prior(tmp_path) -> None:
    out = write_fig5_png(_paths(), np.random.default_rng(1).normal(size=(120, D)), tmp_path / "fig5.png")
    img = cv2.imread(str(out))
    assert img.shape == (512, 512, 3)
    grey = (img == 170).all(axis=-1)  # prior samples
    colourful = img.max(axis=-1).astype(int) - img.min(axis=-1) > 60  # paths and interpolations
    assert grey.sum() > 100 and colourful.sum() > 500
    bare = write_fig5_png(_paths(), np.zeros((0, D)), tmp_path / "bare.png")
    assert not (cv2.imread(str(bare)) == 170).all(axis=-1).any()  # no prior: no grey dots


def test_the_overview_plot_embeds_only_the_first_paths(tmp_path) -> None:
    """256 overlapping paths are unreadable and their Isomap costs seconds: the plot of 20 sequences is the
    plot of their first PLOT_PATHS, pixel for pixel, and differs from the plot of all 20."""
    paths = _paths(PLOT_PATHS + 4)
    capped = cv2.imread(str(write_isomap_png(paths, tmp_path / "capped.png")))
    first = cv2.imread(str(write_isomap_png(paths[:PLOT_PATHS], tmp_path / "first.png")))
    every = cv2.imread(str(write_isomap_png(paths, tmp_path / "all.png", max_paths=len(paths))))
    np.testing.assert_array_equal(capped, first)
    assert (capped != every).any()
    with pytest.raises(ValueError, match="max_paths"):
        write_isomap_png(paths, tmp_path / "none.png", max_paths=0)
