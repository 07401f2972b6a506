"""Render a leakage report: a Rich table on the terminal, JSON for machines, Markdown for PRs."""

from __future__ import annotations

import json
import os

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from piperctl.leakage.result import CheckResult, CollectionReport, LeakageReport, ids_text

_STYLE = {"pass": "green", "skip": "dim", "warn": "yellow", "fail": "bold red"}


def _header(report: LeakageReport) -> str:
    i = report.info
    text = (
        f"{report.dataset}: LeRobot {i.get('codebase_version', '?')}, {i.get('episodes', '?')} episodes, "
        f"{i.get('frames', '?')} frames at {i.get('fps', 0):g} fps — {report.mode} scan"
    )
    conventions = i.get("conventions")
    if conventions:
        parts = []
        for feature, units in conventions.items():
            joints = {v for k, v in units.items() if "gripper" not in k.lower()}
            grip = [v for k, v in units.items() if "gripper" in k.lower()]
            what = []
            if joints:
                what.append("joints " + "/".join(sorted(joints)))
            if grip:
                what.append("gripper " + "/".join(grip))
            parts.append(f"{feature} {', '.join(what)}")
        text += f"\n{i.get('robot', 'robot')} convention: " + "; ".join(parts)
    return text


def _console(console: Console | None) -> Console:
    from piperctl.console import out

    console = console or out
    if not console.is_terminal and console.width < 120 and not os.environ.get("COLUMNS"):
        # Piped output gets Rich's 80 columns, too narrow for the summaries; files and CI logs take 120
        # (unless COLUMNS says otherwise, as it does for a terminal).
        console = Console(file=console.file, width=120)
    return console


def print_report(report: LeakageReport, console: Console | None = None) -> None:
    """Print the table of checks with status, episode counts and the first offending episodes."""
    console = _console(console)
    _print_table(console, _header(report), report.checks)
    console.print(f"overall: [{_STYLE[report.status]}]{report.status.upper()}[/]", highlight=False)


def print_collection(report: CollectionReport, console: Console | None = None) -> None:
    """Print each dataset's table, then the table of the checks across them, then the overall status."""
    console = _console(console)
    for label, r in zip(report.labels, report.reports, strict=True):
        _print_table(console, f"[{label}] " + _header(r), r.checks)
        console.print(f"{label}: [{_STYLE[r.status]}]{r.status.upper()}[/]", highlight=False)
        console.print()
    if report.across:
        title = f"across {len(report.labels)} datasets ({', '.join(report.labels)}) — episodes named DATASET:EPISODE"
        _print_table(console, title, report.across)
    else:
        console.print("across datasets: the minimal scan reads no content; run 'full' to compare datasets")
    console.print(f"overall: [{_STYLE[report.status]}]{report.status.upper()}[/]", highlight=False)


def print_any(report: LeakageReport | CollectionReport, console: Console | None = None) -> None:
    """Print a report of one dataset or of several."""
    if isinstance(report, CollectionReport):
        print_collection(report, console)
    else:
        print_report(report, console)


# Below this width the five columns squeeze the summary to a word per line: one check per paragraph.
_TABLE_MIN_WIDTH = 100


def _print_table(console: Console, title: str, checks: list[CheckResult]) -> None:
    if console.width < _TABLE_MIN_WIDTH:
        _print_list(console, title, checks)
        return
    # Dataset paths, dimension names like `state[joint_4.pos]` and messages are not Rich markup.
    table = Table(title=escape(title), title_justify="left", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("episodes", justify="right")
    table.add_column("first episodes", no_wrap=True)
    table.add_column("summary", overflow="fold")
    for c in checks:
        style = _STYLE[c.status]
        table.add_row(
            escape(c.title),
            f"[{style}]{c.status.upper()}[/]",
            str(c.count),
            ids_text(c.episodes, 6) if c.episodes else "",
            escape(c.summary),
        )
    console.print(table)


def _print_list(console: Console, title: str, checks: list[CheckResult]) -> None:
    """The table's content for a narrow terminal: status and check on one line, the summary below."""
    console.print(Text(title))
    for c in checks:
        line = Text.assemble((f"{c.status.upper():<5}", _STYLE[c.status]), " ", c.title)
        if c.count:
            noun = "episode" if c.count == 1 else "episodes"
            line.append(f" ({c.count} {noun}" + (f": {ids_text(c.episodes, 6)})" if c.episodes else ")"))
        console.print(line)
        if c.summary:
            console.print(Padding(Text(c.summary, style="dim"), (0, 0, 0, 6)))


def to_json(report: LeakageReport | CollectionReport) -> str:
    """The report in the JSON contract of docs/leakage.md."""
    return json.dumps(report.to_dict(), indent=2, default=str)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: LeakageReport | CollectionReport) -> str:
    """The report as a Markdown table, for pull requests and dataset cards."""
    if isinstance(report, CollectionReport):
        return _collection_markdown(report)
    lines = [
        f"# Leakage report: {report.dataset}",
        "",
        _header(report) + f". Overall status: **{report.status.upper()}**.",
        "",
        *_md_checks(report.checks),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _collection_markdown(report: CollectionReport) -> str:
    lines = [
        f"# Leakage report: {len(report.labels)} datasets",
        "",
        f"Datasets {', '.join(report.labels)}, {report.mode} scan. Overall status: **{report.status.upper()}**.",
        "",
    ]
    for label, r in zip(report.labels, report.reports, strict=True):
        lines += [
            f"## {label}",
            "",
            _header(r) + f". Status: **{r.status.upper()}**.",
            "",
            *_md_checks(r.checks, "###"),
        ]
    lines += ["## Across datasets", ""]
    if report.across:
        lines += ["Episodes are named DATASET:EPISODE.", "", *_md_checks(report.across, "###")]
    else:
        lines += ["The minimal scan reads no content; run `full` to compare datasets.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _md_checks(checks: list[CheckResult], level: str = "##") -> list[str]:
    lines = [
        "| check | status | episodes | first episodes | summary |",
        "|---|---|---:|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| {c.title} | {c.status.upper()} | {c.count} | {ids_text(c.episodes, 10)} | {_md_cell(c.summary)} |"
        )
    details = [c for c in checks if c.findings]
    if details:
        lines += ["", f"{level} Findings", ""]
        for c in details:
            lines.append(f"{level}# {c.title} ({c.status})")
            lines.append("")
            for f in c.findings[:50]:
                lines.append(f"- **{f.status}** {_md_cell(f.message)}")
            if len(c.findings) > 50:
                lines.append(f"- … and {len(c.findings) - 50} more (see `--json`)")
            lines.append("")
    return [*lines, ""]
