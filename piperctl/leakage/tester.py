"""`DatasetLeakageTester`: run the minimal or full leakage checks on one dataset."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from piperctl.console import progress_bar
from piperctl.errors import PiperctlError
from piperctl.leakage import content_checks as cc
from piperctl.leakage import structure_checks as sc
from piperctl.leakage.layout import STRUCT_COLUMNS, Layout, load_layout, validate_columns
from piperctl.leakage.result import LeakageReport
from piperctl.leakage.scan import scan_dataset
from piperctl.leakage.source import resolve_dataset
from piperctl.leakage.splits import parse_split_options, splits_from_info

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Thresholds:
    """Tunable limits of the checks."""

    tolerance_s: float = 1e-4  # lerobot's own timestamp tolerance
    frozen_seconds: float = 2.0  # a state/action stream identical for this long is reported
    min_shared_frames: int = 1  # pairs of episodes sharing fewer frames are not reported

    def frozen_frames(self, fps: float) -> int:
        """The frozen-run threshold in frames at `fps` (at least 2)."""
        return max(2, math.ceil(self.frozen_seconds * fps - 1e-9))


class DatasetLeakageTester:
    """Scan a LeRobot dataset (folder or Hub repo id) for leakage and integrity faults."""

    def __init__(
        self,
        dataset: str | os.PathLike[str],
        *,
        splits: list[str] | dict[str, list[int]] | None = None,
        thresholds: Thresholds | None = None,
        progress: bool = True,
    ) -> None:
        self.dataset = str(dataset)
        self.thresholds = thresholds or Thresholds()
        if self.thresholds.tolerance_s <= 0 or self.thresholds.frozen_seconds <= 0:
            raise PiperctlError(
                "thresholds must be positive", hint="check --tolerance-s and --frozen-seconds"
            )
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
        label = f"scanning {layout.root.name} ({'full' if full else 'minimal'})"
        if self.progress:
            with progress_bar(label, layout.rows) as bar:
                scan = scan_dataset(
                    layout,
                    full=full,
                    features=features,
                    tolerance_s=t.tolerance_s,
                    frozen_frames=frozen_frames,
                    progress=bar.update,
                )
        else:
            scan = scan_dataset(
                layout, full=full, features=features, tolerance_s=t.tolerance_s, frozen_frames=frozen_frames
            )
        eps = sc.per_episode(scan.episodes, scan.runs)
        null_rows = int(scan.episodes.filter(pl.col("episode_index").is_null())["rows"].sum() or 0)
        checks = [
            sc.check_episode_index(layout, scan.runs, eps, null_rows),
            sc.check_frame_index(layout, eps),
            sc.check_global_index(layout, eps),
            sc.check_timestamps(layout, eps, t.tolerance_s),
            sc.check_metadata(layout, eps),
        ]
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
            },
        }
        if full:
            assert scan.content_stats is not None and scan.frozen is not None and scan.classes is not None
            pairs = cc.shared_pairs(scan.classes, eps.select("episode_index", "rows"), t.min_shared_frames)
            if self._splits is not None:
                splits, source = self._splits, "--split"
            else:
                splits, source = splits_from_info(layout.info), "meta/info.json"
            checks += [
                cc.check_duplicate_frames(scan.classes),
                cc.check_frozen_streams(scan.frozen, frozen_frames, layout.fps),
                cc.check_values(scan.content_stats, features),
                cc.check_constant_dims(scan.content_stats, layout, features),
                cc.check_cross_episode(pairs, scan.candidate_rows),
                cc.check_split_leakage(splits, source, pairs, set(eps["episode_index"].to_list())),
            ]
            info["features"] = features
        self.report = LeakageReport(
            dataset=self.dataset, mode="full" if full else "minimal", checks=checks, info=info
        )
        return self.report
