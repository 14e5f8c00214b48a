"""--retries: Dask reruns a task that raised (a dropped connection), up to the given count."""

from __future__ import annotations

from pathlib import Path

import pytest

from datagen.cli import main
from datagen.errors import DatagenError
from datagen.parallel import Task, run_tasks


def fails_first_time(marker: str) -> str:
    """Raises on the first call (leaving a marker file), succeeds after: a transient error."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ConnectionError("connection reset by peer")
    return "ok"


@pytest.mark.integration
def test_a_transient_task_error_is_retried_only_when_allowed(tmp_path):
    got = []
    tasks = [Task("a", fails_first_time, (str(tmp_path / "a"),))]
    run_tasks(tasks, workers=1, retries=1, on_result=lambda t, r: got.append(r))
    assert got == ["ok"]
    tasks = [Task("b", fails_first_time, (str(tmp_path / "b"),))]
    with pytest.raises(ConnectionError, match="reset by peer"):
        run_tasks(tasks, workers=1, retries=0, on_result=lambda t, r: got.append(r))


def test_retries_must_be_a_count(capsys):
    with pytest.raises(DatagenError, match="--retries must be a whole number >= 0"):
        run_tasks([], workers=0, retries=-1, on_result=lambda t, r: None)
    assert main(["balls", "--n", "2", "--retries", "-1", "--workers", "1", "--out", "memory://r/s"]) == 2
    assert "--retries must be a whole number >= 0" in capsys.readouterr().err
    fsspec = pytest.importorskip("fsspec")
    assert not fsspec.filesystem("memory").exists("/r/s")  # refused before anything was written
