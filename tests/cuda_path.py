"""The recipes' CUDA-only path (torch.compile, bf16 autocast) made to run on CPU, so CI exercises it.

`autocast` (recipes.common.runtime) is a no-op on CPU, which keeps CPU runs bitwise reproducible but leaves
the GPU path untested without a GPU. These stand-ins autocast to bf16 on CPU and compile through AOTAutograd
with the aot_eager backend (inductor shares its autograd, hence its limits, such as no double backward), which
needs no C++ build: tests/test_framegan_recipe.py runs inductor itself on CPU."""

from __future__ import annotations

import contextlib

import pytest
import torch


def compile_on_cpu(module: torch.nn.Module, enabled: bool, device: torch.device) -> torch.nn.Module:
    return torch.compile(module, backend="aot_eager") if enabled else module


def bf16_on_cpu(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


def use_cuda_path_on_cpu(monkeypatch: pytest.MonkeyPatch, recipe: object) -> None:
    """Patch `recipe`'s compile and every run's autocast (recipes.common.run) to the stand-ins above."""
    import recipes.common.run as run_module

    monkeypatch.setattr(recipe, "maybe_compile", compile_on_cpu)
    monkeypatch.setattr(run_module, "autocast", bf16_on_cpu)


def record_compiles(monkeypatch: pytest.MonkeyPatch, backend: str = "inductor") -> list[type]:
    """Spy on torch.compile (as `recipes.common.runtime.maybe_compile` calls it): returns the list that the
    types of the compiled modules are appended to, in order; they still compile, with `backend`."""
    compiled: list[type] = []
    real_compile = torch.compile

    def spy(module: torch.nn.Module) -> torch.nn.Module:
        compiled.append(type(module))
        return real_compile(module, backend=backend)

    monkeypatch.setattr(torch, "compile", spy)
    return compiled
