"""A small MNIST CNN for Moving MNIST metrics, trained by the project on its own digit source.

No pretrained download: :func:`load_digit_classifier` trains on the ``datagen.sources.mnist`` digits (by
default the built-in 5,000, "train" split = 4,500 digits) on the CPU in seconds, with random shifts of up to
2 px (crops around detected digits are not perfectly centred), and caches the weights as a torch state_dict in
the user cache, keyed by the sha256 of the digits and the training recipe; the cache is read with
``weights_only=True``. On the built-in "test" split (500 digits) it reaches about 97% (less data than MNIST's
60k, so below the >99% of a full MNIST CNN).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datagen.api import load_digits
from recipes.weights import cache_dir

RECIPE = {"arch": "s2cnn16-32-64", "epochs": 10, "batch": 128, "lr": 4e-3, "shift": 2, "seed": 0}


class DigitClassifier(nn.Module):
    """28x28 grey digit in [0, 1] -> 10 logits; ``features`` is the 64-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, stride=2, padding=2)  # 14x14
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)  # 7x7
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer offset in [-max_shift, max_shift]^2 (zero fill)."""
    n, _, h, w = x.shape
    pad = F.pad(x, [max_shift] * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return pad[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def train_digit_classifier(
    images: np.ndarray, labels: np.ndarray, recipe: dict[str, Any] = RECIPE
) -> nn.Module:
    """Train :class:`DigitClassifier` on uint8 ``(N, 28, 28)`` digits; deterministic for a given recipe.

    Runs on one CPU thread: these convolutions are too small to gain from more, and sharing cores makes
    multi-threaded training several times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(images, labels, recipe)
    finally:
        torch.set_num_threads(threads)


def _train(images: np.ndarray, labels: np.ndarray, recipe: dict[str, Any]) -> nn.Module:
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    model = DigitClassifier()
    x = torch.from_numpy(np.array(images, np.float32) / 255)[:, None]
    y = torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    steps = recipe["epochs"] * (len(x) // recipe["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps)
    model.train()
    for _ in range(recipe["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for lo in range(0, len(x) - recipe["batch"] + 1, recipe["batch"]):
            idx = order[lo : lo + recipe["batch"]]
            loss = F.cross_entropy(model(_random_shift(x[idx], recipe["shift"], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def load_digit_classifier(source: dict[str, Any] | None = None) -> DigitClassifier:
    """The classifier for a digit source descriptor (default: built-in train split), trained once, cached."""
    digits = load_digits(source or {"kind": "builtin", "split": "train"})
    key = f"{digits.descriptor['sha256'][:16]}-{'-'.join(f'{k}{v}' for k, v in sorted(RECIPE.items()))}"
    path = cache_dir("digit_classifier") / f"{key}.pt"
    model = DigitClassifier()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval().requires_grad_(False)
    trained = train_digit_classifier(digits.images, digits.labels)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(trained.state_dict(), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return trained.requires_grad_(False)


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    x = torch.from_numpy(np.array(images, np.float32) / 255)[:, None]
    return float((model(x).argmax(1).numpy() == labels).mean())
