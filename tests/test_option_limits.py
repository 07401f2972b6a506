"""Count options are bounded by what their types and time allow: a typo is one line, not a run that never ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import one_error_line, run_cli, train_args


@pytest.mark.parametrize(
    "option,value,limit",
    [
        ("--steps", "100000000000000000000000", "1,000,000,000"),
        ("--batch-size", "99999999", "1,048,576"),
        ("--num-workers", "5000", "1,024"),
        ("--seed", str(2**70), "9,223,372,036,854,775,807"),
    ],
)
def test_counts_beyond_their_limit_are_one_line(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, limit: str
) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli([*train_args(run, tiny_ds), option, value], capsys)
    line = one_error_line(err)
    assert code == 2 and f"{option} {value} is beyond the limit of {limit}" in line
    assert not run.exists() or not any(run.iterdir())  # refused before anything was written
