"""Typed run configuration: one dataclass per recipe, filled from defaults < preset < --smoke < YAML < flags.

Why not argparse alone: a recipe's config must be loadable from a YAML file, recorded next to the run
(`config.yaml`) and inside every checkpoint, and a typo or a mistyped value must fail loudly with one line
instead of silently training the wrong thing (nanoGPT's configurator idea, without `exec`).

A recipe declares `@dataclass class MyConfig(TrainConfig)` with flat, commented primitive fields and calls
`build_parser(MyConfig, presets=...)` / `config_from_args(MyConfig, args, presets=..., smoke=...)`.
Supported field types: bool, int, float, str, `X | None`, `Literal[...]`, `tuple[T, ...]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from datagen.errors import DatagenError
from datagen.store.atomic import atomic_path

C = TypeVar("C", bound="TrainConfig")


class ConfigError(DatagenError, ValueError):
    """A config key is unknown or its value has the wrong type; the message is one line."""


@dataclasses.dataclass
class TrainConfig:
    """Fields every recipe shares. Recipes subclass this and add their own (with paper defaults)."""

    out_dir: str = "runs/default"  # run directory: config.yaml, metrics.csv, checkpoints, samples
    data: str = (
        ""  # store root (manifest.json) read through pipelines.VideoDataset; "" with --smoke = tiny store
    )
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun, cuda means cuda:LOCAL_RANK)
    seed: int = 0  # model init, noise and data order; rank r uses seed + r for its noise
    precision: Literal["float32", "bfloat16", "float16"] = "float32"  # autocast dtype on CUDA (fp32 on CPU)
    compile: bool = False  # torch.compile the models (inductor; on CPU it needs a C++ compiler)
    epochs: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    batch_size: int = 64  # per rank
    num_workers: int = 0
    interleave: int = 12  # data order: pieces per loader block (pipelines' default); 1 = the block-local
    # order, which resumes checkpoints saved before interleaving was the default
    log_every: int = 50  # steps between CSV/TensorBoard rows
    sample_every: int = 500  # steps between sample grids / GIFs (0 = only at the end)
    ckpt_every: int = 1000  # steps between checkpoints (0 = only at the end)
    resume: str = ""  # "" = fresh run, "auto" = latest checkpoint in out_dir, or a checkpoint path
    preset: str = ""  # name of a preset in the recipe's PRESETS (recorded, applied before YAML and flags)
    smoke: bool = False  # tiny CPU run on a generated store (CI); applied after the preset


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type of every dataclass field (annotations are strings under `from __future__`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def coerce(name: str, tp: Any, value: Any, source: str) -> Any:
    """Check `value` against the field type and return it normalised (int -> float, list -> tuple)."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {name!r} from {source}: expected {_type_name(inner)}, got null")
    tp = inner
    origin = typing.get_origin(tp)
    bad = ConfigError(
        f"config key {name!r} from {source}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise bad
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise bad
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise bad
        return tuple(
            coerce(f"{name}[{i}]", t, v, source)
            for i, (t, v) in enumerate(zip(item_types, value, strict=True))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise ConfigError(f"config key {name!r}: unsupported field type {tp!r}")


def apply_overrides(cfg: C, overrides: Mapping[str, Any], source: str) -> C:
    """Return a copy of `cfg` with `overrides` applied; unknown keys and mistyped values raise ConfigError."""
    types_ = field_types(type(cfg))
    changes = {}
    for key, value in overrides.items():
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
        changes[key] = coerce(key, types_[key], value, source)
    return dataclasses.replace(cfg, **changes)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping (safe loader only)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Primitive dict of the config (tuples become lists): safe for YAML and weights_only loads."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Record the config as YAML next to the run (atomic)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _cli_converter(name: str, tp: Any):
    optional, inner = _is_optional(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        choices = typing.get_args(inner)
        base = type(choices[0])
    elif origin is tuple:
        base = typing.get_args(inner)[0]
    else:
        base = inner

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_type_name(base)}, got {text!r}") from None

    convert.__name__ = _type_name(base)
    return convert


def build_parser(
    cls: type[TrainConfig],
    *,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    add_help: bool = True,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """One `--kebab-case` flag per field (defaults suppressed: only given flags override), plus `--config`."""
    parser = argparse.ArgumentParser(
        description=description, add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="YAML file of config keys (flags override it)")
    defaults = cls()
    for name, tp in field_types(cls).items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        help_ = f"default: {default!r}"
        optional, inner = _is_optional(tp)
        if inner is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_
            )
            continue
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": help_,
            "type": _cli_converter(name, tp),
        }
        if typing.get_origin(inner) is Literal:
            kwargs["choices"] = list(typing.get_args(inner)) + ([None] if optional else [])
        if typing.get_origin(inner) is tuple:
            args = typing.get_args(inner)
            kwargs["nargs"] = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
        if name == "preset" and presets:
            kwargs["choices"] = sorted(presets)
        parser.add_argument(flag, **kwargs)
    return parser


def config_from_args(
    cls: type[C],
    args: argparse.Namespace | Mapping[str, Any],
    *,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    smoke: Mapping[str, Any] | None = None,
) -> C:
    """Resolve the config: defaults < preset < smoke overrides < YAML (`config` key) < explicit flags."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    yaml_path = given.pop("config", None)
    from_yaml = load_yaml(yaml_path) if yaml_path else {}
    cfg = cls()
    # preset and smoke may come from the YAML or a flag; the flag wins, like every other key.
    preset = given.get("preset", from_yaml.get("preset", cfg.preset))
    is_smoke = given.get("smoke", from_yaml.get("smoke", cfg.smoke))
    if preset:
        if not presets or preset not in presets:
            known = ", ".join(sorted(presets or {})) or "none"
            raise ConfigError(f"unknown preset {preset!r} (known: {known})")
        cfg = apply_overrides(cfg, presets[preset], f"preset {preset!r}")
    if is_smoke is True and smoke:
        cfg = apply_overrides(cfg, smoke, "the --smoke preset")
    if from_yaml:
        cfg = apply_overrides(cfg, from_yaml, str(yaml_path))
    cfg = apply_overrides(cfg, given, "command-line flags")
    return cfg
