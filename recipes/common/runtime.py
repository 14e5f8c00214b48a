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
import shutil

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

    On CPU inductor builds C++ kernels: without a compiler it would fail at the first step, deep in a
    traceback, so that is refused here as a user error. Compiled runs reproduce themselves (and resume)
    bitwise, but their floating-point order differs from the eager run's.
    """
    if not enabled:
        return module
    if device.type == "cpu":
        check_cpu_compiler()
    return torch.compile(module)


def check_cpu_compiler() -> None:
    """Refuse --compile on CPU where inductor finds no C++ compiler (one clear line, exit 2)."""
    from torch._inductor import config

    cxx = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    candidates = [c for c in cxx if c]
    if not any(shutil.which(c) for c in candidates):
        wanted = " or ".join(candidates)
        raise ValueError(f"--compile on CPU needs a C++ compiler for torch inductor ({wanted}); none on PATH")
