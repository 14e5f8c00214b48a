"""Registry of sample generators, looked up by name so Dask workers need only the name.

A generator is an object with `name`, `version`, `validate(params) -> params`, `sample_shape(params)` and
`generate(params, seed, start, stop) -> Iterator[Sample]`; sample i depends only on (params, seed, i).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Protocol

from datagen.errors import DatagenError
from datagen.store.sample import Sample

_REGISTRY = {
    "balls": "datagen.sim.balls:BALLS",
    "mnist": "datagen.sim.mnist:MNIST",
    "mnist_test_seq": "datagen.convert:MNIST_TEST_SEQ",
}


class Generator(Protocol):
    name: str
    version: str

    def validate(self, params: dict[str, Any]) -> dict[str, Any]: ...

    def sample_shape(self, params: dict[str, Any]) -> tuple[int, int, int, int]: ...

    def generate(self, params: dict[str, Any], seed: int, start: int, stop: int) -> Iterator[Sample]: ...


def get_generator(name: str) -> Generator:
    """A registered name (`balls`), or `module:attribute` for a generator defined elsewhere (e.g. tests)."""
    spec = name if ":" in name else _REGISTRY.get(name)
    if spec is None:
        raise KeyError(f"unknown generator {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def with_defaults(name: str, defaults: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """`params` over `defaults`, refusing keys the generator does not know (a typo must not pass silently)."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise DatagenError(f"unknown {name} parameter(s): {', '.join(sorted(unknown))}")
    return {**defaults, **params}
