"""`datagen balls` end to end through the real CLI: stores, errors, Dask clusters, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from datagen.cli import main
from datagen.jobs import JOURNAL
from datagen.store.manifest import MANIFEST, load_manifest

DATAGEN = [sys.executable, "-m", "datagen"]


def hashes(out: Path) -> dict[str, str]:
    return {s["path"]: s["sha256"] for s in load_manifest(out)["shards"]}


def run(*args: str) -> int:
    return main([str(a) for a in args])


def test_balls_store_info_verify_preview(tmp_path, capsys):
    out = tmp_path / "b"
    assert (
        run(
            "balls",
            "--n",
            40,
            "--frames",
            12,
            "--shard-size",
            16,
            "--seed",
            3,
            "--out",
            out,
            "--format",
            "both",
            "--workers",
            0,
            "--quiet",
        )
        == 0
    )
    m = load_manifest(out)
    assert m["params"]["n_balls"] == 3 and m["sample"]["video"]["shape"] == [12, 30, 30, 1]
    assert m["totals"]["wds"]["n_samples"] == m["totals"]["hdf5"]["n_samples"] == 40
    assert run("verify", out) == 0
    assert run("info", out) == 0
    assert "balls v2" in capsys.readouterr().out
    for name in ("p.gif", "p.png"):
        assert run("preview", out, "--out", tmp_path / name, "--count", 4) == 0
    with Image.open(tmp_path / "p.gif") as gif:  # a 2 x 2 grid of clips, one image per frame
        assert gif.n_frames == 12 and gif.width == gif.height
    with Image.open(tmp_path / "p.png") as png:  # 4 filmstrips of 12 frames, one under the other
        assert png.width == 3 * png.height
    (out / "balls-000001.tar").write_bytes(b"\0" * 512)
    assert run("verify", out) == 1
    assert "balls-000001.tar" in capsys.readouterr().err


def test_seed_is_drawn_recorded_and_reused_on_resume(tmp_path):
    seeds = []
    for name in ("a", "b"):
        assert run("balls", "--n", 8, "--frames", 4, "--out", tmp_path / name, "--workers", 0, "--quiet") == 0
        seeds.append(load_manifest(tmp_path / name)["seed"])
    assert seeds[0] != seeds[1] and all(0 <= s < 2**32 for s in seeds)  # drawn afresh (1 in 4e9 alike)
    out, seed = tmp_path / "a", seeds[0]
    assert run("balls", "--n", 8, "--frames", 4, "--out", out, "--workers", 0, "--quiet", "--resume") == 0
    assert load_manifest(out)["seed"] == seed


@pytest.mark.integration
@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "--n"),
        (["--size", "-3"], "size"),
        (["--frames", "0"], "frames"),
        (["--radius", "6"], "radius"),
        (["--balls", "0"], "ball"),
        (["--format", "zip"], "--format"),
        (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach Dask scheduler"),
        (["--bogus"], "No such option"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "b"
    proc = subprocess.run(
        [*DATAGEN, "balls", "--out", str(out), "--quiet", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not out.exists() or not any(out.iterdir()) or message.startswith("cannot reach")


@pytest.mark.integration
def test_out_in_the_way(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    proc = subprocess.run(
        [*DATAGEN, "balls", "--n", "4", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not empty" in proc.stderr
    (tmp_path / "file").write_text("x")
    proc = subprocess.run(
        [*DATAGEN, "balls", "--n", "4", "--out", str(tmp_path / "file"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() != 0:  # root ignores permission bits
        proc = subprocess.run(
            [*DATAGEN, "balls", "--n", "4", "--out", str(ro / "x"), "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and "cannot write" in proc.stderr
    assert (out / "keep.txt").read_text() == "x"


@pytest.mark.integration
def test_identical_bytes_across_workers_and_a_real_dask_cluster(tmp_path):
    common = [
        "balls",
        "--n",
        60,
        "--frames",
        10,
        "--shard-size",
        7,
        "--seed",
        11,
        "--quiet",
        "--format",
        "both",
    ]
    assert run(*common, "--out", tmp_path / "w0", "--workers", 0) == 0
    assert run(*common, "--out", tmp_path / "w2", "--workers", 2) == 0
    reference = hashes(tmp_path / "w0")
    assert hashes(tmp_path / "w2") == reference
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    address,
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        assert run(*common, "--out", tmp_path / "cluster", "--scheduler", address) == 0
        assert hashes(tmp_path / "cluster") == reference
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


@pytest.mark.integration
def test_sigkill_mid_run_then_resume_gives_identical_store(tmp_path):
    args = [
        "balls",
        "--n",
        "12000",
        "--frames",
        "20",
        "--shard-size",
        "100",
        "--seed",
        "5",
        "--quiet",
        "--workers",
        "2",
    ]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*DATAGEN, *args, "--out", str(out)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    journal = out / JOURNAL
    deadline = time.time() + 120
    while time.time() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST).exists(), "run finished before it could be killed"
    done = len(journal.read_text().splitlines())
    assert 0 < done < 120
    assert subprocess.run([*DATAGEN, *args, "--out", str(out), "--resume"], timeout=300).returncode == 0
    assert subprocess.run([*DATAGEN, *args, "--out", str(tmp_path / "clean")], timeout=300).returncode == 0
    assert hashes(out) == hashes(tmp_path / "clean")
    assert (out / MANIFEST).read_bytes() == (tmp_path / "clean" / MANIFEST).read_bytes()
    assert not list(out.glob(".*tmp")) and not journal.exists()
