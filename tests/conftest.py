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
