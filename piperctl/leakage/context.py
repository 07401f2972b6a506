"""What every leakage check may look at: the dataset layout, the scan's aggregates and the options."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import polars as pl

from piperctl.leakage import content_checks as cc
from piperctl.leakage.layout import Layout
from piperctl.leakage.scan import ScanResult
from piperctl.leakage.thresholds import Thresholds


@dataclass
class Context:
    """Everything a check may look at: the layout, the scan's aggregates and the options."""

    layout: Layout
    thresholds: Thresholds
    scan: ScanResult
    eps: pl.DataFrame  # one row per episode id: rows, index ranges, fault counts
    null_rows: int
    frozen_frames: int
    splits: dict[str, list[int]] = field(default_factory=dict)
    splits_source: str = ""
    robot: str | None = None
    lag_pairs: list[tuple[str, int, str, int]] = field(default_factory=list)
    lag_skip: str = ""

    @property
    def stats(self) -> pl.DataFrame:
        """Per-episode value and motion aggregates of the full scan."""
        assert self.scan.content_stats is not None
        return self.scan.content_stats

    @property
    def vectors(self) -> list[str]:
        """The float vector features (joint streams) the kinematic checks look at."""
        return self.scan.vectors

    @cached_property
    def pairs(self) -> pl.DataFrame:
        """Pairs of episodes sharing moving frames (rest poses left out)."""
        assert self.scan.classes is not None
        lengths = self.eps.select("episode_index", "rows")
        return cc.shared_pairs(self.scan.classes, lengths, self.thresholds.min_shared_frames)
