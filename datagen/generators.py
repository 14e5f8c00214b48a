"""Registry of sample generators, looked up by name so Dask workers need only the name.

A generator is an object with `name`, `version`, `validate(params) -> params`, `sample_shape(params)` and
`generate(params, seed, start, stop) -> Iterator[Sample]`; sample i depends only on (params, seed, i).

Optional per-sample fields (`datagen.store.format.KNOWN_FIELDS`): a generator that can make more than
the video lists them in `fields` (e.g. `("video", "mask", "flow", "events", "visibility")`). The job takes
`fields` out of the params before `validate` and puts it back (canonical order) only when more than the
video is asked for (`datagen.jobs.split_fields`), so `generate` reads `params.get("fields", ["video"])`,
attaches arrays as `Sample.fields` and adds meta keys only for the fields asked for: default output stays
byte-identical.
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
    # optional: fields: tuple[str, ...] (what it can make beyond "video"; absent: video only)

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


def requested_fields(params: dict[str, Any]) -> frozenset[str]:
    """The fields a generator's validated params ask for (always including "video")."""
    return frozenset(params.get("fields", ("video",)))


def with_defaults(name: str, defaults: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """`params` over `defaults`, refusing keys the generator does not know (a typo must not pass silently)."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise DatagenError(f"unknown {name} parameter(s): {', '.join(sorted(unknown))}")
    return {**defaults, **params}
