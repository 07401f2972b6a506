"""π0, π0.5 (and π0-FAST) through lerobot's factory and processors, with tiny offline PaliGemma models."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from piperctl import checkpoints as ckpt
from tests.conftest import (
    act_with_export,
    losses,
    piperctl_start,
    resume_matches,
    run_cli,
    train_command,
)
from tests.pi_models import build_paligemma_tokenizer, install, tiny_pi

RUN = {"steps": 4, "batch_size": 2, "save_every": 2, "num_workers": 0, "seed": 5}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """PaliGemma's tokenizer as a tiny local one, with lerobot's π models made tiny for this module."""
    tok = build_paligemma_tokenizer(tmp_path_factory.mktemp("paligemma") / "tokenizer")
    with pytest.MonkeyPatch.context() as mp:
        install(tok, mp.setattr)
        yield tok


def _train_args(run: Path, ds: Path, policy: str, tok: Path, **overrides: object) -> list[str]:
    return train_command(run, ds, policy, {**RUN, **overrides}, tiny_pi(policy, tok))


def _train(run: Path, ds: Path, policy: str, tok: Path, **overrides: object) -> Path:
    from piperctl import train

    opts = {**RUN, "val_episodes": None, **overrides}
    train(
        run,
        dataset_id="local/tiny",
        dataset_root=str(ds),
        policy=policy,
        policy_options=tiny_pi(policy, tok),
        **opts,
    )
    return run


@pytest.mark.train
def test_a_killed_pi05_run_resumes_bit_exactly_verifies_and_exports(
    tmp_path: Path, tiny_cam_ds: Path, tokenizer: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = _train(tmp_path / "reference", tiny_cam_ds, "pi05", tokenizer)
    run = tmp_path / "run"
    # The SIGKILLed process needs the same tiny models: it installs them before running piperctl.
    args = _train_args(run, tiny_cam_ds, "pi05", tokenizer)
    res = piperctl_start(args, {"PIPERCTL_FAULT": "after-save:2"}, setup=(install, (tokenizer,))).wait(300)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (run / "checkpoint-4").exists()
    resume_matches(run, reference, capsys, "checkpoint-4")
    assert len(losses(run)) == 4
    code, out, err = run_cli(["checkpoints", "verify", run, "--json"], capsys)
    assert code == 0, out + err
    export = tmp_path / "export"
    code, _, err = run_cli(["export", run, export, "--final"], capsys)
    assert code == 0, err
    assert json.loads((export / ckpt.POLICY_CONFIG).read_text())["type"] == "pi05"
    act_with_export(export, tiny_cam_ds)


@pytest.mark.train
@pytest.mark.parametrize("policy", ["pi0", "pi0_fast"])
def test_a_tiny_pi_model_trains_verifies_and_its_export_loads_in_lerobot(
    tmp_path: Path, tiny_cam_ds: Path, tokenizer: Path, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train(tmp_path / "run", tiny_cam_ds, policy, tokenizer, steps=2)
    assert ckpt.check_checkpoint(run / "checkpoint-2").ok
    code, out, err = run_cli(["checkpoints", "verify", run, "--json"], capsys)
    assert code == 0, out + err
    export = tmp_path / "export"
    code, _, err = run_cli(["export", run, export, "--final"], capsys)
    assert code == 0, err
    assert json.loads((export / ckpt.POLICY_CONFIG).read_text())["type"] == policy
    act_with_export(export, tiny_cam_ds)
