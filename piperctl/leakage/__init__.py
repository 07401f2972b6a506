"""Leakage and integrity scans of LeRobot datasets (pure Polars/pyarrow; no torch, no lerobot)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from piperctl.leakage.thresholds import Thresholds

if TYPE_CHECKING:
    from piperctl.leakage.result import CheckResult, Finding, LeakageReport
    from piperctl.leakage.tester import DatasetLeakageTester

__all__ = ["CheckResult", "DatasetLeakageTester", "Finding", "LeakageReport", "Thresholds"]


def __getattr__(name: str) -> Any:
    # Lazy: `piperctl.leakage.thresholds` (read by the CLI for its defaults) must not import polars.
    if name == "DatasetLeakageTester":
        from piperctl.leakage.tester import DatasetLeakageTester

        return DatasetLeakageTester
    if name in ("CheckResult", "Finding", "LeakageReport"):
        from piperctl.leakage import result

        return getattr(result, name)
    raise AttributeError(name)
