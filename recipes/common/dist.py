"""Device choice and DDP set-up from torchrun's environment (RANK / WORLD_SIZE / LOCAL_RANK).

Small functions in the torchvision `references/classification/utils.py` style: the process group is started
only when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA); the rank layout is `pipelines.world.World`, the
same value the loaders split data by.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pipelines.world import World


def is_main(world: World) -> bool:
    """Rank 0: the process that logs, samples and writes checkpoints."""
    return world.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA when present; under torchrun a bare `cuda` means `cuda:LOCAL_RANK`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


def init_distributed(device_name: str) -> tuple[World, torch.device]:
    """Read torchrun's env, start the process group if needed and return (world, device)."""
    world = World.detect()
    device = resolve_device(device_name, world.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.world_size)
    return world, device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.world_size > 1:
        dist.barrier()


def mean_across_ranks(values: dict[str, float], world: World, device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (one all_reduce) so rank 0 logs the job's numbers."""
    if world.world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def gather_objects(obj: object, world: World) -> list[object]:
    """All ranks' copies of a small in-memory object (RNG states for the checkpoint), in rank order."""
    if world.world_size == 1:
        return [obj]
    out: list[object] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel when running under torchrun, the module itself otherwise."""
    if world.world_size == 1 or not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
