"""Seeding, the single AMP path (CUDA only) and torch.compile (when asked, on any device).

One AMP path (nanoGPT): `autocast(device, precision)` around forward passes and
`GradScaler(enabled=(precision == "float16"))`, so fp32, bf16 and fp16 all run the same code:

    with autocast(device, cfg.precision):
        loss = ...
    scaler.scale(loss).backward()
    scaler.unscale_(opt)          # only if clipping gradients: clip the unscaled ones
    scaler.step(opt)
    scaler.update()               # once per iteration, after every optimizer of that iteration stepped
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch (CPU+CUDA), numpy's and python's global RNGs with `seed + rank` (nanoGPT's seed_offset)."""
    s = seed + rank
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA for bf16/fp16; a no-op on CPU and for fp32 (CPU runs stay bitwise exact)."""
    if device.type != "cuda" or precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=_DTYPES[precision])


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 on CUDA (otherwise scale/step/update pass through)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "float16" and device.type == "cuda"))


def maybe_compile(module: torch.nn.Module, enabled: bool, device: torch.device) -> torch.nn.Module:
    """torch.compile when asked (inductor), unchanged otherwise. Unwrap with `ckpt.unwrap` before saving.

    Compiled runs reproduce themselves (and resume) bitwise, but their floating-point order differs from the
    eager run's. On CPU inductor builds C++ kernels: `start_run` has checked for a compiler already.
    """
    return torch.compile(module) if enabled else module


def check_cpu_compiler() -> None:
    """Refuse --compile on CPU where inductor finds no working C++ compiler (one clear line, exit 2), instead
    of a failure at the first step deep in a traceback. Inductor's own search decides (the CXX variable,
    `--version` must run), so this refuses exactly what inductor would fail on."""
    from torch._inductor import config
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        cxx = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
        wanted = " or ".join(c for c in cxx if c)
        raise ValueError(
            f"--compile on CPU needs a C++ compiler for torch inductor ({wanted}); none works"
        ) from None
