"""The reproduction report decides `passed` from measured metrics only."""

import json

import pytest

from recipes import reproduce as r


def test_check_targets_compares_dotted_metrics():
    targets = {
        "one_ball": r.Target("stage1.one_ball_fraction", ">=", 0.9),
        "mse": r.Target("stage2.mse_ratio", "<=", 1.25),
        "missing": r.Target("stage2.nothing", ">=", 0.0),
        "nan": r.Target("stage2.nan", "<", 1.0),
        "flag": r.Target("stage2.flag", ">=", 0.0),
    }
    metrics = {
        "stage1": {"one_ball_fraction": 0.95},
        "stage2": {"mse_ratio": 1.3, "nan": float("nan"), "flag": True},
    }
    assert r.check_targets(metrics, targets) == {
        "one_ball": True,
        "mse": False,
        "missing": False,
        "nan": False,
        "flag": False,
    }


def test_bad_op_is_refused():
    with pytest.raises(ValueError):
        r.Target("a", "==", 1.0)


def test_reproduce_writes_report(tmp_path, monkeypatch):
    def run(ctx):
        return r.Outcome(steps={"stage1": 3}, metrics={"score": 2.0 if ctx.quick else 0.5})

    proto = r.Protocol("toy", "a toy protocol", run, lambda quick: {"score": r.Target("score", ">=", 1.0)})
    monkeypatch.setitem(r.PROTOCOLS, "toy", proto)
    monkeypatch.setattr(r, "PROTOCOL_MODULES", ())
    assert r.main(["toy", "--out", str(tmp_path / "q"), "--quick"]) == 0
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["passed"] == {"score": True} and report["quick"] is True
    assert set(report) >= {"protocol", "quick", "device", "seconds", "steps", "metrics", "targets", "passed"}
    assert r.main(["toy", "--out", str(tmp_path / "f")]) == 1
    assert r.main(["nope", "--out", str(tmp_path / "n")]) == 2


@pytest.mark.integration
def test_module_cli_sees_the_registered_protocols():
    # `python -m` runs this file as __main__; the protocols register with the imported recipes.reproduce
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "recipes.reproduce", "--list"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "glo-balls:" in res.stdout and "framegan-1ball:" in res.stdout
