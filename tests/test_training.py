"""Shared training plumbing: config resolution, checkpoints, RNG capture, logs, sample files, CLI errors."""

from __future__ import annotations

import csv
import dataclasses
import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from recipes.common import ckpt
from recipes.common.cli import error_line, run_cli
from recipes.common.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    build_parser,
    config_from_args,
    save_config,
)
from recipes.common.log import MetricLogger
from recipes.common.run import step_noise
from recipes.common.samples import save_image_grid, save_video_gif


@dataclasses.dataclass
class ToyConfig(TrainConfig):
    lr: float = 1e-3
    k: int = 4
    betas: tuple[float, float] = (0.5, 0.999)
    mode: str = "mean"
    steps_opt: int | None = None


PRESETS = {"big": {"k": 48, "lr": 3e-4}}
SMOKE = {"k": 2, "device": "cpu"}


def resolve(argv: list[str]) -> ToyConfig:
    parser = build_parser(ToyConfig, presets=PRESETS)
    return config_from_args(ToyConfig, parser.parse_args(argv), presets=PRESETS, smoke=SMOKE)


def test_config_precedence_defaults_preset_smoke_yaml_flags(tmp_path: Path) -> None:
    assert resolve([]) == ToyConfig()
    (tmp_path / "c.yaml").write_text("lr: 1\nk: 7\nbetas: [0.1, 0.2]\n")
    cfg = resolve(["--preset", "big", "--smoke", "--config", str(tmp_path / "c.yaml"), "--k", "9"])
    assert cfg.k == 9  # flag beats YAML beats smoke beats preset
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # YAML int accepted for a float field
    assert cfg.betas == (0.1, 0.2) and cfg.device == "cpu" and cfg.preset == "big" and cfg.smoke
    assert resolve(["--preset", "big"]).k == 48
    assert resolve(["--steps-opt", "none"]).steps_opt is None
    assert resolve(["--steps-opt", "3", "--no-compile"]).steps_opt == 3


def test_config_rejects_unknown_and_mistyped_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'lrr'.*did you mean 'lr'"):
        apply_overrides(ToyConfig(), {"lrr": 0.1}, "test")
    for bad in ({"k": 1.5}, {"k": True}, {"lr": "fast"}, {"compile": 1}, {"betas": [0.5]}, {"k": None}):
        with pytest.raises(ConfigError, match="expected"):
            apply_overrides(ToyConfig(), bad, "test")
    (tmp_path / "bad.yaml").write_text("epochs: ten\n")
    with pytest.raises(ConfigError, match="'epochs' from .*bad.yaml: expected int"):
        resolve(["--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(ConfigError, match="unknown preset"):
        config_from_args(ToyConfig, {"preset": "nope"}, presets=PRESETS)
    with pytest.raises(SystemExit):  # argparse: mistyped flag -> usage + one error line, exit 2
        resolve(["--k", "four"])


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    cfg = dataclasses.replace(ToyConfig(), k=5, betas=(0.1, 0.9))
    save_config(cfg, tmp_path / "config.yaml")
    assert config_from_args(ToyConfig, {"config": str(tmp_path / "config.yaml")}) == cfg
    assert not list(tmp_path.glob(".*tmp"))


def test_cli_error_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("batchsize: 3\n")
    code = (
        "import sys; sys.argv[0] = 'toy'; from tests.test_training import ToyConfig, PRESETS;"
        "from recipes.common.cli import run_cli; from recipes.common.config import build_parser;"
        f"run_cli(print, build_parser(ToyConfig), ToyConfig, argv=['--config', {str(tmp_path / 'c.yaml')!r}])"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "did you mean 'batch_size'" in res.stderr


def test_cli_turns_the_file_systems_refusals_into_one_line_exit_2(tmp_path: Path, capsys) -> None:
    """A full disk, no permission or a file in a folder's way, raised from deep inside a run (not our own
    message): the reason and the path on one line, not a traceback or an errno."""

    def full_disk(cfg: ToyConfig) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "ckpt.pt"))

    parser = build_parser(ToyConfig)
    with pytest.raises(SystemExit) as exit_:
        run_cli(full_disk, parser, ToyConfig, argv=[])
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2
        and err == f"{parser.prog}: error: No space left on device: {tmp_path / 'ckpt.pt'}\n"
    )
    assert error_line("toy", FileNotFoundError("no store at x")) == "toy: error: no store at x"


def test_run_cli_calls_main_with_resolved_config() -> None:
    seen = []
    run_cli(seen.append, build_parser(ToyConfig), ToyConfig, argv=["--lr", "0.5"])
    assert seen == [dataclasses.replace(ToyConfig(), lr=0.5)]


def test_rng_state_round_trip() -> None:
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def test_checkpoint_weights_only_unwrapped_atomic(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    compiled = torch.compile(model)  # wrapper only; nothing is compiled until called
    assert ckpt.unwrap(compiled) is model
    cfg = ToyConfig()
    state = ckpt.build_checkpoint(
        models={"g": compiled},
        optimizers={"g": opt},
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        step=7,
        epoch=1,
        loader_state={"epoch": 1, "sample_in_epoch": 12},
        rng=[ckpt.rng_state()],
        config=dataclasses.asdict(cfg) | {"betas": list(cfg.betas)},
    )
    path = ckpt.save_checkpoint(state, ckpt.checkpoint_path(tmp_path, 7))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt-000000007.pt"]
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # would raise on pickled objects
    assert set(loaded["models"]["g"]) == set(model.state_dict())  # no _orig_mod. / module. prefixes
    assert loaded["step"] == 7 and loaded["loader"]["sample_in_epoch"] == 12
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    ckpt.restore_checkpoint(
        ckpt.load_checkpoint(path), models={"g": fresh}, optimizers={"g": fresh_opt}, scaler=None
    )
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert ckpt.latest_step(tmp_path) == 7 and ckpt.latest_step(tmp_path / "empty") == 0
    assert ckpt.resolve_resume("auto", tmp_path / "empty") is None


def test_step_noise_is_a_function_of_seed_rank_and_step() -> None:
    def draw(seed: int, rank: int, step: int) -> torch.Tensor:
        return torch.randn(4, generator=step_noise(seed, rank, step, "cpu"))

    torch.manual_seed(123)  # the global RNG plays no part: a DataLoader iterator may have consumed it
    first = draw(0, 0, 5)
    torch.rand(10)
    assert torch.equal(first, draw(0, 0, 5))  # what a resumed run draws at step 5, whatever came before
    others = [draw(1, 0, 5), draw(0, 1, 5), draw(0, 0, 6), draw(0, 0, 4)]  # other seed, rank, steps
    assert all(not torch.allclose(first, o) for o in others)


def test_load_trained_builds_from_the_stored_config(tmp_path: Path) -> None:
    def build(cfg: ToyConfig, extra) -> dict[str, torch.nn.Module]:
        return {"g": torch.nn.Linear(cfg.k, int(extra["out"]))}

    trained = torch.nn.Linear(6, 2)
    cfg = ToyConfig(k=6)
    state = ckpt.build_checkpoint(
        models={"g": trained}, optimizers={}, scaler=None, step=3, epoch=0, loader_state=None, rng=[],
        config=dataclasses.asdict(cfg) | {"betas": list(cfg.betas)}, extra={"out": 2},
    )  # fmt: skip
    path = ckpt.save_checkpoint(state, tmp_path / "ckpt.pt")
    models, loaded_cfg, extra = ckpt.load_trained(path, ToyConfig(), build)  # defaults say k=4: stored k wins
    assert loaded_cfg.k == 6 and extra == {"out": 2}
    assert torch.equal(models["g"].weight, trained.weight) and torch.equal(models["g"].bias, trained.bias)
    with pytest.raises(ValueError, match="needs"):
        ckpt.load_trained(path, ToyConfig(), lambda c, e: {"g": build(c, e)["g"], "d": torch.nn.Linear(1, 1)})


def test_checkpoint_unwraps_ddp(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = torch.nn.Linear(2, 2)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert ckpt.unwrap(torch.compile(ddp)) is model
        state = ckpt.build_checkpoint(
            models={"d": ddp},
            optimizers={},
            scaler=None,
            step=0,
            epoch=0,
            loader_state=None,
            rng=[],
            config={},
        )
        assert set(state["models"]["d"]) == {"weight", "bias"}
    finally:
        dist.destroy_process_group()


def test_metric_logger_widens_and_trims_on_resume(tmp_path: Path) -> None:
    log = MetricLogger(tmp_path, echo=False)
    log.log(1, {"d_loss": 1.0})
    log.log(2, {"d_loss": 0.5, "g_loss": 2.0})
    log.log(3, {"d_loss": 0.25, "g_loss": 1.0})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert (
        [r["step"] for r in rows] == ["1", "2", "3"] and rows[0]["g_loss"] == "" and rows[2]["g_loss"] == "1"
    )
    MetricLogger(tmp_path, resume_step=2, echo=False).log(3, {"d_loss": 9.0})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(r["step"], r["d_loss"]) for r in rows] == [("1", "1"), ("2", "0.5"), ("3", "9")]
    off = tmp_path / "off"
    MetricLogger(off, enabled=False).log(1, {"x": 1.0})
    assert not off.exists()


def test_sample_grid_png_and_gif(tmp_path: Path) -> None:
    imgs = torch.linspace(-1, 1, 5 * 8 * 6).reshape(5, 1, 8, 6)
    save_image_grid(imgs, tmp_path / "g.png", nrow=3)
    im = Image.open(tmp_path / "g.png")
    assert im.size == (3 * 6 + 2, 2 * 8 + 1) and im.mode == "L"
    px = np.asarray(im)
    assert px[0, 0] == 0 and px[7, 6 + 1 + 5] == round((imgs[1, 0, 7, 5].item() + 1) * 127.5)
    vids = torch.rand(4, 3, 5, 8, 8) * 2 - 1
    save_video_gif(vids, tmp_path / "v.gif")
    gif = Image.open(tmp_path / "v.gif")
    assert gif.n_frames == 5 and gif.size == (17, 17)


def test_config_yaml_is_plain(tmp_path: Path) -> None:
    save_config(ToyConfig(), tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert data["betas"] == [0.5, 0.999] and list(data)[0] == "out_dir"


def test_recipes_pass_the_data_order_to_the_loader(tmp_path: Path) -> None:
    """`--interleave 1` gives the block-local order, which resumes checkpoints saved before interleaving."""
    from types import SimpleNamespace

    from recipes.common.data import build_loader, smoke_store

    store = smoke_store(tmp_path / "s", params={"n_balls": 1, "size": 16, "frames": 4}, n=16)
    run = SimpleNamespace(device=torch.device("cpu"))
    for interleave in (12, 1):
        cfg = dataclasses.replace(resolve([]), data=str(store), batch_size=4, interleave=interleave)
        assert build_loader(cfg, run, mode="clip").dataset.interleave == interleave
    assert resolve(["--interleave", "1"]).interleave == 1


def test_a_store_smaller_than_one_batch_is_refused(tmp_path: Path) -> None:
    """With incomplete batches dropped, every epoch of such a store is empty and training would loop over
    epochs without a step: one clear error instead."""
    from types import SimpleNamespace

    from recipes.common.data import build_loader, smoke_store

    store = smoke_store(tmp_path / "s", params={"n_balls": 1, "size": 16, "frames": 4}, n=6)
    run = SimpleNamespace(device=torch.device("cpu"))
    cfg = dataclasses.replace(resolve([]), data=str(store), batch_size=8)
    with pytest.raises(ConfigError, match="6 samples per rank, fewer than one batch of 8"):
        build_loader(cfg, run, mode="clip")
    assert len(build_loader(cfg, run, mode="clip", drop_last=False)) == 1
    assert len(build_loader(dataclasses.replace(cfg, batch_size=6), run, mode="clip")) == 1
