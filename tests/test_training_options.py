"""Training like lerobot-train: mixed precision, gradient accumulation, augmentation, trackers and
background saves, each resumed exactly."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from piperctl import checkpoints as ckpt
from tests.conftest import (
    assert_same_optimizer_state,
    assert_same_weights,
    losses,
    one_error_line,
    piperctl_cli,
    resume_matches,
    run_cli,
    train_args,
    train_tiny,
)


def _state(folder: Path) -> dict:
    return json.loads((folder / ckpt.TRAINING_STATE).read_text())


@pytest.mark.parametrize(
    "option,value,fault",
    [
        ("precision", "bf16", "after-save:4"),
        ("precision", "fp16", "after-save:4"),
        ("grad_accum", 2, "after-save:4"),
        ("augment", True, "kill:5"),
    ],
)
@pytest.mark.train
def test_resume_is_exact_with(
    option: str,
    value: object,
    fault: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Augmentation transforms camera frames: its runs need a camera (and compare with the camera run).
    ds = request.getfixturevalue("tiny_cam_ds" if option == "augment" else "tiny_ds")
    plain = request.getfixturevalue("cam_run" if option == "augment" else "reference_run")
    ref = tmp_path / "ref"
    train_tiny(ref, ds, **{option: value})  # checkpoints at 4 and 8: the faults strike after step 4
    run = tmp_path / "run"
    flag = f"--{option.replace('_', '-')}"
    extra = [flag] if value is True else [flag, str(value)]
    res = piperctl_cli([*train_args(run, ds), *extra], env={"PIPERCTL_FAULT": fault})
    assert res.returncode == -signal.SIGKILL, res.stderr
    resume_matches(run, ref, capsys)
    assert_same_optimizer_state(run / "checkpoint-8", ref / "checkpoint-8")
    state = _state(run / "checkpoint-8")
    # The option really changed training: not the fp32 / batch-4 / plain reference (the camera run has
    # 4 of its 8 steps, with the same data order: its losses are a plain run's first 4).
    assert losses(run)[: len(losses(plain))] != losses(plain)
    if option == "precision":
        assert state["config"]["precision"] == value
        assert (state["scaler"] is not None) == (value == "fp16")
    if option == "grad_accum":
        assert state["effective_batch_size"] == 8 and state["grad_accum"] == 2
        assert state["samples_seen"] == 8 * 8
    if option == "augment":
        assert state["config"]["augment"] is True


@pytest.mark.train
def test_use_amp_picks_the_precision_lerobot_train_would(tmp_path: Path, tiny_ds: Path) -> None:
    run = tmp_path / "run"
    train_tiny(run, tiny_ds, steps=2, save_every=2, policy_options={"use_amp": True, **_tiny_act()})
    # On CPU torch's autocast dtype is bfloat16, as lerobot-train derives it from use_amp.
    assert _state(run / "checkpoint-2")["config"]["precision"] == "bf16"


def _tiny_act() -> dict:
    from tests.conftest import TINY_ACT

    return dict(TINY_ACT)


def test_augmentation_touches_training_batches_only(tmp_path: Path, tiny_cam_ds: Path) -> None:
    from piperctl.training.config import TrainConfig
    from piperctl.training.trainer import Trainer

    cfg = TrainConfig.from_options(
        tmp_path / "run",
        None,
        {
            "dataset_root": str(tiny_cam_ds),
            "policy_options": _tiny_act(),
            "augment": True,
            "val_episodes": "1",
        },
    )
    trainer = Trainer(cfg, tmp_path / "run", "test")
    trainer.setup(None)
    feed = trainer.feed
    assert feed.loader.dataset.transform is not None
    assert feed.val_loaders and all(loader.dataset.transform is None for _, loader in feed.val_loaders)
    train_item = feed.loader.dataset[(0, 0)]
    plain = feed.dataset[0]
    camera = trainer.split.meta.camera_keys[0]
    assert not torch.equal(train_item[camera], plain[camera])
    assert torch.equal(feed.loader.dataset[(0, 0)][camera], train_item[camera])  # seeded per sample


@pytest.mark.train
def test_augment_config_file(tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "aug.toml"
    good.write_text("max_num_transforms = 1\nrandom_order = true\n")
    run = tmp_path / "run"
    code, _, err = run_cli(
        [*train_args(run, tiny_ds, steps=2, save_every=2), "--augment-config", good], capsys
    )
    assert code == 0, err
    assert _state(run / "checkpoint-2")["config"]["augment"] is True
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_field = 3\n")
    code, _, err = run_cli(
        [*train_args(tmp_path / "run2", tiny_ds, steps=2), "--augment-config", bad], capsys
    )
    line = one_error_line(err, after_logs=True)
    assert code == 2 and str(bad) in line


@pytest.mark.train
def test_tensorboard_logs_the_metrics_and_resume_continues_the_same_run(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    res = piperctl_cli(
        [*train_args(run, tiny_ds, save_every=2), "--tracker", "tensorboard"],
        env={"PIPERCTL_FAULT": "kill:5"},
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    code, _, err = run_cli(["resume", run], capsys)
    assert code == 0, err
    run_id = json.loads((run / ckpt.RUN_FILE).read_text())["run_id"]
    logdirs = [p for p in (run / "tensorboard").iterdir() if p.is_dir()]
    assert [p.name for p in logdirs] == [run_id]  # one tracker run, continued
    events = EventAccumulator(str(logdirs[0]))
    events.Reload()
    loss = events.Scalars("loss")
    # Steps 5 (logged before the kill, past checkpoint-4) were purged: one history, as in metrics.jsonl.
    files = sorted(p.name for p in logdirs[0].iterdir())
    assert [e.step for e in loss] == list(range(1, 9)), (files, res.stderr[-2000:], err[-2000:])
    assert [e.value for e in loss] == pytest.approx(losses(run), rel=1e-6)


def test_an_unknown_tracker_is_one_line(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli([*train_args(tmp_path / "run", tiny_ds), "--tracker", "neptune"], capsys)
    line = one_error_line(err)
    assert code == 2 and "--tracker 'neptune' is not valid" in line


def test_background_and_synchronous_saves_write_the_same_checkpoints(
    tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli([*train_args(run, tiny_ds, save_every=2, keep_last=2), "--sync-save"], capsys)
    assert code == 0, err
    assert losses(run) == losses(reference_run)
    for name in ("checkpoint-6", "checkpoint-8"):
        assert_same_weights(run / name, reference_run / name)
        assert_same_optimizer_state(run / name, reference_run / name)
        assert _state(run / name)["samples_seen"] == _state(reference_run / name)["samples_seen"]


def test_sigterm_with_a_background_save_in_flight_waits_for_it(
    tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    # SIGTERM right after step 4, whose checkpoint is then being written in the background.
    res = piperctl_cli(
        train_args(run, tiny_ds, save_every=2, keep_last=2), env={"PIPERCTL_FAULT": "sigterm:4"}
    )
    assert res.returncode == 128 + signal.SIGTERM, res.stderr
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert ckpt.check_checkpoint(run / "checkpoint-4").ok
    assert not [p for p in run.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]
    resume_matches(run, reference_run, capsys)


@pytest.mark.train
def test_the_frame_cache_trains_exactly_as_reading_the_videos(
    tmp_path: Path, synth_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {}
    for name, flag in (("cached", "--frame-cache"), ("videos", "--no-frame-cache")):
        run = tmp_path / name
        args = [*train_args(run, synth_dataset, steps=3, save_every=3, num_workers=2), flag]
        code, _, err = run_cli([*args, "--cache-dir", tmp_path / "cache"], capsys)
        assert code == 0, err
        runs[name] = run
    assert losses(runs["cached"]) == losses(runs["videos"])
    assert_same_weights(runs["cached"], runs["videos"])
    assert any((tmp_path / "cache").rglob("*")), "the cache was not used"
