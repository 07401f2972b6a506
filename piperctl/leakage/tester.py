"""`DatasetLeakageTester`: run the minimal or full leakage checks on one dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from piperctl.console import progress_bar
from piperctl.errors import PiperctlError
from piperctl.leakage import structure_checks as sc
from piperctl.leakage.kinematics import lag_pairs
from piperctl.leakage.layout import STRUCT_COLUMNS, Layout, load_layout, validate_columns
from piperctl.leakage.registry import CHECKS, Context
from piperctl.leakage.result import LeakageReport
from piperctl.leakage.robots import KNOWN_ROBOTS, robot_of
from piperctl.leakage.scan import scan_dataset
from piperctl.leakage.source import resolve_dataset
from piperctl.leakage.splits import parse_split_options, splits_from_info
from piperctl.leakage.thresholds import Thresholds

if TYPE_CHECKING:
    from rich.console import Console


class DatasetLeakageTester:
    """Scan a LeRobot dataset (folder or Hub repo id) for leakage and integrity faults."""

    def __init__(
        self,
        dataset: str | os.PathLike[str],
        *,
        splits: list[str] | dict[str, list[int]] | None = None,
        thresholds: Thresholds | None = None,
        robot: str | None = None,
        progress: bool = True,
    ) -> None:
        self.dataset = str(dataset)
        self.thresholds = thresholds or Thresholds()
        bad = self.thresholds.problems()
        if bad:
            opts = ", ".join("--" + b.replace("_", "-") for b in bad)
            raise PiperctlError(f"{opts}: must be positive", hint="see 'piperctl leakage full --help'")
        if robot is not None and robot.lower() not in (*KNOWN_ROBOTS, "none"):
            raise PiperctlError(
                f"--robot {robot!r}: no such robot profile", hint=f"known: {', '.join(KNOWN_ROBOTS)}, or none"
            )
        self.robot = robot
        self.progress = progress
        self._splits = parse_split_options(splits) if isinstance(splits, list) else splits
        self._root: Path | None = None
        self.layout: Layout | None = None  # the files and metadata read by the last run
        self.report: LeakageReport | None = None

    def _load(self) -> Layout:
        # The location is resolved (and a Hub dataset fetched) once; the metadata and file footers
        # are re-read on every run so that a dataset edited in between is seen as it is now.
        if self._root is None:
            self._root = resolve_dataset(self.dataset)
        self.layout = load_layout(self._root)
        return self.layout

    def run_minimal_tests(self) -> LeakageReport:
        """Checks 1-5, reading only episode_index, frame_index, index, timestamp and the metadata."""
        return self._run(full=False)

    def run_all_tests(self) -> LeakageReport:
        """All checks: 1-5 plus duplicate, frozen, non-finite and constant data, cross-episode and split leakage."""
        return self._run(full=True)

    def print_report(self, console: Console | None = None) -> None:
        """Print the last report as a Rich table (running the full checks first if none ran yet)."""
        from piperctl.leakage.report import print_report

        print_report(self.report or self.run_all_tests(), console=console)

    def _run(self, *, full: bool) -> LeakageReport:
        layout = self._load()
        features = validate_columns(layout, list(STRUCT_COLUMNS) + (layout.content_features if full else []))
        t = self.thresholds
        frozen_frames = t.frozen_frames(layout.fps)
        pairs, skip = lag_pairs(features, layout.dim_names) if full else ([], "")
        kwargs = dict(
            full=full,
            features=features,
            tolerance_s=t.tolerance_s,
            frozen_frames=frozen_frames,
            rest_frames=t.rest_frames,
            lag_pairs=pairs,
        )
        label = f"scanning {layout.root.name} ({'full' if full else 'minimal'})"
        if self.progress:
            with progress_bar(label, layout.rows) as bar:
                scan = scan_dataset(layout, progress=bar.update, **kwargs)  # type: ignore[arg-type]
        else:
            scan = scan_dataset(layout, **kwargs)  # type: ignore[arg-type]
        eps = sc.per_episode(scan.episodes, scan.runs)
        null_rows = int(scan.episodes.filter(pl.col("episode_index").is_null())["rows"].sum() or 0)
        if self._splits is not None:
            splits, source = self._splits, "--split"
        else:
            splits, source = splits_from_info(layout.info), "meta/info.json"
        ctx = Context(
            layout=layout,
            thresholds=t,
            scan=scan,
            eps=eps,
            null_rows=null_rows,
            frozen_frames=frozen_frames,
            splits=splits,
            splits_source=source,
            robot=robot_of(layout.info, self.robot),
            lag_pairs=pairs,
            lag_skip=skip,
        )
        checks = [c.run(ctx) for c in CHECKS if full or c.minimal]
        info = {
            "root": str(layout.root),
            "codebase_version": layout.codebase_version,
            "layout": layout.version,
            "fps": layout.fps,
            "episodes": eps.height,
            "frames": layout.rows,
            "files": len(layout.files),
            "thresholds": {
                "tolerance_s": t.tolerance_s,
                "frozen_frames": frozen_frames,
                "min_shared_frames": t.min_shared_frames,
                "rest_frames": t.rest_frames,
                "spike_factor": t.spike_factor,
                "lag_frames": t.lag_frames,
                "unit_factor": t.unit_factor,
                "short_fraction": t.short_fraction,
                "chunk_size": t.chunk_size,
            },
        }
        if full:
            info["features"] = features
            info["robot"] = ctx.robot
            units = next((c for c in checks if c.name == "units_and_ranges"), None)
            profile = units.extra.get("robot_profile") if units is not None else None
            info["conventions"] = profile["conventions"] if profile else None
        self.report = LeakageReport(
            dataset=self.dataset, mode="full" if full else "minimal", checks=checks, info=info
        )
        return self.report
