"""Vision-language-action policies (smolVLA) through lerobot's factory and processors, with tiny offline models."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from piperctl import checkpoints as ckpt
from tests.conftest import (
    act_with_export,
    hide_package,
    one_error_line,
    piperctl_cli,
    resume_matches,
    run_cli,
    train_command,
)
from tests.vla_models import build_smolvlm, tiny_smolvla

RUN = {"steps": 4, "batch_size": 2, "save_every": 2, "num_workers": 0, "seed": 5, "val_episodes": None}


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SmolVLM (config, processor, word-level tokenizer) in a local folder."""
    return build_smolvlm(tmp_path_factory.mktemp("vlm") / "smolvlm")


def _args(run: Path, ds: Path, vlm: Path) -> list[str]:
    return train_command(run, ds, "smolvla", RUN, tiny_smolvla(vlm))


@pytest.fixture(scope="module")
def smolvla_run(tmp_path_factory: pytest.TempPathFactory, tiny_cam_ds: Path, vlm: Path) -> Path:
    """An uninterrupted 4-step tiny smolVLA run on the one-camera dataset (checkpoints at 2 and 4)."""
    from piperctl import train

    run = tmp_path_factory.mktemp("smolvla") / "run"
    opts = {k: v for k, v in RUN.items() if v is not None}
    train(run, dataset_id="local/tiny", dataset_root=str(tiny_cam_ds), policy="smolvla",
          policy_options=tiny_smolvla(vlm), **opts)  # fmt: skip
    return run


@pytest.mark.train
def test_a_killed_smolvla_run_resumes_bit_exactly_verifies_and_exports(
    tmp_path: Path, tiny_cam_ds: Path, vlm: Path, smolvla_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    run = tmp_path / "run"
    res = piperctl_cli(_args(run, tiny_cam_ds, vlm), env={"PIPERCTL_FAULT": "after-save:2"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    resume_matches(run, smolvla_run, capsys, "checkpoint-4")
    code, out, err = run_cli(["checkpoints", "verify", run, "--json"], capsys)
    assert code == 0, out + err
    export = tmp_path / "export"
    code, _, err = run_cli(["export", run, export, "--final"], capsys)
    assert code == 0, err
    act_with_export(export, tiny_cam_ds)
    assert json.loads((export / ckpt.POLICY_CONFIG).read_text())["type"] == "smolvla"


@pytest.mark.train
def test_smolvla_lora_uses_the_policys_default_targets(
    tmp_path: Path, tiny_cam_ds: Path, smolvla_run: Path
) -> None:
    from safetensors.torch import load_file

    from piperctl import train

    run = tmp_path / "lora"
    init = str(smolvla_run / ckpt.PRETRAINED_DIR)
    opts = {**{k: v for k, v in RUN.items() if v is not None}, "steps": 2}
    train(run, dataset_id="local/tiny", dataset_root=str(tiny_cam_ds), policy="smolvla", init_from=init,
          peft="lora", peft_options={"r": 2}, **opts)  # fmt: skip
    saved = load_file(str(run / "checkpoint-2" / ckpt.POLICY_WEIGHTS))
    # smolVLA's _get_default_peft_targets: the expert's q/v projections and the state/action projections.
    assert any(".lm_expert." in k and ".q_proj.lora_A." in k for k in saved), sorted(saved)
    assert any(".state_proj.lora_A." in k for k in saved) and all(".lora_" in k for k in saved)
    assert ckpt.check_checkpoint(run / "checkpoint-2").ok


def test_a_vla_not_cached_offline_is_one_line_naming_the_model(
    tmp_path: Path, tiny_cam_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--output-dir", tmp_path / "run", "--dataset-root", tiny_cam_ds, "--policy", "smolvla"]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and "HuggingFaceTB/SmolVLM2-500M-Video-Instruct" in line and "HF_HUB_OFFLINE" in line


def test_a_vla_without_transformers_is_one_line_naming_the_extra(
    tmp_path: Path, tiny_cam_ds: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hide_package(monkeypatch, "transformers")
    args = ["train", "--output-dir", tmp_path / "run", "--dataset-root", tiny_cam_ds, "--policy", "pi05"]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and "transformers" in line and "pip install 'piperctl[vla]'" in line


@pytest.mark.train
def test_init_from_a_vla_base_follows_lerobots_feature_rules(
    tmp_path: Path, tiny_ds: Path, tiny_cam_ds: Path, smolvla_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    base = smolvla_run / ckpt.PRETRAINED_DIR
    args = ["train", "--output-dir", tmp_path / "run", "--policy", "smolvla", "--init-from"]
    # The base reads a camera this dataset lacks: named in one line (lerobot-train would need a rename map).
    code, _, err = run_cli([*args, base, "--dataset-root", tiny_ds], capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and "observation.images.front" in line and "rename" in line
    # A 7-value state does not fit a base that pads state to 4 values.
    small = tmp_path / "small_base"
    shutil.copytree(base, small)
    (small / ckpt.MANIFEST).unlink()  # a plain lerobot folder, edited by hand
    config = json.loads((small / ckpt.POLICY_CONFIG).read_text())
    (small / ckpt.POLICY_CONFIG).write_text(json.dumps({**config, "max_state_dim": 4}))
    code, _, err = run_cli([*args, small, "--dataset-root", tiny_cam_ds], capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and "observation.state has 7 values" in line and "max_state_dim (4)" in line
