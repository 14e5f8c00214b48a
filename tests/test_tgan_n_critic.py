"""TGAN `n_critic`: the default stays the authors' 1:1 loop; k critic updates (k batches) per G update."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from recipes.common.run import step_noise
from recipes.common.runtime import make_scaler, seed_everything
from recipes.train_tgan import TGANConfig, build_models, main, make_optimizer, train_step

SIZE, FRAMES, BATCH = 16, 4, 3
CFG = TGANConfig(
    device="cpu",
    epochs=1,
    batch_size=BATCH,
    frames=FRAMES,
    z_dim=8,
    gen_ch=16,
    critic_ch=4,
    log_every=1,
    sample_every=0,
    ckpt_every=0,
    optimizer="adam",
    lr=1e-3,
)


class ListLoader:
    """A fixed list of real batches as the recipe's loader; counts the batches it has handed out."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(123)
        self.videos = [torch.rand(BATCH, 1, FRAMES, SIZE, SIZE, generator=g) * 2 - 1 for _ in range(n)]
        self.dataset = [{"video": self.videos[0][0]}]  # video_shape reads the first clip
        self.served = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for v in self.videos:
            self.served += 1
            yield {"video": v}

    def state_dict(self) -> dict[str, Any]:
        return {}


def _run(tmp_path: Path, name: str, loader: ListLoader, **overrides: Any) -> dict[str, Any]:
    cfg = dataclasses.replace(CFG, out_dir=str(tmp_path / name), **overrides)
    main(cfg, loader=loader)
    return torch.load(tmp_path / name / "checkpoints" / f"ckpt-{cfg.max_steps:09d}.pt", weights_only=True)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_default_is_one_train_step_per_batch_bitwise(tmp_path: Path) -> None:
    """The default (n_critic 1) run equals the loop before the option: train_step on each batch in turn,
    step i with step_noise(seed, 0, i), from the models start_run's seed builds. SVC at iteration 5."""
    loader = ListLoader(6)
    state = _run(tmp_path, "run", loader, max_steps=6)
    assert loader.served == 6
    seed_everything(CFG.seed, 0)
    gen, critic = build_models(CFG, channels=1, size=SIZE)
    opt_g, opt_d = make_optimizer(gen, CFG), make_optimizer(critic, CFG)
    scaler = make_scaler(torch.device("cpu"), "float32")
    for i, real in enumerate(loader.videos, start=1):
        noise = step_noise(CFG.seed, 0, i, "cpu")
        train_step(gen, critic, opt_g, opt_d, scaler, real, cfg=CFG, step=i, noise=noise)
    for name, model in (("gen", gen), ("critic", critic)):
        for k, v in model.state_dict().items():
            assert torch.equal(v, state["models"][name][k]), (name, k)


@pytest.mark.parametrize("k", [2, 3])
def test_k_critic_updates_and_k_batches_per_g_update(tmp_path: Path, k: int) -> None:
    """4 iterations: 4 G updates and 4k critic updates (Adam's step counts), 4k batches consumed; SVC
    counts critic updates (every 5th), so its iterations are those holding update 5, 10, 15, ..."""
    loader = ListLoader(4 * k + 2)
    state = _run(tmp_path, "run", loader, max_steps=4, n_critic=k)
    assert loader.served == 4 * k
    opts = state["optimizers"]
    steps = {name: {int(s["step"]) for s in opt["state"].values()} for name, opt in opts.items()}
    assert steps == {"gen": {4}, "critic": {4 * k}}
    svc_iterations = [int(r["step"]) for r in _rows(tmp_path / "run") if r["sv_max_before_svc"]]
    assert svc_iterations == sorted({(u - 1) // k + 1 for u in range(5, 4 * k + 1, 5)})
    # the critic steps before the G step differ from the 1:1 run on the same batches
    one = _run(tmp_path, "one", ListLoader(4 * k), max_steps=4 * k)
    assert not torch.equal(state["models"]["gen"]["g0.net.0.weight"], one["models"]["gen"]["g0.net.0.weight"])


def test_resume_with_n_critic_is_bitwise(tmp_path: Path) -> None:
    """n_critic 3 over 8-batch epochs (an iteration spans the epoch boundary): 6 steps straight equal 3 +
    3 resumed, store loader position included."""
    from recipes.common.data import smoke_store
    from recipes.train_tgan import SMOKE_STORE_PARAMS

    store = smoke_store(tmp_path / "balls", params={**SMOKE_STORE_PARAMS, "size": SIZE}, n=32)
    cfg = dataclasses.replace(CFG, data=str(store), n_critic=3, epochs=4, batch_size=4, max_steps=6)
    main(dataclasses.replace(cfg, out_dir=str(tmp_path / "a")))
    main(dataclasses.replace(cfg, out_dir=str(tmp_path / "b"), max_steps=3, ckpt_every=3))
    main(dataclasses.replace(cfg, out_dir=str(tmp_path / "b"), resume="auto"))
    a, b = (torch.load(tmp_path / r / "checkpoints" / "ckpt-000000006.pt", weights_only=True) for r in "ab")
    for name in ("gen", "critic"):
        for k, v in a["models"][name].items():
            assert torch.equal(v, b["models"][name][k]), (name, k)
    assert a["loader"] == b["loader"] and a["epoch"] == b["epoch"]
    assert [r["loss_d"] for r in _rows(tmp_path / "a")] == [r["loss_d"] for r in _rows(tmp_path / "b")]
