"""One training run's context: world/device, run directory, recorded config, logger, checkpoint save/resume.

`start_run(cfg)` does the set-up every recipe repeats (torchrun env, seeding with seed + rank, run dir,
`config.yaml`, reading the resume checkpoint once) and returns a `Run`; the recipe's own loop then calls
`run.restore(...)`, `run.autocast()`, `run.due(step, every)`, `run.log(...)`, `run.save(...)`, `run.close()`.

Draw an iteration's training noise from `run.step_noise(step)`: a torch.Generator seeded by a pure function
of (seed, rank, step), so a resumed run draws exactly the noise an uninterrupted one would, with no generator
state in the checkpoint. Never use the global torch RNG for training noise: creating a DataLoader iterator
consumes a global draw, so global-RNG noise cannot resume bitwise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipes.common import ckpt
from recipes.common.config import TrainConfig, config_to_dict, save_config
from recipes.common.dist import (
    World,
    barrier,
    cleanup_distributed,
    gather_objects,
    init_distributed,
    is_main,
    mean_across_ranks,
)
from recipes.common.log import MetricLogger
from recipes.common.runtime import autocast, check_cpu_compiler, seed_everything


@dataclasses.dataclass
class Run:
    cfg: TrainConfig
    world: World
    device: torch.device
    run_dir: Path
    logger: MetricLogger
    resume_state: dict[str, Any] | None = None  # the checkpoint to resume from, loaded once
    resume_path: Path | None = None
    t_start: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def is_main(self) -> bool:
        return is_main(self.world)

    def step_noise(self, step: int) -> torch.Generator:
        """The generator of iteration `step`'s training noise on this rank (see :func:`step_noise`)."""
        return step_noise(self.cfg.seed, self.world.rank, step, self.device)

    def autocast(self):
        return autocast(self.device, self.cfg.precision)

    @staticmethod
    def due(step: int, every: int) -> bool:
        """True every `every` steps (never when `every` <= 0)."""
        return every > 0 and step > 0 and step % every == 0

    def after_step(
        self,
        step: int,
        metrics: Mapping[str, float],
        *,
        epoch: int,
        samples: Callable[[], None],
        checkpoint: Callable[[], None],
    ) -> bool:
        """The periodic work of every recipe after an optimizer step: log, samples, checkpoint.

        Returns True once `max_steps` is reached (the recipe then leaves its loop).
        """
        if self.due(step, self.cfg.log_every):
            self.log(step, metrics, epoch=epoch)
        if self.due(step, self.cfg.sample_every):
            samples()
        if self.due(step, self.cfg.ckpt_every):
            checkpoint()
        return bool(self.cfg.max_steps) and step >= self.cfg.max_steps

    def log(self, step: int, metrics: Mapping[str, float], *, epoch: int | None = None) -> None:
        """Average the metrics over ranks (collective: call on every rank) and write them on rank 0."""
        metrics = mean_across_ranks(dict(metrics), self.world, self.device)
        self.logger.log(step, metrics, epoch=epoch)

    def restore(
        self,
        *,
        models: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        scaler: torch.amp.GradScaler | None,
        loader: Any = None,
    ) -> tuple[int, int, dict[str, Any]]:
        """Load the resume checkpoint (if any) into live objects; returns (step, epoch, extra)."""
        state = self.resume_state
        if state is None:
            return 0, 0, {}
        ckpt.restore_checkpoint(
            state,
            models=models,
            optimizers=optimizers,
            scaler=scaler,
            rank=self.world.rank,
        )
        if loader is not None and state["loader"]:
            # rank 0's position is every rank's: the loaders give each rank the same number of samples
            loader.load_state_dict({**state["loader"], "rank": self.world.rank})
        if self.is_main:
            print(f"resumed from {self.resume_path} at step {state['step']}", flush=True)
        return state["step"], state["epoch"], state["extra"]

    def save(
        self,
        *,
        step: int,
        epoch: int,
        models: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        scaler: torch.amp.GradScaler | None,
        loader: Any = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Checkpoint (collective: every rank contributes its RNG state; rank 0 writes). Returns the path."""
        rngs = gather_objects(ckpt.rng_state(), self.world)
        path = ckpt.checkpoint_path(self.run_dir, step)
        if self.is_main:
            state = ckpt.build_checkpoint(
                models=models,
                optimizers=optimizers,
                scaler=scaler,
                step=step,
                epoch=epoch,
                loader_state=loader.state_dict() if loader is not None else None,
                rng=rngs,
                config=config_to_dict(self.cfg),
                extra=extra,
            )
            ckpt.save_checkpoint(state, path)
        barrier(self.world)
        return path

    def close(self) -> None:
        self.logger.close()
        cleanup_distributed()


def step_noise(seed: int, rank: int, step: int, device: torch.device | str) -> torch.Generator:
    """A generator seeded by a pure function of (seed, rank, step), on `device`.

    Chosen over one checkpointed generator per run: nothing to save or restore (a resumed run draws what an
    uninterrupted one would whatever it drew before), a CUDA run's checkpoint needs no CUDA generator state
    to resume on another device, and a run resumed on more ranks still draws different noise per rank (a
    checkpointed per-rank state has no entry for the new ranks). Cost: one SeedSequence per step (~10 us).
    """
    state = np.random.SeedSequence((seed, rank, step)).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def start_run(cfg: TrainConfig) -> Run:
    """Set up device/DDP, seed, the run dir and `config.yaml`, and load the checkpoint named by cfg.resume."""
    world, device = init_distributed(cfg.device)
    if cfg.compile and device.type == "cpu":
        check_cpu_compiler()  # before anything is written: --compile on CPU needs a C++ compiler
    seed_everything(cfg.seed, world.rank)
    run_dir = Path(cfg.out_dir)
    resume_path = ckpt.resolve_resume(cfg.resume, run_dir)
    state = ckpt.load_checkpoint(resume_path) if resume_path is not None else None
    if is_main(world):
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = MetricLogger(
        run_dir, enabled=is_main(world), resume_step=state["step"] if state is not None else None
    )
    return Run(
        cfg=cfg,
        world=world,
        device=device,
        run_dir=run_dir,
        logger=logger,
        resume_state=state,
        resume_path=resume_path,
    )
