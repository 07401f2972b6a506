"""The CLI's promises: help, version, and one-line errors with the documented exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from piperctl import __version__
from tests.conftest import one_error_line, python_exe, run_cli


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"piperctl {__version__}"
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "dataset" in out
    code, out, _ = run_cli(["dataset", "synth", "--help"], capsys)
    assert code == 0 and "--episodes" in out and "--force" in out


def test_non_empty_out_refused_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_cli(["dataset", "synth", out, "--cameras", "none"], capsys)
    line = one_error_line(err)
    assert code == 2 and str(out) in line and "--force" in line
    assert (out / "notes.txt").read_text() == "keep me"


def test_out_that_is_a_file_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, _, err = run_cli(["dataset", "synth", f], capsys)
    assert code == 2 and str(f) in one_error_line(err)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--frames", "abc"], "--frames"),
        (["--image-size", "big"], "--image-size"),
        (["--cameras", "a b"], "--cameras"),
        (["--episodes", "0"], "--episodes"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_options_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, _, err = run_cli(["dataset", "synth", tmp_path / "new", *args], capsys)
    assert code == 2 and needle in one_error_line(err)


def test_force_replaces_and_console_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("old")
    exe = Path(python_exe()).with_name("piperctl")
    res = subprocess.run(
        [exe, "dataset", "synth", out, "--episodes", "2", "--frames", "15", "--cameras", "none", "--force"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert f"wrote 2 episodes to {out}" in res.stdout
    assert not (out / "old.txt").exists() and (out / "meta" / "info.json").is_file()
    assert "Traceback" not in res.stderr and "torchcodec" not in res.stderr.lower()


def test_debug_flag_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, _, err = run_cli(["--debug", "dataset", "synth", f], capsys)
    assert code == 2 and "Traceback" in err and "error:" in err
