import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# Dask worker processes and CLI subprocesses must import tests/pattern_gen.py too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture
def pattern():
    return "pattern_gen:PATTERN"


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """Moving MNIST tests: digit downloads and caches go to a fresh folder, never the user's (use with
    ``pytestmark = pytest.mark.usefixtures("private_cache")``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIDEOGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def digits(private_cache):
    """The built-in MNIST digits of the default Moving MNIST params."""
    from datagen.sim import mnist as sim
    from datagen.sources import mnist as src

    return src.load_digits(sim.MNIST.validate({})["source"])
