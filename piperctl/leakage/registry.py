"""The one list of checks the tester runs: adding a check is one function and one line in CHECKS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import polars as pl

from piperctl.leakage import content_checks as cc
from piperctl.leakage import kinematics as km
from piperctl.leakage import structure_checks as sc
from piperctl.leakage.layout import Layout
from piperctl.leakage.result import CheckResult
from piperctl.leakage.scan import ScanResult
from piperctl.leakage.thresholds import Thresholds
from piperctl.leakage.videos import check_videos


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


@dataclass(frozen=True)
class Check:
    """One entry of the registry: its name, whether `minimal` runs it, and the function."""

    name: str
    minimal: bool
    run: Callable[[Context], CheckResult]


def _rest(ctx: Context) -> dict[str, int]:
    assert ctx.scan.classes is not None
    return cc.rest_summary(ctx.scan.classes)


CHECKS: list[Check] = [
    Check("episode_index", True, lambda c: sc.check_episode_index(c.layout, c.scan.runs, c.eps, c.null_rows)),
    Check("frame_index", True, lambda c: sc.check_frame_index(c.layout, c.eps)),
    Check("global_index", True, lambda c: sc.check_global_index(c.layout, c.eps)),
    Check("timestamps", True, lambda c: sc.check_timestamps(c.layout, c.eps, c.thresholds.tolerance_s)),
    Check("metadata", True, lambda c: sc.check_metadata(c.layout, c.eps)),
    Check(
        "duplicate_frames",
        False,
        lambda c: cc.check_duplicate_frames(c.scan.classes, c.thresholds.rest_frames),  # type: ignore[arg-type]
    ),
    Check(
        "frozen_streams",
        False,
        lambda c: cc.check_frozen_streams(c.scan.frozen, c.frozen_frames, c.layout.fps, c.vectors),  # type: ignore[arg-type]
    ),
    Check("non_finite", False, lambda c: cc.check_values(c.stats, c.scan.features)),
    Check("constant_dimensions", False, lambda c: cc.check_constant_dims(c.stats, c.layout, c.scan.features)),
    Check(
        "cross_episode",
        False,
        lambda c: cc.check_cross_episode(c.pairs, c.scan.candidate_rows, _rest(c), c.thresholds.rest_frames),
    ),
    Check(
        "split_leakage",
        False,
        lambda c: cc.check_split_leakage(
            c.splits, c.splits_source, c.pairs, set(c.eps["episode_index"].to_list())
        ),
    ),
    Check("velocity_spikes", False, km.check_velocity_spikes),
    Check("frozen_joints", False, km.check_frozen_joints),
    Check("action_state", False, km.check_action_state),
    Check("units_and_ranges", False, km.check_units_and_ranges),
    Check("short_episodes", False, km.check_short_episodes),
    Check("videos", False, check_videos),
]
