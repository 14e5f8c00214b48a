"""TGAN under DDP: two real gloo processes train with different data and stay bitwise identical.

BN gamma clipping bounds each critic gamma by sqrt(running_var), and each rank's running statistics come from
its own batches; unless those statistics are made equal before clipping, the clipped gammas (parameters)
differ between ranks after the first SVC iteration and the replicas drift apart.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.world import World
from recipes.common.dist import wrap_ddp
from recipes.common.run import step_noise
from recipes.common.runtime import make_scaler
from recipes.train_tgan import TGANConfig, build_models, make_optimizer, train_iteration

pytestmark = pytest.mark.integration  # two torch.distributed (gloo) processes

STEPS = 10  # SVC + gamma clipping at iterations 5 and 10
CFG = TGANConfig(frames=4, z_dim=8, gen_ch=16, critic_ch=4, batch_size=3, svc_every=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, out: str, n_critic: int, r1_gamma: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        world, device = World(rank, world_size), torch.device("cpu")
        torch.manual_seed(0)  # same initial weights on every rank (DDP would broadcast rank 0's anyway)
        gen, critic = build_models(CFG, channels=1, size=16)
        opt_g, opt_d = make_optimizer(gen, CFG), make_optimizer(critic, CFG)
        gen_t, critic_t = wrap_ddp(gen, world, device), wrap_ddp(critic, world, device)
        data = torch.Generator().manual_seed(100 + rank)  # each rank sees different clips
        scaler = make_scaler(device, "float32")
        cfg = dataclasses.replace(CFG, n_critic=n_critic, r1_gamma=r1_gamma)
        for step in range(1, STEPS + 1):
            reals = [
                torch.rand(CFG.batch_size, 1, CFG.frames, 16, 16, generator=data) * (1 + rank) - 1
                for _ in range(n_critic)
            ]
            train_iteration(
                gen_t,
                critic_t,
                opt_g,
                opt_d,
                scaler,
                [(real, None) for real in reals],
                cfg=cfg,
                step=step,
                noise=step_noise(CFG.seed, rank, step, device),
            )
        state = {
            **{f"gen.{k}": v for k, v in gen.named_parameters()},
            **{f"critic.{k}": v for k, v in critic.named_parameters()},
            **{f"critic.{k}": v for k, v in critic.named_buffers() if "running" in k},
        }
        torch.save({k: v.detach().clone() for k, v in state.items()}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# n_critic 2: a critic-only update (G forward, no grad) each step; r1_gamma: the penalty's double backward
@pytest.mark.parametrize(("n_critic", "r1_gamma"), [(1, 0.0), (2, 0.0), (2, 10.0)])
def test_two_gloo_ranks_keep_identical_weights_through_svc(
    tmp_path: Path, n_critic: int, r1_gamma: float
) -> None:
    # spawn: a forked child of this multi-threaded test process can hang
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path), n_critic, r1_gamma), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0.keys() == r1.keys()
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"ranks differ in {differ}"
    # the test means something: gamma clipping did bind (gammas start at 1, far above sqrt(running_var))
    gammas = [
        v for k, v in r0.items() if k.startswith("critic.features") and k.endswith("weight") and v.ndim == 1
    ]
    assert gammas and all(float(g.max()) < 0.5 for g in gammas)
