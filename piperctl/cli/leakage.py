"""`piperctl leakage full|minimal DATASET...` (also `piperctl leakage DATASET... [--minimal]`): the Polars dataset scans."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from piperctl.cli.common import COMMAND, sub_app
from piperctl.cli.help import HelpGroup
from piperctl.errors import PiperctlError
from piperctl.fs import atomic_write
from piperctl.leakage.thresholds import Thresholds  # light: no polars until a scan runs


class _LeakageGroup(HelpGroup):
    """`leakage` sub-commands, where a first word that names no sub-command is the DATASET of `full`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["full", *args]
        return super().parse_args(ctx, args)


class _FailOn(StrEnum):
    warn = "warn"
    fail = "fail"


leakage_app = sub_app(
    cls=_LeakageGroup,
    help=(
        "Scan a LeRobot dataset, or several as one collection, for leakage and integrity faults. "
        "'piperctl leakage DATASET...' runs 'full'; add --minimal for the quick index/timestamp checks."
    ),
)

_LkDataset = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dataset folder or Hub repo id (owner/name); several: scanned as one collection, "
        "also for episodes shared between them.",
        show_default=False,
    ),
]
_LkRoot = Annotated[Path | None, typer.Option("--dataset-root", help="Dataset folder (instead of DATASET).")]
_LkJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON (see docs/leakage.md).")]
_LkMarkdown = Annotated[
    Path | None, typer.Option("--markdown", help="Also write the report as Markdown to FILE.", metavar="FILE")
]
_LkFailOn = Annotated[_FailOn, typer.Option("--fail-on", help="Exit 1 when a check reaches this status.")]
_LkSplit = Annotated[
    list[str] | None,
    typer.Option(
        "--split",
        help="NAME=RANGES, e.g. val=40:50 (repeatable; default: splits in meta/info.json); "
        "DATASET:NAME=RANGES for one of several datasets.",
    ),
]
_LkTolerance = Annotated[
    float, typer.Option("--tolerance-s", help="Allowed timestamp step error (s).", min=0.0)
]
_LkFrozen = Annotated[
    float, typer.Option("--frozen-seconds", help="Report float vector streams frozen this long.", min=0.0)
]
_LkShared = Annotated[
    int,
    typer.Option("--min-shared-frames", help="Report episode pairs sharing at least N moving frames.", min=1),
]
_LkRest = Annotated[
    int,
    typer.Option(
        "--rest-frames", help="A pose held N identical frames in a row is a rest pose, never a copy.", min=1
    ),
]
_LkChunk = Annotated[
    int | None,
    typer.Option("--chunk-size", help="Report episodes shorter than the policy's action chunk.", min=1),
]
_LkRobot = Annotated[
    str | None,
    typer.Option(
        "--robot", help="Robot profile: piper, or none (default: from robot_type in meta/info.json)."
    ),
]
_LkProgress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show scan progress on stderr.")]


@dataclass
class _LeakageOptions:
    """What one `piperctl leakage` call asked for, besides the dataset."""

    minimal: bool = False
    json_out: bool = False
    markdown: Path | None = None
    fail_on: _FailOn = _FailOn.fail
    split: list[str] | None = None
    robot: str | None = None
    progress: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)


def _leakage_run(datasets: list[str] | None, dataset_root: Path | None, opts: _LeakageOptions) -> None:
    from piperctl.leakage import DatasetLeakageTester
    from piperctl.leakage.report import print_any, to_json, to_markdown

    if datasets and dataset_root is not None:
        raise PiperctlError("give DATASET or --dataset-root, not both")
    target: str | Path | list[str] | None = dataset_root
    if datasets:
        target = datasets[0] if len(datasets) == 1 else datasets
    if target is None:
        raise PiperctlError(
            "no dataset given", hint="run 'piperctl leakage full DATASET' or pass --dataset-root"
        )
    tester = DatasetLeakageTester(
        target,
        splits=opts.split or None,
        thresholds=opts.thresholds,
        robot=opts.robot,
        progress=opts.progress,
    )
    report = tester.run_minimal_tests() if opts.minimal else tester.run_all_tests()
    if opts.markdown is not None:
        try:
            atomic_write(opts.markdown, to_markdown(report))
        except OSError as e:
            raise PiperctlError(f"cannot write {opts.markdown}: {e.strerror or e}") from e
    if opts.json_out:
        typer.echo(to_json(report))
    else:
        print_any(report)
    raise typer.Exit(1 if report.failed(opts.fail_on.value) else 0)


_TH = Thresholds()  # the one place the defaults come from


@leakage_app.command("full", **COMMAND)
def leakage_full(
    dataset: _LkDataset = None,
    dataset_root: _LkRoot = None,
    minimal: Annotated[bool, typer.Option("--minimal", help="Run only the minimal checks.")] = False,
    json_out: _LkJson = False,
    markdown: _LkMarkdown = None,
    fail_on: _LkFailOn = _FailOn.fail,
    split: _LkSplit = None,
    tolerance_s: _LkTolerance = _TH.tolerance_s,
    frozen_seconds: _LkFrozen = _TH.frozen_seconds,
    min_shared_frames: _LkShared = _TH.min_shared_frames,
    rest_frames: _LkRest = _TH.rest_frames,
    chunk_size: _LkChunk = _TH.chunk_size,
    robot: _LkRobot = None,
    progress: _LkProgress = True,
) -> None:
    """Every check: indices, timestamps, metadata, content, leakage, kinematics, units, videos."""
    thresholds = replace(
        _TH,
        tolerance_s=tolerance_s,
        frozen_seconds=frozen_seconds,
        min_shared_frames=min_shared_frames,
        rest_frames=rest_frames,
        chunk_size=chunk_size,
    )
    _leakage_run(
        dataset,
        dataset_root,
        _LeakageOptions(minimal, json_out, markdown, fail_on, split, robot, progress, thresholds),
    )


@leakage_app.command("minimal", **COMMAND)
def leakage_minimal(
    dataset: _LkDataset = None,
    dataset_root: _LkRoot = None,
    json_out: _LkJson = False,
    markdown: _LkMarkdown = None,
    fail_on: _LkFailOn = _FailOn.fail,
    tolerance_s: _LkTolerance = _TH.tolerance_s,
    progress: _LkProgress = True,
) -> None:
    """Quick checks reading only episode_index, frame_index, index, timestamp and the metadata."""
    opts = _LeakageOptions(
        minimal=True,
        json_out=json_out,
        markdown=markdown,
        fail_on=fail_on,
        progress=progress,
        thresholds=replace(_TH, tolerance_s=tolerance_s),
    )
    _leakage_run(dataset, dataset_root, opts)
