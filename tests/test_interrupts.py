"""Ctrl-C: one line saying what was kept (or that nothing was written), exit 130, never a silent exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_interrupted(patch: str, args: list[str]) -> subprocess.CompletedProcess:
    """`piperctl ARGS` in a new process where `patch` (Python) makes the command receive SIGINT."""
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        {patch}
        from piperctl.cli import main
        main({args!r})
        """
    ).format(patch=textwrap.dedent(patch), args=[str(a) for a in args])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        # A shell's background job starts with SIGINT ignored; a user's terminal does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _last_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and "Traceback" not in err, err
    return lines[-1]


SCAN_LIKE_POLARS = """
    from piperctl.leakage import tester

    def scan(self):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        except BaseException:
            # polars raises the interrupt it took, then delivers SIGINT once more
            os.kill(os.getpid(), signal.SIGINT)
            raise

    tester.DatasetLeakageTester.run_all_tests = scan
"""


def test_ctrl_c_during_a_leakage_scan_is_one_line(state_dataset: Path) -> None:
    res = _run_interrupted(SCAN_LIKE_POLARS, ["leakage", "full", state_dataset, "--no-progress"])
    assert res.returncode == 130, res.stderr
    assert _last_line(res.stderr) == "error: interrupted: nothing was written"


def test_ctrl_c_during_an_export_push_says_what_was_kept(reference_run: Path, tmp_path: Path) -> None:
    patch = """
        from piperctl.checkpoints import export

        export.hub_preflight = lambda repo_id: None

        def push(folder, repo_id, private):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)

        export.push_folder = push
    """
    out = tmp_path / "export"
    res = _run_interrupted(patch, ["export", reference_run, out, "--push-to-hub", "me/piper_act"])
    assert res.returncode == 130, res.stderr
    line = _last_line(res.stderr)
    assert line.startswith(f"error: interrupted: {out} was written; nothing was pushed to me/piper_act")
    assert f"piperctl export {out} --push-to-hub me/piper_act" in line
    assert (out / "model.safetensors").is_file() and (out / "manifest.json").is_file()


def test_a_parent_that_ignores_sigint_keeps_it_ignored(state_dataset: Path) -> None:
    patch = """
        from piperctl.leakage import tester

        def scan(self):
            os.kill(os.getpid(), signal.SIGINT)  # ignored, as for a background job
            raise SystemExit(7)

        tester.DatasetLeakageTester.run_all_tests = scan
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    """
    res = _run_interrupted(patch, ["leakage", "full", state_dataset, "--no-progress"])
    assert res.returncode == 7, res.stderr
