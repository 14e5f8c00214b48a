"""Moving MNIST identity persistence with the project's own digit classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datagen.sim.mnist import MNIST, composite
from datagen.sources.mnist import load_digits
from recipes.metrics.mnist_identity import mnist_identity_metrics
from recipes.models.digit_classifier import DigitClassifier, accuracy, load_digit_classifier

FRAMES, N = 20, 16
TEST_SPLIT = {"kind": "builtin", "split": "test"}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """Trained once into a private cache (training is part of what is tested)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIDEOGEN_CACHE", str(cache))
        model = load_digit_classifier()
        files = list((cache / "digit_classifier").glob("*.pt"))
        reloaded = load_digit_classifier()  # from the cache this time
    return model, reloaded, files


@pytest.fixture(scope="module")
def movies():
    """Moving MNIST from the held-out digits (the classifier never saw them), and its ground truth."""
    params = MNIST.validate({"frames": FRAMES, "source": TEST_SPLIT})
    samples = list(MNIST.generate(params, 5, 0, N))
    videos = np.stack([s.video[..., 0] for s in samples])  # (N, T, 64, 64) uint8
    return params, videos, [s.meta for s in samples]


def _to_model(videos_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(videos_u8)[:, None].float() / 127.5 - 1


def test_classifier_accuracy_and_weights_only_cache(classifier):
    model, reloaded, files = classifier
    test = load_digits(TEST_SPLIT)
    assert accuracy(model, test.images, test.labels) > 0.93
    assert len(files) == 1
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    fresh = DigitClassifier()
    fresh.load_state_dict(state)
    x = torch.from_numpy(test.images[:32].astype(np.float32) / 255)[:, None]
    with torch.no_grad():
        assert torch.equal(fresh(x), reloaded(x)) and torch.equal(model(x), reloaded(x))


def test_real_moving_mnist_keeps_identities(classifier, movies):
    _, videos, _ = movies
    m = mnist_identity_metrics(_to_model(videos), classifier[0])
    assert m["identity_persistence"] > 0.9 and m["label_agreement"] > 0.97
    assert m["feature_drift"] < 0.5 and m["valid_frame_fraction"] > 0.3 and m["n_tracks"] >= N


def _swapped(params, videos, metas, t0: int) -> np.ndarray:
    """Re-composite the same trajectories with different digits from frame ``t0`` on."""
    digits = load_digits(params["source"])
    index_of = {int(row): i for i, row in enumerate(digits.source_index)}
    first = np.array([[digits.images[index_of[r]] for r in m["digit_ids"]] for m in metas])
    labels = np.array([m["labels"] for m in metas])
    # for each digit, the first digit of the split whose label is (label + 3) mod 10
    other = np.array([[np.flatnonzero(digits.labels == (lab + 3) % 10)[0] for lab in row] for row in labels])
    second = digits.images[other]
    top_left = np.array([m["positions"] for m in metas])  # (N, T, D, 2) as (y, x)
    before = np.zeros((len(metas), t0, *videos.shape[2:]), np.uint8)
    after = np.zeros((len(metas), FRAMES - t0, *videos.shape[2:]), np.uint8)
    n, d = labels.shape
    ids = np.arange(n * d).reshape(n, d)  # composite takes a digit set plus per-video ids into it
    composite(before, first.reshape(n * d, *first.shape[2:]), ids, top_left[:, :t0], params["overlap"])
    composite(after, second.reshape(n * d, *second.shape[2:]), ids, top_left[:, t0:], params["overlap"])
    np.testing.assert_array_equal(before, videos[:, :t0])  # the re-composite is faithful
    return np.concatenate([before, after], axis=1)


def test_swapped_identities_are_detected(classifier, movies):
    params, videos, metas = movies
    clean = mnist_identity_metrics(_to_model(videos), classifier[0])
    bad = mnist_identity_metrics(_to_model(_swapped(params, videos, metas, FRAMES // 2)), classifier[0])
    assert bad["identity_persistence"] < clean["identity_persistence"] - 0.4
    assert bad["label_agreement"] < clean["label_agreement"] - 0.15
    assert bad["feature_drift"] > clean["feature_drift"] + 1.0


def test_blank_frames_lower_valid_fraction_only(classifier, movies):
    _, videos, _ = movies
    blanked = videos.copy()
    blanked[:, ::4] = 0
    clean = mnist_identity_metrics(_to_model(videos), classifier[0])
    m = mnist_identity_metrics(_to_model(blanked), classifier[0])
    assert m["valid_frame_fraction"] < clean["valid_frame_fraction"] - 0.05
    assert m["label_agreement"] > 0.95  # identity is still kept where digits are visible


def test_confident_frames_count_every_frame_and_reject_non_digits(classifier, movies):
    """A uniform grey frame is one frame-sized component that the CNN labels confidently: it must not
    count as a digit. Blurred digits lose confidence; blank frames count against the fraction."""
    params, videos, _ = movies
    clean = mnist_identity_metrics(_to_model(videos), classifier[0])
    # every frame is valid or not; the confident ones are a subset of the valid ones
    assert 0.3 < clean["confident_frame_fraction"] <= clean["valid_frame_fraction"]
    grey = mnist_identity_metrics(torch.zeros(4, 1, FRAMES, 64, 64), classifier[0])
    assert grey["valid_frame_fraction"] == 0.0 and grey["confident_frame_fraction"] == 0.0
    blanked = videos.copy()
    blanked[:, ::2] = 0
    half = mnist_identity_metrics(_to_model(blanked), classifier[0])
    assert half["confident_frame_fraction"] <= clean["confident_frame_fraction"] / 2 + 0.05
    smeared = torch.nn.functional.avg_pool3d(_to_model(videos), (1, 7, 7), stride=1, padding=(0, 3, 3))
    blurred = mnist_identity_metrics(smeared, classifier[0])
    assert blurred["confident_frame_fraction"] < clean["confident_frame_fraction"] / 2
