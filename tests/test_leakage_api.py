"""The Python API: DatasetLeakageTester, the report object, and the pieces users call directly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from piperctl.errors import PiperctlError
from piperctl.leakage import CheckResult, DatasetLeakageTester, Finding, LeakageReport
from piperctl.leakage.report import to_json, to_markdown
from piperctl.leakage.splits import parse_split_options, splits_from_info
from tests.leakage_data import frames, set_rows, write


def test_documented_usage(tmp_path: Path) -> None:
    """`DatasetLeakageTester("./output"); results = tester.run_all_tests(); tester.print_report()`."""
    root = write(tmp_path / "output", set_rows(frames(), "timestamp", [60], [0.0]))
    tester = DatasetLeakageTester(str(root), progress=False)
    results = tester.run_all_tests()
    assert isinstance(results, LeakageReport) and results.mode == "full" and results.status == "fail"
    assert results.check("timestamps").episodes == [1]
    buf = io.StringIO()
    tester.print_report(console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "Timestamps" in text and "FAIL" in text and "Cross-episode contamination" in text
    minimal = tester.run_minimal_tests()
    assert minimal.mode == "minimal" and len(minimal.checks) == 5
    assert tester.report is minimal


def test_print_report_runs_the_full_checks_when_none_ran(tmp_path: Path) -> None:
    tester = DatasetLeakageTester(write(tmp_path / "ds", frames()), progress=False)
    buf = io.StringIO()
    tester.print_report(console=Console(file=buf, width=200))
    assert tester.report is not None and tester.report.mode == "full" and "overall: PASS" in buf.getvalue()


def test_errors_are_piperctl_errors(tmp_path: Path) -> None:
    with pytest.raises(PiperctlError) as exc:
        DatasetLeakageTester(tmp_path / "missing").run_minimal_tests()
    assert exc.value.exit_code == 2


def test_episode_lists_are_capped_but_counted() -> None:
    """The contract lists the first 1000 episodes of a check and counts them all."""
    check = CheckResult("x", "X", findings=[Finding("k", "fail", list(range(1500)), "many")])
    doc = check.to_dict()
    assert doc["count"] == 1500 and doc["episodes"] == list(range(1000))
    report = LeakageReport("ds", "full", [check])
    assert json.loads(to_json(report))["checks"][0]["count"] == 1500


def test_markdown_escapes_pipes() -> None:
    check = CheckResult("x", "X", findings=[Finding("k", "warn", [3], "a | b")])
    md = to_markdown(LeakageReport("ds", "full", [check]))
    assert "a \\| b" in md and "| X | WARN | 1 | 3 |" in md


def test_split_parsing() -> None:
    assert parse_split_options(["train=0:3,5", "val=3:5"]) == {"train": [0, 1, 2, 5], "val": [3, 4]}
    assert splits_from_info({"splits": {"train": "0:2", "test": "2:4"}}) == {"train": [0, 1], "test": [2, 3]}
    assert splits_from_info({}) == {}
    for bad in (["nosign"], ["=0:3"], ["train=3:1"], ["train=x"]):
        with pytest.raises(PiperctlError):
            parse_split_options(bad)


def test_splits_from_python_api(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", frames())
    report = DatasetLeakageTester(
        root, splits={"train": [0, 1, 2], "val": [2, 3]}, progress=False
    ).run_all_tests()
    assert report.check("split_leakage").episodes == [2]


def test_the_report_reads_on_an_80_column_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five columns in 80 squeezed each summary to a word per line: narrow terminals get one check per paragraph."""
    monkeypatch.setenv("COLUMNS", "80")
    root = write(tmp_path / "ds", set_rows(frames(), "timestamp", [60], [0.0]))
    tester = DatasetLeakageTester(str(root), progress=False)
    buf = io.StringIO()
    tester.print_report(console=Console(file=buf, width=80))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    timestamps = next(i for i, line in enumerate(lines) if "Timestamps" in line)
    assert lines[timestamps].startswith("FAIL  Timestamps (1 episode: 1)"), lines[timestamps]
    assert lines[timestamps + 1].startswith("      ") and len(lines[timestamps + 1].split()) > 3
