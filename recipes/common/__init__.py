"""Shared training plumbing for every recipe (`train_framegan.py`, `train_tgan.py`, `train_glo.py`).

Modules (import them explicitly; this file stays free of imports):

- `config`  `TrainConfig` base dataclass, `build_parser`, `config_from_args`, `apply_overrides`,
            `ConfigError`: defaults < preset < --smoke < YAML (`--config`) < flags; unknown keys and
            mistyped values fail.
- `run`     `start_run(cfg) -> Run`: torchrun env, seed + rank, run dir, `config.yaml`, resume checkpoint;
            `Run.restore / save / log / due / autocast / step_noise / close`. Training noise comes from
            `run.step_noise(step)` (a pure function of seed, rank, step), never the global RNG (see run.py).
- `ckpt`    checkpoint dict of tensors + primitives (weights_only=True), DDP/compile unwrapped, atomic save.
- `dist`    `init_distributed` (gloo on CPU, nccl on CUDA; the rank layout is `pipelines.world.World`),
            `is_main`, `wrap_ddp`, `mean_across_ranks`.
- `runtime` `seed_everything`, `autocast`, `make_scaler` (one AMP path), `maybe_compile` (when asked, any
            device), `check_cpu_compiler` (inductor's C++ compiler; `start_run` calls it under --compile).
- `log`     `MetricLogger`: `metrics.csv` (+ TensorBoard if installed), trimmed to the step on resume.
- `samples` `save_image_grid` (PNG), `save_video_gif` (animated GIF) from tensors in [-1, 1].
- `data`    `build_loader(cfg, run, mode=..., frames=...)` over `pipelines.VideoDataset` + `make_loader`,
            `epoch_batches` (resumable epoch loop), `smoke_store()` (tiny generated balls store for --smoke).
- `cli`     `run_cli(main, parser, cls, ...)`: parse, resolve the config, turn library errors into one line
            and exit code 2.

A recipe, top-down (torchvision references layout):

    @dataclass
    class MyConfig(TrainConfig):           # paper defaults, one commented field per knob
        lr: float = 2e-4
    PRESETS = {"authors": {...}}          # named override sets (e.g. the authors' code defaults)
    SMOKE = {"epochs": 1, "max_steps": 4, "batch_size": 4, "device": "cpu", ...}

    def main(cfg: MyConfig, loader=None) -> dict:
        run = start_run(cfg)
        loader = loader or build_loader(cfg, run, mode="clip", frames=16)
        model = ...; opt = ...; scaler = make_scaler(run.device, cfg.precision)
        step, epoch, extra = run.restore(models={"g": g}, optimizers={"g": opt}, scaler=scaler, loader=loader)
        resumed = run.resume_state is not None   # a resumed epoch keeps the loader's restored position
        for epoch, batch in epoch_batches(loader, epoch, cfg.epochs, resumed=resumed):
            z = torch.randn(len(batch["video"]), 100, generator=run.step_noise(step), device=run.device)
            with run.autocast():
                loss = ...
            scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); step += 1
            if run.due(step, cfg.log_every): run.log(step, {"loss": loss.item()}, epoch=epoch)
            if run.due(step, cfg.ckpt_every): run.save(step=step, epoch=epoch, models=..., optimizers=...,
                                                       scaler=scaler, loader=loader)
            if cfg.max_steps and step >= cfg.max_steps:
                break                             # after the step: the loader position matches the weights
        run.close()

    def get_args_parser(add_help=True): return build_parser(MyConfig, presets=PRESETS, add_help=add_help)
    if __name__ == "__main__": run_cli(main, get_args_parser(), MyConfig, presets=PRESETS, smoke=SMOKE)
"""
