"""`DatasetLeakageTester`: run the minimal or full leakage checks on one dataset, or several as one collection."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from piperctl.console import progress_bar
from piperctl.errors import PiperctlError
from piperctl.leakage import structure_checks as sc
from piperctl.leakage.across import Member, run_across
from piperctl.leakage.kinematics import lag_pairs
from piperctl.leakage.layout import STRUCT_COLUMNS, Layout, load_layout, validate_columns
from piperctl.leakage.registry import CHECKS, Context
from piperctl.leakage.result import CollectionReport, LeakageReport
from piperctl.leakage.robots import KNOWN_ROBOTS, robot_of
from piperctl.leakage.scan import scan_dataset
from piperctl.leakage.source import resolve_dataset
from piperctl.leakage.splits import parse_split_options, route_split_options, splits_from_info
from piperctl.leakage.thresholds import Thresholds

if TYPE_CHECKING:
    from rich.console import Console


def labels_of(datasets: list[str]) -> list[str]:
    """How messages name each dataset: its folder (or Hub repo) name, the whole string where names clash."""
    short = [Path(d.rstrip("/\\")).name or d for d in datasets]
    return [s if short.count(s) == 1 else d for s, d in zip(short, datasets, strict=True)]


class DatasetLeakageTester:
    """Scan a LeRobot dataset (folder or Hub repo id), or a list of them as one collection, for leakage."""

    def __init__(
        self,
        dataset: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        splits: list[str] | dict[str, list[int]] | None = None,
        thresholds: Thresholds | None = None,
        robot: str | None = None,
        progress: bool = True,
    ) -> None:
        many = isinstance(dataset, Sequence) and not isinstance(dataset, str)
        self.datasets = [str(d) for d in dataset] if many else [str(dataset)]  # type: ignore[union-attr]
        if not self.datasets:
            raise PiperctlError("no dataset given", hint="give one dataset folder or Hub repo id, or several")
        self.dataset = self.datasets[0] if len(self.datasets) == 1 else ", ".join(self.datasets)
        self.labels = labels_of(self.datasets)
        if len(set(self.labels)) < len(self.labels):
            twice = next(d for d in self.datasets if self.datasets.count(d) > 1)
            raise PiperctlError(f"dataset {twice} given twice", hint="give each dataset once")
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
        if isinstance(splits, list) and len(self.datasets) > 1:
            names = [(lb, d) for lb, d in zip(self.labels, self.datasets, strict=True)]
            routed = route_split_options(splits, names)
            self._splits = [parse_split_options(r) if r is not None else None for r in routed]
        else:
            one = parse_split_options(splits) if isinstance(splits, list) else splits
            self._splits = [one] * len(self.datasets)
        self._roots: list[Path] | None = None
        self.layout: Layout | None = None  # the files and metadata read by the last run (the first dataset's)
        self.layouts: list[Layout] = []  # every dataset's, in the order given
        self.report: LeakageReport | CollectionReport | None = None

    def _resolve(self) -> list[Path]:
        # The locations are resolved (and Hub datasets fetched) once; the metadata and file footers
        # are re-read on every run so that a dataset edited in between is seen as it is now.
        if self._roots is None:
            roots = [resolve_dataset(d) for d in self.datasets]
            seen: dict[Path, str] = {}
            for d, r in zip(self.datasets, roots, strict=True):
                same = seen.setdefault(r.resolve(), d)
                if same != d:
                    raise PiperctlError(f"{same} and {d} are the same dataset", hint="give each dataset once")
            self._roots = roots
        return self._roots

    def _load(self) -> Layout:
        """Read the (first) dataset's metadata and file footers, as a run does first."""
        self.layouts = [load_layout(r) for r in self._resolve()]
        self.layout = self.layouts[0]
        return self.layout

    def run_minimal_tests(self) -> LeakageReport | CollectionReport:
        """Checks 1-5, reading only episode_index, frame_index, index, timestamp and the metadata."""
        return self._run(full=False)

    def run_all_tests(self) -> LeakageReport | CollectionReport:
        """All checks: 1-14 per dataset and, for several datasets, the checks across them."""
        return self._run(full=True)

    def print_report(self, console: Console | None = None) -> None:
        """Print the last report as a Rich table (running the full checks first if none ran yet)."""
        from piperctl.leakage.report import print_any

        print_any(self.report or self.run_all_tests(), console=console)

    def _run(self, *, full: bool) -> LeakageReport | CollectionReport:
        self._load()
        if len(self.layouts) == 1:
            self.report = self._scan_one(0, full)[0]
            return self.report
        reports, members = [], []
        for k in range(len(self.layouts)):
            report, member = self._scan_one(k, full)
            reports.append(report)
            members.append(member)
        t = self.thresholds
        across = []
        if full and self.progress:
            with progress_bar(f"comparing {len(members)} datasets", len(members)) as bar:
                across = run_across(members, t.rest_frames, t.min_shared_frames, bar.update)
        elif full:
            across = run_across(members, t.rest_frames, t.min_shared_frames)
        self.report = CollectionReport(
            datasets=self.datasets,
            labels=self.labels,
            mode="full" if full else "minimal",
            reports=reports,
            across=across,  # type: ignore[arg-type]
            info={"frames": sum(r.info["frames"] for r in reports)},
        )
        return self.report

    def _scan_one(self, k: int, full: bool) -> tuple[LeakageReport, Member]:
        layout = self.layouts[k]
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
        of = f", {k + 1}/{len(self.datasets)}" if len(self.datasets) > 1 else ""
        label = f"scanning {layout.root.name} ({'full' if full else 'minimal'}{of})"
        if self.progress:
            with progress_bar(label, layout.rows) as bar:
                scan = scan_dataset(layout, progress=bar.update, **kwargs)  # type: ignore[arg-type]
        else:
            scan = scan_dataset(layout, **kwargs)  # type: ignore[arg-type]
        if len(self.datasets) == 1:
            scan.hashes = []  # only the checks across datasets need them: free 8 bytes a frame now
        eps = sc.per_episode(scan.episodes, scan.runs)
        null_rows = int(scan.episodes.filter(pl.col("episode_index").is_null())["rows"].sum() or 0)
        given = self._splits[k]
        if given is not None:
            splits, source = given, "--split"
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
        report = LeakageReport(
            dataset=self.datasets[k], mode="full" if full else "minimal", checks=checks, info=info
        )
        lengths = eps.filter(pl.col("episode_index").is_not_null()).select("episode_index", "rows")
        member = Member(self.labels[k], layout, scan, lengths, splits, source)
        return report, member
