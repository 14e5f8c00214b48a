"""The reproduction report decides `passed` from measured metrics only."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_scale_steps_and_quick_are_checked_before_anything_runs(tmp_path, monkeypatch, capsys):
    ran = []

    def run(ctx):
        ran.append((ctx.scale, dict(ctx.steps), ctx.precision, ctx.compile))
        return r.Outcome(metrics={"score": 2.0})

    targets = lambda quick: {"score": r.Target("score", ">=", 1.0)}  # noqa: E731
    monkeypatch.setitem(r.PROTOCOLS, "toy", r.Protocol("toy", "toy", run, targets, stages=("train",)))
    monkeypatch.setattr(r, "PROTOCOL_MODULES", ())
    out = ["toy", "--out", str(tmp_path / "o")]
    for args, message in (  # the protocol's own limits: one line, exit 2
        (["--scale", "paper"], "runs at scale cpu, not 'paper'"),
        (["--steps", "eval=3"], "has no stage eval (its stages: train)"),
    ):
        assert r.main([*out, *args]) == 2
        assert message in capsys.readouterr().err
    for args, message in (  # malformed flags: argparse's usage error, exit 2
        (["--steps", "train=0"], "at least 1 step"),
        (["--steps", "train=3,train=4"], "names 'train' twice"),
        (["--scale", "huge"], "invalid choice"),
    ):
        with pytest.raises(SystemExit) as exit_:
            r.main([*out, *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert ran == [] and not (tmp_path / "o").exists()
    (tmp_path / "a-file").write_text("someone's notes\n")
    for flag in ("--out", "--data-root"):  # a file where a folder should go: one line, the file untouched
        args = ["toy", "--out", str(tmp_path / "o"), flag, str(tmp_path / "a-file")]
        assert r.main(args) == 2
        err = capsys.readouterr().err
        assert f"{flag} {tmp_path / 'a-file'} is a file, not a folder" in err and err.count("\n") == 1
    assert ran == [] and (tmp_path / "a-file").read_text() == "someone's notes\n"
    assert r.main([*out, "--steps", "train=7", "--no-compile"]) == 0
    assert ran == [("cpu", {"train": 7}, "float32", False)]
    assert json.loads((tmp_path / "o" / "report.json").read_text())["scale"] == "cpu"


def test_quick_belongs_to_the_cpu_scale(tmp_path, monkeypatch):
    targets = lambda quick: {}  # noqa: E731
    proto = r.Protocol("toy", "toy", lambda ctx: r.Outcome(), targets, scales=("cpu", "paper"))
    monkeypatch.setitem(r.PROTOCOLS, "toy", proto)
    monkeypatch.setattr(r, "PROTOCOL_MODULES", ())
    with pytest.raises(r.DatagenError, match="--quick is the CPU scale"):
        r.reproduce("toy", tmp_path, quick=True, scale="paper")


def test_a_stage_compiles_on_cuda_and_where_its_protocol_asks_on_cpu_never_with_no_compile(tmp_path):
    seen = {
        (device, no_compile, on_cpu): r.Context(tmp_path, False, device, compile=not no_compile).compiles(
            on_cpu
        )
        for device in ("cpu", "cuda:1")
        for no_compile in (False, True)
        for on_cpu in (False, True)
    }
    assert {k for k, v in seen.items() if v} == {
        ("cpu", False, True),
        ("cuda:1", False, False),
        ("cuda:1", False, True),
    }


@given(
    st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.integers(1, 10**9), min_size=1)
)
def test_parse_steps_round_trips(steps):
    text = ",".join(f"{k}={v}" for k, v in steps.items())
    assert r.parse_steps(text) == steps
    assert r.parse_steps(text.replace(",", " , ").replace("=", " = ")) == steps


@given(st.text(max_size=30))
def test_parse_steps_gives_counts_or_a_value_error(text):
    try:
        steps = r.parse_steps(text)
    except ValueError as exc:
        assert "--steps" in str(exc)
    else:
        assert steps and all(k.isidentifier() and isinstance(v, int) and v >= 1 for k, v in steps.items())
