"""Render a leakage report: a Rich table on the terminal, JSON for machines, Markdown for PRs."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from piperctl.leakage.result import LeakageReport, ids_text

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


def print_report(report: LeakageReport, console: Console | None = None) -> None:
    """Print the table of checks with status, episode counts and the first offending episodes."""
    from piperctl.console import out

    console = console or out
    if not console.is_terminal and console.width < 120:
        # Piped output gets Rich's 80 columns, too narrow for the summaries; files and CI logs take 120.
        console = Console(file=console.file, width=120)
    # Dataset paths, dimension names like `state[joint_4.pos]` and messages are not Rich markup.
    table = Table(title=escape(_header(report)), title_justify="left", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("episodes", justify="right")
    table.add_column("first episodes", no_wrap=True)
    table.add_column("summary", overflow="fold")
    for c in report.checks:
        style = _STYLE[c.status]
        table.add_row(
            escape(c.title),
            f"[{style}]{c.status.upper()}[/]",
            str(c.count),
            ids_text(c.episodes, 6) if c.episodes else "",
            escape(c.summary),
        )
    console.print(table)
    console.print(f"overall: [{_STYLE[report.status]}]{report.status.upper()}[/]", highlight=False)


def to_json(report: LeakageReport) -> str:
    """The report in the JSON contract of docs/leakage.md."""
    return json.dumps(report.to_dict(), indent=2, default=str)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: LeakageReport) -> str:
    """The report as a Markdown table, for pull requests and dataset cards."""
    lines = [
        f"# Leakage report: {report.dataset}",
        "",
        _header(report) + f". Overall status: **{report.status.upper()}**.",
        "",
        "| check | status | episodes | first episodes | summary |",
        "|---|---|---:|---|---|",
    ]
    for c in report.checks:
        lines.append(
            f"| {c.title} | {c.status.upper()} | {c.count} | {ids_text(c.episodes, 10)} | {_md_cell(c.summary)} |"
        )
    details = [c for c in report.checks if c.findings]
    if details:
        lines += ["", "## Findings", ""]
        for c in details:
            lines.append(f"### {c.title} ({c.status})")
            lines.append("")
            for f in c.findings[:50]:
                lines.append(f"- **{f.status}** {_md_cell(f.message)}")
            if len(c.findings) > 50:
                lines.append(f"- … and {len(c.findings) - 50} more (see `--json`)")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
