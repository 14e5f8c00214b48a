"""bench/gpu_protocols.sh, the prepared device command, with a stand-in python3 (the GPU run itself needs a
GPU; `DEVICE=cpu` runs it for real, see the README): what it runs, what it brings back, how it fails."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_protocols.sh"

# records its arguments; as `-m recipes.reproduce` writes a report and a metrics.csv where --out says
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1" = "-m" ]; then
    out=$(echo "$*" | sed -E 's/.*--out ([^ ]+).*/\\1/')
    mkdir -p "$out/stage1" "$out/stage2/samples"
    echo '{"protocol": "x"}' > "$out/report.json"
    echo 'step,steps_per_s' > "$out/stage1/metrics.csv"
    echo png > "$out/stage2/samples/videos-000000002.png"
    exit "${FAKE_RC:-0}"
fi
"""


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    full_env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "OUT": str(tmp_path / "out"),
        "RUN_DIR": str(tmp_path / "run"),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=60, cwd=tmp_path
    )


@pytest.mark.integration
def test_runs_the_paper_scale_protocol_on_cuda_and_brings_back_its_files(tmp_path: Path) -> None:
    res = _run(tmp_path, "framegan-1ball")
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    reproduce = [c for c in calls if c.startswith("-m recipes.reproduce")]
    assert reproduce == [
        f"-m recipes.reproduce framegan-1ball --out {tmp_path / 'run'} --scale paper --device cuda "
        "--steps stage1=2000,stage2=1500"
    ]
    out = tmp_path / "out"
    assert json.loads((out / "framegan-1ball-report.json").read_text()) == {"protocol": "x"}
    assert (out / "framegan-1ball-stage1-metrics.csv").is_file() and (
        out / "framegan-1ball-sample.png"
    ).is_file()
    assert "rc=0" in (out / "framegan-1ball.log").read_text()
    assert all(p.parent == out for p in out.rglob("*"))  # flat: the device tool brings back 2 levels at most


@pytest.mark.integration
def test_steps_and_device_can_be_set_and_a_failed_run_fails_the_script(tmp_path: Path) -> None:
    res = _run(tmp_path, "tgan-mnist", STEPS="train=50", DEVICE="cpu", FAKE_RC="1")
    assert res.returncode == 1
    calls = (tmp_path / "calls").read_text()
    assert "--scale paper --device cpu --steps train=50" in calls


@pytest.mark.integration
@pytest.mark.parametrize("args", [(), ("nope",)])
def test_a_missing_or_unknown_protocol_is_refused(tmp_path: Path, args: tuple[str, ...]) -> None:
    res = _run(tmp_path, *args)
    assert res.returncode != 0 and "protocol" in res.stderr
    assert not (tmp_path / "calls").exists()  # nothing ran
