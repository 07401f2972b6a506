"""`train` on datasets shaped like real recordings: v2.1, local folders, missing cameras, real shapes, timestamps.

Every dataset is built here (tests/dataset_builders.py), shaped like the real ones in ../shared/real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from piperctl import checkpoints as ckpt
from tests.conftest import TINY_ACT, one_error_line, policy_opt_args, run_cli
from tests.dataset_builders import tiny

QUICK = ["--steps", "2", "--save-every", "2", "--batch-size", "2", "--num-workers", "0"]


def _train(run: Path, ds: Path, *extra: object) -> list[str]:
    return ["train", "--output-dir", run, "--dataset-root", ds, *QUICK, *extra, *policy_opt_args(TINY_ACT)]


def _state(run: Path, step: int = 2) -> dict:
    return json.loads((run / f"checkpoint-{step}" / ckpt.TRAINING_STATE).read_text())


@pytest.fixture(scope="module")
def two_cameras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory.mktemp("real") / "two_cams")


@pytest.mark.train
def test_a_v21_recording_is_converted_then_trained_resumed_and_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Shaped like the CR5 recording: v2.1, wall-clock (jittered) timestamps, real names and units.
    src = tiny(tmp_path / "cr5_like", version="v2.1", timestamp_jitter_s=0.01, names="pos", fps=10)
    capsys.readouterr()  # the builder's own progress lines
    run = tmp_path / "run"
    code, _, err = run_cli(_train(run, src), capsys)
    line = one_error_line(err)
    assert code == 2 and "LeRobot v2.1 dataset" in line
    assert f"piperctl dataset convert {src} {src}_v30" in line
    assert not run.exists()

    out = tmp_path / "cr5_v30"
    code, _, err = run_cli(["dataset", "convert", src, out, "--retime"], capsys)
    assert code == 0, err
    code, _, err = run_cli(_train(run, out, "--cameras", "front"), capsys)
    assert code == 0, err
    assert "observation.images.wrist" not in _state(run)["feature_shapes"]
    code, _, err = run_cli(["resume", run, "--steps", "3"], capsys)
    assert code == 0, err
    code, out_text, _ = run_cli(["checkpoints", "verify", run], capsys)
    assert code == 0, out_text


def test_a_local_folder_is_never_looked_up_on_the_hub(
    tmp_path: Path, two_cameras: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run on a local folder records `local/<folder>` as its id: see the run in the lost-camera test.
    ds = tmp_path / "ds"
    shutil.copytree(two_cameras, ds)
    lost = sorted((ds / "data").rglob("*.parquet"))[0]
    lost.unlink()
    code, _, err = run_cli(_train(tmp_path / "run2", ds), capsys)
    line = one_error_line(err)
    assert code == 2 and "data: 1 of 1 parquet files missing" in line and lost.name in line
    assert "huggingface" not in err.lower()


@pytest.mark.train
def test_lost_camera_videos_are_named_and_the_other_cameras_still_train(
    tmp_path: Path, two_cameras: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(two_cameras, ds)
    shutil.rmtree(ds / "videos" / "observation.images.wrist")
    code, _, err = run_cli(_train(tmp_path / "run", ds), capsys)
    line = one_error_line(err)
    assert (
        code == 2
        and "camera wrist: 1 of 1 video files missing, first: videos/observation.images.wrist/" in line
    )
    assert "--cameras" in line and "front" not in line.split("—")[0]

    run = tmp_path / "run_front"
    code, _, err = run_cli(_train(run, ds, "--cameras", "front"), capsys)
    assert code == 0, err
    state = _state(run)
    shapes = state["feature_shapes"]
    assert "observation.images.front" in shapes and "observation.images.wrist" not in shapes
    # A local folder is never looked up on the Hub: its id is `local/<folder name>`.
    assert state["config"]["dataset_id"] == "local/ds" and state["dataset"]["id"] == "local/ds"
    # eval on its own data reads only the camera the policy sees: the lost wrist videos do not matter.
    code, out, err = run_cli(["eval", run, "--json"], capsys)
    assert code == 0 and json.loads(out)["episodes"]["ids"], err

    code, _, err = run_cli(_train(tmp_path / "run_top", ds, "--cameras", "top"), capsys)
    line = one_error_line(err)
    assert code == 2 and "has no camera top" in line and "front, wrist" in line


def test_a_vision_policy_without_any_camera_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = tiny(tmp_path / "state_only", cameras=[])
    capsys.readouterr()  # the builder's own progress lines
    code, _, err = run_cli(_train(tmp_path / "run", ds), capsys)
    line = one_error_line(err)
    assert (
        code == 2
        and "a act policy needs at least one camera image" in line
        and "the dataset has none" in line
    )


@pytest.mark.train
def test_real_shapes_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Like the real PiPER dataset: 7-dim `joint_1.pos` state in percent, 6-dim SO-101-named action, 15 fps
    # (the scene's pose instead of a camera: the shapes of state and action are the point here).
    ds = tiny(
        tmp_path / "piper_like",
        names="pos",
        units="percent",
        action="so101",
        fps=15,
        rest_frames=3,
        cameras=[],
        env_state=True,
    )
    capsys.readouterr()  # the builder's own progress lines
    run = tmp_path / "run"
    code, _, err = run_cli(_train(run, ds), capsys)
    assert code == 0, err
    shapes = _state(run)["feature_shapes"]
    assert shapes["observation.state"] == [7] and shapes["action"] == [6]


@pytest.mark.train
def test_480x640_camera_frames_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = tiny(tmp_path / "big", episodes=2, frames=(4, 5), cameras=["top"], image_size=(480, 640))
    capsys.readouterr()  # the builder's own progress lines
    run = tmp_path / "run"
    code, _, err = run_cli(_train(run, ds, "--steps", "1", "--save-every", "1"), capsys)
    assert code == 0, err
    assert _state(run, 1)["feature_shapes"]["observation.images.top"] == [3, 480, 640]


@pytest.mark.train  # the timestamps are checked as the first batch is read, in the first step
def test_jittered_timestamps_are_caught_before_the_first_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The timestamps in the data files are the point: the scene's pose instead of a camera.
    ds = tiny(tmp_path / "jitter", timestamp_jitter_s=0.005, cameras=[], env_state=True)
    capsys.readouterr()  # the builder's own progress lines
    run = tmp_path / "run"
    code, _, err = run_cli(_train(run, ds), capsys)
    line = one_error_line(err)
    assert code == 2 and "episode 0" in line and "frame" in line and "--retime" in line
    assert not run.exists()
    # lerobot-train's --tolerance-s, passed through: a looser tolerance accepts the same data.
    code, _, err = run_cli(_train(run, ds, "--tolerance-s", "0.01"), capsys)
    assert code == 0, err
    assert _state(run)["config"]["tolerance_s"] == 0.01
