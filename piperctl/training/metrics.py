"""metrics.jsonl (one JSON line per logged step) and the loss-curve picture drawn from it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from piperctl.checkpoints.format import read_metrics
from piperctl.fs import atomic_replace, atomic_write


class MetricsLog:
    """Appends metric records; on resume drops records past the checkpoint so the file tells one history."""

    def __init__(self, path: Path, truncate_after: int = 0) -> None:
        self.path = path
        rows = read_metrics(path)
        if rows and (truncate_after == 0 or any(r["step"] > truncate_after for r in rows)):
            kept = [r for r in rows if r["step"] <= truncate_after]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.tracker: Any = None

    def add_tracker(self, tracker: Any) -> None:
        """Also send every record to an experiment tracker (see piperctl.training.trackers)."""
        self.tracker = tracker

    def write(self, record: dict) -> None:
        """Append one record and flush it, so a crash loses at most the line being written."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tracker is not None:
            self.tracker.log(record)

    def close(self) -> None:
        """Close the file and finish the tracker run (idempotent)."""
        if not self._file.closed:
            self._file.close()
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            tracker.finish()


def plot_loss_curve(metrics_path: Path, out: Path) -> Path | None:
    """Draw training (and validation) loss against step into a PNG; None when there is nothing to plot."""
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        atomic_replace(out, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return out


class NoMetrics:
    """metrics.jsonl stand-in on the ranks that do not write files."""

    def add_tracker(self, tracker: Any) -> None:
        """Only rank 0 logs to trackers."""

    def write(self, record: dict) -> None:
        """Drop the record (rank 0 writes the mean over ranks)."""

    def close(self) -> None:
        """Nothing to close."""


class Rate:
    """Smoothed steps per second for the progress display."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.value = 0.0

    def tick(self) -> float:
        """Count one step; the smoothed rate."""
        now = time.perf_counter()
        inst = 1.0 / max(now - self._last, 1e-9)
        self._last = now
        self.value = inst if self.value == 0.0 else 0.9 * self.value + 0.1 * inst
        return self.value
