"""Leakage and integrity scans of LeRobot datasets (pure Polars/pyarrow; no torch, no lerobot)."""

from piperctl.leakage.result import CheckResult, Finding, LeakageReport
from piperctl.leakage.tester import DatasetLeakageTester, Thresholds

__all__ = ["CheckResult", "DatasetLeakageTester", "Finding", "LeakageReport", "Thresholds"]
