"""`piperctl train` / `resume`: bit-exact resumption, crash safety, refusals, keep-last, validation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from piperctl import checkpoints as ckpt
from piperctl.errors import PiperctlError
from tests.conftest import (
    TINY_ACT,
    assert_same_optimizer_state,
    assert_same_weights,
    losses,
    metric_rows,
    one_error_line,
    piperctl_cli,
    piperctl_start,
    resume_matches,
    run_cli,
    train_args,
    train_tiny,
)

TINY_DIFFUSION = {
    "pretrained_backbone_weights": None,
    "crop_shape": None,
    "n_obs_steps": 2,
    "horizon": 8,
    "n_action_steps": 4,
    "down_dims": [16, 32],
    "diffusion_step_embed_dim": 16,
    "num_train_timesteps": 20,
    "spatial_softmax_num_keypoints": 8,
    "use_group_norm": True,
}
# ---------------------------------------------------------------------------------------------
# exactness


def test_run_layout_and_keep_last(reference_run: Path) -> None:
    names = sorted(p.name for p in ckpt.list_checkpoints(reference_run))
    assert names == ["checkpoint-6", "checkpoint-8"]  # keep-last 2 removed 2 and 4
    c8 = reference_run / "checkpoint-8"
    assert ckpt.check_checkpoint(c8).ok
    for name in ckpt.REQUIRED_FILES:
        assert (c8 / name).is_file(), name
    state = json.loads((c8 / ckpt.TRAINING_STATE).read_text())
    assert state["step"] == 8 and state["world_size"] == 1 and state["seed"] == 5
    assert state["dataset"]["val_episodes"] == [4] and state["dataset"]["train_episodes"] == [0, 1, 2, 3]
    assert state["samples_seen"] == 8 * 4
    assert set(state["versions"]) >= {"piperctl", "lerobot", "torch"}
    # The final model sits in RUN/pretrained_model, in lerobot's layout, sealed by its own manifest.
    final = reference_run / ckpt.PRETRAINED_DIR
    for name in ckpt.LEROBOT_LAYOUT.files:
        assert (final / name).is_file(), name
    manifest = json.loads((final / ckpt.MANIFEST).read_text())
    assert ckpt.OPTIMIZER_STATE not in manifest["files"] and manifest["step"] == 8
    # lerobot's save_pretrained writes the final model, piperctl's checkpoint writer checkpoint-8: the
    # weights and policy config of the same step are the same bytes under either layout's names.
    assert (final / ckpt.LEROBOT_WEIGHTS).read_bytes() == (c8 / ckpt.POLICY_WEIGHTS).read_bytes()
    assert (final / ckpt.POLICY_CONFIG).read_bytes() == (c8 / ckpt.POLICY_CONFIG).read_bytes()
    assert not (c8 / ckpt.LEROBOT_WEIGHTS).exists() and not (final / ckpt.POLICY_WEIGHTS).exists()
    assert state["lr_schedule"]["unit"] == "optimizer step" and state["lr_schedule"]["total_steps"] == 8
    assert state["topology"] == [
        {"from_step": 0, "world_size": 1, "batch_size_per_process": 4, "effective_batch_size": 4}
    ]
    rows = metric_rows(reference_run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"loss", "lr", "grad_norm", "steps_per_s"} <= rows[0].keys()
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6, 8]
    assert (reference_run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in reference_run.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]


def test_sigkill_after_checkpoint_then_resume_is_bit_exact(
    tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    res = piperctl_cli(train_args(run, tiny_ds, num_workers=2), env={"PIPERCTL_FAULT": "after-save:4"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-4"]
    # The killed process is the point; the resume can run in this one (a fresh start from disk).
    resume_matches(run, reference_run, capsys, "checkpoint-8")
    assert_same_optimizer_state(run / "checkpoint-8", reference_run / "checkpoint-8")


def test_clean_stop_on_sigterm_saves_and_resumes_exactly(
    tmp_path: Path, tiny_ds: Path, reference_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from piperctl.training import TrainingInterrupted, resume

    run = tmp_path / "run"
    monkeypatch.setenv("PIPERCTL_FAULT", "sigterm:3")
    with pytest.raises(TrainingInterrupted) as exc:
        train_tiny(run, tiny_ds, save_every=100)
    assert exc.value.exit_code == 128 + signal.SIGTERM
    assert "piperctl resume" in str(exc.value) and "checkpoint-3" in str(exc.value)
    assert ckpt.check_checkpoint(run / "checkpoint-3").ok
    monkeypatch.delenv("PIPERCTL_FAULT")
    resume(run / "checkpoint-3")
    assert losses(run) == losses(reference_run)
    assert_same_weights(run, reference_run)


@pytest.mark.train
def test_sigterm_to_the_process_group_checkpoints_and_exits_nonzero(tmp_path: Path, tiny_ds: Path) -> None:
    """`timeout`, SLURM and systemd signal the whole process group: the DataLoader workers get it too."""
    run = tmp_path / "run"
    args = train_args(run, tiny_ds, steps=100000, save_every=100000, num_workers=2)
    proc = piperctl_start(args, new_process_group=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    res = proc.wait(timeout=120)
    err = res.stderr
    assert res.returncode == 128 + signal.SIGTERM, err
    (saved,) = ckpt.list_checkpoints(run)
    assert ckpt.check_checkpoint(saved).ok
    last = [line for line in err.strip().splitlines() if line.strip()][-1]
    assert last.startswith("error: SIGTERM at step") and f"piperctl resume {saved}" in last
    assert "Traceback" not in err


def test_kill_during_save_leaves_no_partial_checkpoint(
    tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    res = piperctl_cli(train_args(run, tiny_ds, save_every=2), env={"PIPERCTL_FAULT": "mid-save:4"})
    assert res.returncode == -signal.SIGKILL
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-2"]
    leftovers = [p for p in run.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]
    assert leftovers, "the interrupted save should have left its temporary folder"
    (run / "notes.txt").write_text("mine")
    code, _, err = run_cli(["resume", run], capsys)
    assert code == 0, err
    assert "removed 1 unfinished save" in err
    assert not [p for p in run.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]
    assert (run / "notes.txt").read_text() == "mine"  # only our temporary folders are removed
    assert losses(run) == losses(reference_run)


@pytest.mark.train
def test_diffusion_trains_and_resumes_exactly_with_scheduler(
    tmp_path: Path, tiny_ds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from piperctl.training import TrainingInterrupted, resume

    opts = {
        "policy": "diffusion",
        "policy_options": dict(TINY_DIFFUSION),
        "steps": 6,
        "save_every": 3,
        "val_episodes": None,
    }
    ref = train_tiny(tmp_path / "ref", tiny_ds, **opts)
    lrs = [r["lr"] for r in metric_rows(tmp_path / "ref")]
    assert len(set(lrs)) > 1  # the cosine/warm-up scheduler really moves the learning rate
    monkeypatch.setenv("PIPERCTL_FAULT", "sigint:2")
    with pytest.raises(TrainingInterrupted):
        train_tiny(tmp_path / "cut", tiny_ds, **opts)
    monkeypatch.delenv("PIPERCTL_FAULT")
    resume(tmp_path / "cut")
    assert losses(tmp_path / "cut") == ref.losses
    assert_same_weights(tmp_path / "cut", tmp_path / "ref")


def test_resume_can_extend_the_run(
    tmp_path: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from piperctl.training import resume

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    capsys.readouterr()
    result = resume(run, steps=10)
    assert result.step == 10 and (run / "checkpoint-10").is_dir()
    assert [r["step"] for r in metric_rows(run)] == list(range(1, 11))
    # The progress starts at the resumed step (issue 22 item 14), not at 0.
    err = capsys.readouterr().err
    assert "training: 8/10" in err and "training: 0/10" not in err
    assert "training: 10/10" in err


# ---------------------------------------------------------------------------------------------
# refusals: one clear line each


def test_train_into_existing_run_points_to_resume(
    reference_run: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(train_args(reference_run, tiny_ds), capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and "already holds a training run" in line and f"piperctl resume {reference_run}" in line


@pytest.mark.parametrize(
    "damage,needle",
    [
        ("missing", "does not exist"),
        ("incomplete", "incomplete"),
        ("bitflip", "sha256 mismatch"),
        ("renamed", "step"),
    ],
)
def test_resume_refuses_damaged_checkpoints(
    tmp_path: Path, reference_run: Path, capsys: pytest.CaptureFixture[str], damage: str, needle: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    target = run / "checkpoint-6"
    if damage == "missing":
        target = run / "checkpoint-7"
    elif damage == "incomplete":
        (target / ckpt.MANIFEST).unlink()
    elif damage == "bitflip":
        data = bytearray((target / ckpt.POLICY_WEIGHTS).read_bytes())
        data[len(data) // 2] ^= 0x01
        (target / ckpt.POLICY_WEIGHTS).write_bytes(bytes(data))
    elif damage == "renamed":
        target = target.rename(run / "checkpoint-5")
    code, _, err = run_cli(["resume", target], capsys)
    assert code == 2 and needle in one_error_line(err, after_logs=True) and str(target.name) in err


def test_resume_of_run_folder_skips_damaged_newest(
    tmp_path: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from piperctl.checkpoints.manager import resolve_checkpoint

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    with open(run / "checkpoint-8" / ckpt.OPTIMIZER_STATE, "r+b") as f:
        f.truncate(100)
    chosen, skipped = resolve_checkpoint(run)
    assert chosen.name == "checkpoint-6"
    assert [p.name for p, _ in skipped] == ["checkpoint-8"] and "optimizer_state.pth" in skipped[0][1]


@pytest.mark.train
def test_resume_refuses_changed_dataset_unless_allowed(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(tiny_ds, ds)
    run = tmp_path / "run"
    train_tiny(run, ds, steps=2, save_every=2)
    info = json.loads((ds / "meta" / "info.json").read_text())
    info["notes"] = "re-exported"
    (ds / "meta" / "info.json").write_text(json.dumps(info))
    code, _, err = run_cli(["resume", run / "checkpoint-2", "--steps", "3"], capsys)
    assert (
        code == 2
        and "fingerprint" in one_error_line(err, after_logs=True)
        and "--allow-dataset-change" in err
    )
    code, _, err = run_cli(["resume", run / "checkpoint-2", "--steps", "3", "--allow-dataset-change"], capsys)
    assert code == 0, err
    assert (run / "checkpoint-3").is_dir()


@pytest.mark.train
def test_resume_refuses_other_feature_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from piperctl.datasets.synth import SynthConfig, synthesize

    ds = tmp_path / "ds"
    recording = {"episodes": 3, "frames": (20, 20), "cameras": [], "env_state": True}
    synthesize(ds, SynthConfig(**recording))
    run = tmp_path / "run"
    train_tiny(run, ds, steps=2, save_every=2, val_episodes=None)
    # Re-recorded with another arm setup: a 6-dim action where the checkpoint was trained on 7.
    synthesize(ds, SynthConfig(**recording, action="so101"), force=True)
    code, _, err = run_cli(["resume", run, "--steps", "3", "--allow-dataset-change"], capsys)
    assert code == 2 and "do not match the checkpoint" in one_error_line(err, after_logs=True)


def test_resume_refuses_other_policy_type_and_other_run(
    tmp_path: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from piperctl import train

    with pytest.raises(PiperctlError, match="holds a 'act' policy, not 'diffusion'"):
        train(reference_run, resume_from_checkpoint=reference_run / "checkpoint-8", policy="diffusion")
    other = tmp_path / "other"
    other.mkdir()
    (other / ckpt.RUN_FILE).write_text(json.dumps({"run_id": "someone-else"}))
    shutil.copytree(reference_run / "checkpoint-8", other / "checkpoint-8")
    code, _, err = run_cli(["resume", other / "checkpoint-8", "--steps", "9"], capsys)
    assert code == 2 and "holds another run" in one_error_line(err, after_logs=True)
    code, _, err = run_cli(["resume", reference_run / "checkpoint-8"], capsys)
    assert code == 2 and "--steps" in one_error_line(err, after_logs=True)


def test_bad_train_options_give_one_line(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--steps", "0"], "--steps"),
        (["--policy", "nope"], "unknown policy type 'nope'"),
        (["--policy-opt", "not_a_field=3"], "no option not_a_field"),
        (["--val-episodes", "9"], "--val-episodes"),
        (["--device", "tpu"], "--device"),
    ]
    for extra, needle in cases:
        code, _, err = run_cli([*train_args(tmp_path / "r", tiny_ds), *extra], capsys)
        assert code == 2 and needle in one_error_line(err, after_logs=True), (extra, err)
    code, _, err = run_cli(
        ["train", "--output-dir", tmp_path / "r2", "--dataset-root", tmp_path / "nowhere"], capsys
    )
    assert code == 2 and "not a LeRobot dataset" in one_error_line(err, after_logs=True)
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()  # a failed start leaves nothing


# ---------------------------------------------------------------------------------------------
# fine-tuning and validation hygiene


def test_init_from_starts_fresh_from_weights(tmp_path: Path, tiny_ds: Path, reference_run: Path) -> None:
    run = tmp_path / "ft"
    opts = {**TINY_ACT, "optimizer_lr_backbone": 1e-12}  # ACT trains its backbone at its own rate
    train_tiny(
        run,
        tiny_ds,
        steps=1,
        save_every=1,
        lr=1e-12,
        policy_options=opts,
        init_from=str(reference_run / "checkpoint-8"),
    )
    state = json.loads((run / "checkpoint-1" / ckpt.TRAINING_STATE).read_text())
    assert state["step"] == 1 and state["resumed_from"] is None
    opt = torch.load(run / "checkpoint-1" / ckpt.OPTIMIZER_STATE, weights_only=True)
    assert all(float(s["step"]) == 1.0 for s in opt["state"].values())  # a fresh optimizer
    new, old = (
        load_file(str(run / ckpt.PRETRAINED_DIR / ckpt.LEROBOT_WEIGHTS)),
        load_file(str(reference_run / "checkpoint-8" / ckpt.POLICY_WEIGHTS)),
    )
    assert all(torch.allclose(new[k], old[k], atol=1e-6) for k in old)


def test_validation_episodes_stay_out_of_sampler_and_stats(reference_run: Path, tiny_ds: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from piperctl.training import loading

    meta = LeRobotDatasetMetadata("local/tiny", root=tiny_ds)
    train_eps = [0, 1, 2, 3]
    sampler = loading.EpochSampler(loading.make_sampler(meta, train_eps, shuffle=True, seed=5))
    val_from, val_to = int(meta.episodes["dataset_from_index"][4]), int(meta.episodes["dataset_to_index"][4])
    seen = [i for _, i in sampler]
    assert len(seen) == val_from and not any(val_from <= i < val_to for i in seen)
    state = load_file(
        str(reference_run / "checkpoint-8" / "policy_preprocessor_step_3_normalizer_processor.safetensors")
    )
    import pyarrow.parquet as pq

    table = pq.read_table(
        tiny_ds / "data" / "chunk-000" / "file-000.parquet", columns=["observation.state", "episode_index"]
    )
    states = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
    eps = table.column("episode_index").to_numpy()
    np.testing.assert_allclose(
        state["observation.state.mean"].numpy(), states[eps < 4].mean(0), rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(state["observation.state.mean"].numpy(), states.mean(0), rtol=1e-6, atol=1e-7)


def test_dataloader_workers_leave_signals_to_the_trainer_and_stop_with_the_run(tiny_ds: Path) -> None:
    """Ctrl-C, `timeout` and SLURM signal the whole process group: workers must keep serving batches
    so that the trainer can finish its step and save, and they stop when the trainer says so."""
    import re

    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from piperctl.training import loading
    from piperctl.training.signals import StopFlag

    meta = LeRobotDatasetMetadata("local/tiny", root=tiny_ds)
    sampler = loading.EpochSampler(loading.make_sampler(meta, [0, 1], shuffle=False, seed=5), 2, 0, 1)
    frames = [{"index": torch.tensor(i), "x": torch.zeros(1)} for i in range(meta.total_frames)]
    loader = loading.make_loader(frames, sampler, batch_size=2, num_workers=1, pin_memory=False)
    with StopFlag():  # the trainer starts its workers with its own handlers installed
        batches = iter(loader)
        assert next(batches)["index"].tolist() == [0, 1]
        (worker,) = batches._workers
        status = Path(f"/proc/{worker.pid}/status").read_text()
        ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)", status)[1], 16)
        assert ignored >> (signal.SIGINT - 1) & 1 and ignored >> (signal.SIGTERM - 1) & 1
        os.kill(worker.pid, signal.SIGINT)
        os.kill(worker.pid, signal.SIGTERM)
        assert next(batches)["index"].tolist() == [2, 3]
    loading.stop_workers(loader)
    assert not worker.is_alive()
