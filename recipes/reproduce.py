"""Named reproduction protocols: make or reuse the data, train every stage, evaluate, say which targets hold.

    python -m recipes.reproduce --list
    python -m recipes.reproduce framegan-1ball --out runs/repro-fg1 --quick
    python -m recipes.reproduce tgan-mnist --out runs/repro-tgan --device cuda
    python -m recipes.reproduce framegan-1ball --out runs/fg1-paper --scale paper --device cuda \
        --steps stage1=4000,stage2=3000

Each protocol writes ``DIR/report.json``::

    {"protocol", "quick", "scale", "device", "seconds", "steps": {...}, "metrics": {...},
     "targets": {name: {"metric", "op", "value", "why"}}, "passed": {name: bool}, "all_passed": bool}

plus its sample PNG/GIFs. Targets are data, not code: each names a metric by its dotted path in
``metrics`` (``"stage1.one_ball_fraction"``), a comparison and a threshold; :func:`check_targets` decides
``passed`` from the measured metrics alone, so no protocol can declare itself passed. A target whose metric
is missing fails (a protocol that did not measure something did not show it). ``--quick`` runs a shortened
protocol (at most ~10 minutes on 2 CPU cores) with its own, stated weaker targets.

Scales: ``cpu`` (default) shrinks the papers' models and steps to fit 2 CPU cores; ``paper`` (the protocols
that offer it) runs the papers' model sizes, batch sizes and frame sizes, for a GPU (``--device cuda``: bf16
autocast and ``torch.compile`` unless ``--no-compile``), with the full targets. On CPU a protocol may compile
a stage where it measured a gain (framegan-3ball's full stage 2); ``--no-compile`` runs it eagerly.
``--steps stage=N,...`` sets a protocol's stage lengths (any scale): "as many epochs as fit" is a number of
steps chosen from the measured step rate, recorded in the report like every other setting.

Protocols live in ``recipes/protocols/`` (one module per recipe) and register here with
:func:`register`.
"""

from __future__ import annotations

import argparse
import importlib
import math
import operator
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datagen.errors import DatagenError
from datagen.store.atomic import write_json_atomic
from recipes.common.cli import USER_ERRORS, error_line

PROTOCOL_MODULES = (
    "recipes.protocols.framegan",
    "recipes.protocols.tgan",
    "recipes.protocols.glo",
    "recipes.protocols.cup",
)

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Target:
    """`metrics[metric] <op> value`, with the reason the threshold is what it is (paper figure, issue)."""

    metric: str
    op: str
    value: float
    why: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"target op must be one of {', '.join(OPS)}, got {self.op!r}")

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "op": self.op, "value": self.value, "why": self.why}


@dataclass(frozen=True)
class Context:
    """What a protocol run is given: where to write, how long to run, on what."""

    out: Path
    quick: bool
    device: str
    seed: int = 0
    data_root: Path | None = None  # where stores are made or reused (default: out / "data")
    scale: str = "cpu"  # "cpu" or "paper" (module docstring)
    steps: Mapping[str, int] = field(default_factory=dict)  # stage -> steps, overriding the protocol's
    compile: bool = True  # torch.compile on CUDA, and on CPU in the stages a protocol compiles (False: never)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def precision(self) -> str:
        """bf16 autocast on CUDA (the issue's AMP), float32 on CPU (CPU runs stay bitwise reproducible)."""
        return "bfloat16" if self.cuda else "float32"

    def stage_steps(self, stage: str, default: int) -> int:
        return int(self.steps.get(stage, default))

    def compiles(self, on_cpu: bool = False) -> bool:
        """Whether a stage trains through torch.compile: on CUDA, and on CPU where its protocol measured a
        gain (``on_cpu``); never under ``--no-compile``."""
        return self.compile and (self.cuda or on_cpu)

    @property
    def data_dir(self) -> Path:
        return self.data_root if self.data_root is not None else self.out / "data"


@dataclass
class Outcome:
    """What a protocol measured. `steps`: optimizer steps (and seconds) per stage; `metrics`: nested dict."""

    steps: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # sample images, GIFs, checkpoints (relative paths)


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    run: Callable[[Context], Outcome]
    targets: Callable[[bool], Mapping[str, Target]]  # quick -> targets
    stages: tuple[str, ...] = ()  # what --steps may set
    scales: tuple[str, ...] = ("cpu",)


SCALES = ("cpu", "paper")


PROTOCOLS: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    if protocol.name in PROTOCOLS:
        raise ValueError(f"protocol {protocol.name!r} registered twice")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def load_protocols() -> dict[str, Protocol]:
    """Import the protocol modules (importing registers them)."""
    for module in PROTOCOL_MODULES:
        importlib.import_module(module)
    return PROTOCOLS


def metric_value(metrics: Mapping[str, Any], path: str) -> float | None:
    """The number at dotted `path` in `metrics`, or None when absent or not a finite number."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        return None
    return float(node)


def check_targets(metrics: Mapping[str, Any], targets: Mapping[str, Target]) -> dict[str, bool]:
    """Which targets the measured metrics meet; a missing or non-finite metric fails its target."""
    passed = {}
    for name, t in targets.items():
        v = metric_value(metrics, t.metric)
        passed[name] = v is not None and OPS[t.op](v, t.value)
    return passed


def timed(steps: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and record its wall and process CPU seconds under ``steps[name]`` (a protocol's stages),
    and on a GPU its peak allocated memory (``torch.cuda.max_memory_allocated``, MiB)."""
    if _cuda_in_use():  # else CUDA starts inside fn, with its peak at zero
        sys.modules["torch"].cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    steps[name] = {
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }
    if _cuda_in_use():  # in use before fn or started by it (it stays initialised)
        import torch

        steps[name]["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _cuda_in_use() -> bool:
    """Whether this process has initialised CUDA (never initialises it: CPU runs stay CPU-only)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


# what may differ between the run recorded in a training folder and a protocol's rerun into it (out_dir: the
# folder itself, moved or copied elsewhere)
RESUMABLE_CHANGES = frozenset({"max_steps", "log_every", "ckpt_every", "sample_every", "resume", "out_dir"})


def check_resumable(cfg: Any, may_differ: frozenset[str] = frozenset()) -> int:
    """A training folder (`cfg.out_dir`) left by a run with other settings is refused, not resumed with
    mixed settings; more steps are fine (the recipes resume bitwise, so the rerun ends where an uninterrupted
    run would), the same steps re-evaluate the finished run, fewer are refused (e.g. --quick into a full run's
    folder). `cfg` as the recipe records it; `may_differ`: more fields a protocol's own stages change (GLO's
    evaluation records its run as stage "post"). A run bounded by epochs (max_steps 0) has its length in
    `epochs`, which must match. Returns the step the run goes on from (0: a fresh run), which the report
    records: its seconds cover only the rest."""
    import dataclasses

    from recipes.common.ckpt import latest_step
    from recipes.common.config import apply_overrides, load_yaml

    recorded = Path(cfg.out_dir) / "config.yaml"
    if not recorded.is_file():
        return 0
    before = apply_overrides(type(cfg)(), load_yaml(recorded), str(recorded))
    changed = sorted(
        f.name
        for f in dataclasses.fields(cfg)
        if f.name not in RESUMABLE_CHANGES | may_differ and getattr(before, f.name) != getattr(cfg, f.name)
    )
    if changed:
        raise ValueError(
            f"{cfg.out_dir} holds a run with other settings ({', '.join(changed)}): choose a fresh --out"
        )
    step = latest_step(cfg.out_dir)
    if cfg.max_steps and step > cfg.max_steps:  # it would be evaluated as a run of max_steps
        raise ValueError(
            f"{cfg.out_dir} holds a run trained to {step} steps, past this run's {cfg.max_steps}: "
            "choose a fresh --out"
        )
    return step


def parse_steps(text: str) -> dict[str, int]:
    """``"stage1=4000,stage2=3000"`` -> {"stage1": 4000, "stage2": 3000}: names once each, counts >= 1."""
    steps: dict[str, int] = {}
    for item in text.split(","):
        name, sep, count = item.strip().partition("=")
        name, count = name.strip(), count.strip()
        if not sep or not name.isidentifier() or not count.isdigit() or not count.isascii():
            raise ValueError(f"--steps wants STAGE=N[,STAGE=N...], got {item.strip()!r}")
        if name in steps:
            raise ValueError(f"--steps names {name!r} twice")
        if int(count) < 1:
            raise ValueError(f"--steps {name}: at least 1 step, got {count}")
        steps[name] = int(count)
    return steps


def build_report(protocol: Protocol, ctx: Context, outcome: Outcome, seconds: float) -> dict[str, Any]:
    targets = dict(protocol.targets(ctx.quick))
    passed = check_targets(outcome.metrics, targets)
    return {
        "protocol": protocol.name,
        "summary": protocol.summary,
        "quick": ctx.quick,
        "scale": ctx.scale,
        "device": ctx.device,
        "seed": ctx.seed,
        "seconds": round(seconds, 1),
        "steps": outcome.steps,
        "metrics": outcome.metrics,
        "targets": {k: t.to_json() for k, t in targets.items()},
        "passed": passed,
        "all_passed": all(passed.values()),
        "files": outcome.files,
    }


def reproduce(
    name: str,
    out: str | Path,
    *,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    data_root: str | Path | None = None,
    scale: str = "cpu",
    steps: Mapping[str, int] | None = None,
    compile: bool = True,
) -> dict[str, Any]:
    """Run protocol `name` into `out` and write `out/report.json`; returns the report."""
    protocols = load_protocols()
    if name not in protocols:
        raise DatagenError(f"unknown protocol {name!r}; choose from {', '.join(sorted(protocols))}")
    protocol = protocols[name]
    if scale not in protocol.scales:
        raise DatagenError(f"{name} runs at scale {' or '.join(protocol.scales)}, not {scale!r}")
    if quick and scale != "cpu":
        raise DatagenError("--quick is the CPU scale's short run; --scale paper runs the full protocol")
    unknown = sorted(set(steps or {}) - set(protocol.stages))
    if unknown:
        have = ", ".join(protocol.stages) or "none"
        raise DatagenError(f"--steps: {name} has no stage {', '.join(unknown)} (its stages: {have})")
    for flag, folder in (("--out", out), ("--data-root", data_root)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise DatagenError(f"{flag} {folder} is a file, not a folder: choose another path")
    ctx = Context(
        out=Path(out),
        quick=quick,
        device=device,
        seed=seed,
        data_root=Path(data_root) if data_root is not None else None,
        scale=scale,
        steps=dict(steps or {}),
        compile=compile,
    )
    ctx.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    outcome = protocol.run(ctx)
    report = build_report(protocol, ctx, outcome, time.perf_counter() - start)
    write_json_atomic(ctx.out / "report.json", report)
    return report


def format_report(report: Mapping[str, Any]) -> str:
    lines = [
        f"{report['protocol']} ({'quick' if report['quick'] else 'full'}, "
        f"{report.get('scale', 'cpu')} scale, {report['device']}, {report['seconds']:.0f} s)"
    ]
    for name, t in report["targets"].items():
        v = metric_value(report["metrics"], t["metric"])
        shown = "missing" if v is None else f"{v:.4g}"
        mark = "PASS" if report["passed"][name] else "FAIL"
        lines.append(f"  {mark} {name}: {t['metric']} = {shown} (target {t['op']} {t['value']:.4g})")
    return "\n".join(lines)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recipes.reproduce", description=__doc__.split("\n\n")[0], add_help=add_help
    )
    p.add_argument("name", nargs="?", help="protocol name (see --list)")
    p.add_argument("--out", "-o", help="output folder (report.json, samples, runs)")
    p.add_argument("--quick", action="store_true", help="shortened run with its own, weaker targets")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="where stores are made or reused [default: OUT/data]")
    p.add_argument("--scale", choices=SCALES, default="cpu", help="model sizes: cpu (default) or paper")
    p.add_argument("--steps", type=_steps_arg, help="stage lengths, e.g. stage1=4000,stage2=3000")
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="no torch.compile (default: on CUDA and in the CPU stages that ask)",
    )
    p.add_argument("--list", action="store_true", help="list the protocols and their targets")
    return p


def _steps_arg(text: str) -> dict[str, int]:
    try:
        return parse_steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, proto in sorted(load_protocols().items()):
            print(f"{name}: {proto.summary}")
            print(f"  scales: {', '.join(proto.scales)}; stages (--steps): {', '.join(proto.stages) or '-'}")
            for quick in (False, True):
                for tname, t in proto.targets(quick).items():
                    print(f"  {'quick' if quick else 'full '} {tname}: {t.metric} {t.op} {t.value:g}")
        return 0
    if not args.name or not args.out:
        parser.error("a protocol name and --out are required (or --list)")
    try:
        report = reproduce(
            args.name,
            args.out,
            quick=args.quick,
            device=args.device,
            seed=args.seed,
            data_root=args.data_root,
            scale=args.scale,
            steps=args.steps,
            compile=not args.no_compile,
        )
    except USER_ERRORS as exc:
        print(error_line(parser.prog, exc), file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    # Run as ``python -m recipes.reproduce`` this file is ``__main__``, while the protocol modules register
    # with the imported ``recipes.reproduce``: use that module, so lookup and registration share one registry.
    from recipes import reproduce

    sys.exit(reproduce.main())
