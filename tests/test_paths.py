"""Paths are paths: a dataset folder named with brackets, spaces and non-ASCII trains and evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, train_tiny


@pytest.mark.train
def test_a_bracketed_dataset_folder_trains_and_evaluates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from piperctl.datasets.synth import SynthConfig, synthesize

    # `datasets` reads lerobot's parquet paths as glob patterns: '[v1]' once made this dataset look empty.
    ds = synthesize(
        tmp_path / "data [v1] é" / "ds",
        SynthConfig(episodes=3, frames=(12, 14), cameras=[], env_state=True, seed=4),
    )
    run = tmp_path / "run"
    result = train_tiny(run, ds, steps=2, save_every=2, batch_size=2)
    assert result.step == 2 and (run / "checkpoint-2").is_dir()
    code, stdout, err = run_cli(["eval", run, "--dataset-root", ds, "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["episodes"]["ids"] == [2] and report["summary"]["policy"] is not None
