"""The one list of checks the tester runs: adding a check is one function and one line in CHECKS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from piperctl.leakage import content_checks as cc
from piperctl.leakage import kinematics as km
from piperctl.leakage import structure_checks as sc
from piperctl.leakage.context import Context
from piperctl.leakage.result import CheckResult
from piperctl.leakage.videos import check_videos


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
