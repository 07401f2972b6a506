"""Terminal output: a progress bar of a resumed run starts at the resumed step."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from piperctl import console


def test_plain_progress_starts_at_the_resumed_step(capsys: pytest.CaptureFixture[str]) -> None:
    with console.progress_bar("training", 30, start=20, log_every_s=0.0) as bar:
        bar.update(1, loss="0.5")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "training: 20/30"
    assert lines[1] == "training: 21/30 loss 0.5"


def test_live_progress_starts_at_the_resumed_step(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=screen, force_terminal=True, width=100))
    monkeypatch.setattr(console, "is_interactive", lambda: True)
    with console.progress_bar("training", 30, start=20) as bar:
        assert bar.progress is not None and bar.task_id is not None
        assert bar.progress.tasks[0].completed == 20
        bar.update(1)
    assert "21/30" in screen.getvalue() and "0/30" not in screen.getvalue().replace("20/30", "")
