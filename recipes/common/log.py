"""Run logs: `metrics.csv` (always), TensorBoard (when `torch.utils.tensorboard` imports), one console line.

Only rank 0 logs (`enabled=False` elsewhere makes every call a no-op). The CSV is wide: one row per logged
step, one column per metric; a metric that first appears later rewrites the file with the widened header
(rare, small file). On resume the rows after the resumed step are dropped, so the log matches the weights.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datagen.store.atomic import atomic_path


def _tensorboard_writer(run_dir: Path) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional `tensorboard` package is not installed
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


class MetricLogger:
    """Append scalar metrics per step to CSV (and TensorBoard); print a short line to stdout."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = True,
        echo: bool = True,
    ) -> None:
        self.enabled = enabled
        self.echo = echo
        self.path = Path(run_dir) / "metrics.csv"
        self.fields: list[str] = []
        self._rows: list[dict[str, str]] = []
        self._tb = None
        self._t_last = time.perf_counter()
        self._step_last: int | None = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and resume_step is not None:
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                self._rows = [r for r in reader if int(r["step"]) <= resume_step]
        self._rewrite()
        if tensorboard:
            self._tb = _tensorboard_writer(Path(run_dir))

    def _rewrite(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self._rows)

    def log(self, step: int, metrics: Mapping[str, float], *, epoch: int | None = None) -> None:
        """Record `metrics` at `step`; adds `epoch`, wall time and steps/s since the previous call."""
        if not self.enabled:
            return
        now = time.perf_counter()
        row: dict[str, Any] = {"step": step}
        if epoch is not None:
            row["epoch"] = epoch
        if self._step_last is not None and step > self._step_last:
            row["steps_per_s"] = (step - self._step_last) / max(now - self._t_last, 1e-9)
        self._t_last, self._step_last = now, step
        row.update({k: float(v) for k, v in metrics.items()})
        text = {k: (f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in row.items()}
        self._rows.append(text)
        if any(k not in self.fields for k in text):
            self.fields += [k for k in text if k not in self.fields]
            self._rewrite()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerow(text)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self.echo:
            print(" ".join(f"{k}={v}" for k, v in text.items()), flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
