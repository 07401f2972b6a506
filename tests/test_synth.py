"""`piperctl dataset synth` writes real LeRobot v3.0 datasets that lerobot itself reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from piperctl.datasets.synth import JOINT_LIMITS, JOINT_NAMES, SynthConfig, synthesize


def _load(root: Path, **kw):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from piperctl.quiet import video_backend

    return LeRobotDataset("piperctl/piper_synth", root=root, video_backend=video_backend(), **kw)


def test_video_dataset_loads_offline_with_declared_features(synth_dataset: Path) -> None:
    ds = _load(synth_dataset)
    meta = ds.meta
    assert meta.info.codebase_version == "v3.0"
    assert meta.robot_type == "piper"
    assert meta.fps == 30
    assert meta.total_episodes == 4
    for key in ("observation.state", "action"):
        assert meta.features[key]["dtype"] == "float32"
        assert tuple(meta.features[key]["shape"]) == (7,)
        assert meta.features[key]["names"] == JOINT_NAMES
    assert set(meta.video_keys) == {"observation.images.front", "observation.images.wrist"}
    lengths = [
        int(t - f)
        for f, t in zip(meta.episodes["dataset_from_index"], meta.episodes["dataset_to_index"], strict=True)
    ]
    assert all(30 <= n <= 40 for n in lengths)
    assert sum(lengths) == ds.num_frames == meta.total_frames
    item = ds[lengths[0] + 3]
    assert item["observation.images.front"].shape == (3, 48, 64)
    assert item["observation.state"].dtype == torch.float32
    assert int(item["episode_index"]) == 1 and int(item["frame_index"]) == 3
    # Images carry the scene: the frame is neither blank nor identical across cameras.
    front, wrist = item["observation.images.front"], item["observation.images.wrist"]
    assert front.std() > 0.02 and not torch.allclose(front, wrist)


def test_state_and_action_are_plausible_pick_and_place(state_dataset: Path) -> None:
    ds = _load(state_dataset)
    data = ds.hf_dataset.with_format("numpy")
    state = np.stack(data["observation.state"])
    action = np.stack(data["action"])
    ep = np.asarray(data["episode_index"])
    assert (state >= JOINT_LIMITS[:, 0] - 1e-6).all() and (state <= JOINT_LIMITS[:, 1] + 1e-6).all()
    assert (action >= JOINT_LIMITS[:, 0] - 1e-6).all() and (action <= JOINT_LIMITS[:, 1] + 1e-6).all()
    for e in np.unique(ep):
        s, a = state[ep == e], action[ep == e]
        # Smooth motion even in these short (1.5 s) episodes: no joint jumps 0.3 rad in one frame.
        assert np.abs(np.diff(s[:, :6], axis=0)).max() < 0.3
        # action is the commanded next position: it leads the state by one frame.
        assert np.abs(a[:-1, :6] - s[1:, :6]).max() < 5e-3
        # The gripper opens, closes on the cube, and opens again.
        g = s[:, 6]
        assert g[0] > 0.05 and g.min() < 0.02 and g[-1] > 0.05
    tasks = set(ds.meta.tasks.index)
    assert len(tasks) >= 2


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


def test_same_seed_same_parquet_bytes(tmp_path: Path) -> None:
    cfg = SynthConfig(episodes=3, frames=(20, 30), seed=11, cameras=[])
    a = _digest(synthesize(tmp_path / "a", cfg))
    b = _digest(synthesize(tmp_path / "b", cfg))
    c = _digest(synthesize(tmp_path / "c", SynthConfig(episodes=3, frames=(20, 30), seed=12, cameras=[])))
    assert a == b
    assert a["data/chunk-000/file-000.parquet"] != c["data/chunk-000/file-000.parquet"]


def test_image_mode_dataset_loads(tmp_path: Path) -> None:
    cfg = SynthConfig(episodes=2, frames=(12, 12), seed=1, cameras=["top"], image_size=(32, 40), video=False)
    ds = _load(synthesize(tmp_path / "img", cfg))
    assert ds.meta.features["observation.images.top"]["dtype"] == "image"
    assert ds.num_frames == 24
    assert ds[5]["observation.images.top"].shape == (3, 32, 40)


def test_action_chunks_load_through_dataloader(synth_dataset: Path) -> None:
    fps = 30
    chunk = [i / fps for i in range(10)]
    ds = _load(synth_dataset, delta_timestamps={"action": chunk, "observation.state": [0.0]})
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    batch = next(iter(loader))
    assert batch["action"].shape == (4, 10, 7)
    assert batch["action_is_pad"].shape == (4, 10)
    assert batch["observation.images.wrist"].shape == (4, 3, 48, 64)


@pytest.mark.parametrize("text,expected", [("60", (60, 60)), ("40:80", (40, 80))])
def test_frames_option_parses(text: str, expected: tuple[int, int]) -> None:
    from piperctl.datasets.synth import parse_frames

    assert parse_frames(text) == expected


# ---------------------------------------------------------------------------------------------
# What real recordings look like: rest poses, units, names, SO-101 actions, jitter, v2.1


def _columns(root: Path) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.concat_tables(pq.read_table(p) for p in sorted(root.glob("data/*/*.parquet")))
    return {c: np.asarray(t.column(c).to_pylist()) for c in t.column_names}


def _state_only(tmp_path: Path, name: str, **kw) -> dict[str, np.ndarray]:
    base = {"episodes": 3, "frames": (20, 24), "seed": 4, "cameras": []}
    return _columns(synthesize(tmp_path / name, SynthConfig(**(base | kw))))


def test_rest_frames_hold_one_shared_home_pose_at_both_ends(tmp_path: Path) -> None:
    from piperctl.datasets.synth import HOME

    cols = _state_only(tmp_path, "rest", rest_frames=5)
    ep = cols["episode_index"]
    for e in range(3):
        s, a = cols["observation.state"][ep == e], cols["action"][ep == e]
        assert 30 <= len(s) <= 34  # frames + 2 x rest
        for block in (s[:5], s[-5:], a[:5], a[-5:]):
            assert np.array_equal(block, np.repeat(HOME[None].astype(np.float32), 5, axis=0))
        assert not np.array_equal(s[6], HOME.astype(np.float32))  # and it moves in between
        # The motion starts at HOME and its last command returns there: no jump into or out of rest.
        assert np.abs(s[5, :6] - HOME[:6]).max() < 0.01 and np.abs(a[-6] - HOME).max() < 1e-3


@pytest.mark.parametrize("units", ["degrees", "percent"])
def test_units_follow_the_piper_plugin_conventions(tmp_path: Path, units: str) -> None:
    from piperctl.datasets.synth import unit_limits

    rad = _state_only(tmp_path, "rad")
    conv = _state_only(tmp_path, units, units=units)
    s = conv["observation.state"]
    lim = unit_limits(units)
    assert (s >= lim[:, 0] - 1e-3).all() and (s <= lim[:, 1] + 1e-3).all()
    if units == "degrees":
        assert np.allclose(s[:, :6], np.degrees(rad["observation.state"][:, :6]), atol=1e-3)
        assert np.allclose(s[:, 6], rad["observation.state"][:, 6] * 1000, atol=1e-3)  # gripper in mm
        assert s[:, 6].max() > 50
    else:
        assert (np.abs(s[:, :6]) <= 100).all() and (s[:, 6] >= 0).all() and (s[:, 6] <= 100).all()
        assert np.abs(s[:, :6]).max() > 20  # the range is used, not a rescaled radian
    assert np.array_equal(conv["timestamp"], rad["timestamp"])


def test_pos_names_and_so101_action(tmp_path: Path) -> None:
    import json

    root = synthesize(
        tmp_path / "so", SynthConfig(episodes=2, frames=(12, 12), cameras=[], names="pos", action="so101")
    )
    feats = json.loads((root / "meta/info.json").read_text())["features"]
    assert feats["observation.state"]["names"] == [f"joint_{i}.pos" for i in range(1, 7)] + ["gripper.pos"]
    assert feats["action"]["names"][0] == "shoulder_pan.pos" and feats["action"]["shape"] == [6]
    cols = _columns(root)
    assert cols["action"].shape == (24, 6) and cols["observation.state"].shape == (24, 7)
    # The SO-101 action commands PiPER joints 1, 2, 3, 5, 6 and the gripper, one frame ahead.
    for e in (0, 1):
        s, a = (
            cols["observation.state"][cols["episode_index"] == e],
            cols["action"][cols["episode_index"] == e],
        )
        assert np.abs(a[:-1] - s[1:, [0, 1, 2, 4, 5, 6]]).max() < 5e-3


def test_timestamp_jitter_changes_only_timestamps(tmp_path: Path) -> None:
    plain = _state_only(tmp_path, "plain", fps=15)
    jit = _state_only(tmp_path, "jit", fps=15, timestamp_jitter_s=0.03)
    assert np.array_equal(plain["observation.state"], jit["observation.state"])
    d = jit["timestamp"].astype(np.float64) - jit["frame_index"] / 15
    assert d.min() >= -1e-6 and d.max() < 0.03 and d.max() > 0.01
    assert (np.diff(jit["timestamp"])[np.diff(jit["episode_index"]) == 0] > 0).all()


def test_v21_output_same_seed_same_bytes(tmp_path: Path) -> None:
    cfg = SynthConfig(episodes=2, frames=(10, 12), seed=9, cameras=[], version="v2.1")
    a, b = synthesize(tmp_path / "a", cfg), synthesize(tmp_path / "b", cfg)
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert "data/chunk-000/episode_000001.parquet" in files and "meta/episodes_stats.jsonl" in files
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--units", "kelvin"], "--units 'kelvin' is not valid"),
        (["--names", "x"], "--names 'x' is not valid"),
        (["--action-names", "so100"], "--action-names 'so100' is not valid"),
        (["--version", "v2.0"], "--version 'v2.0' is not valid"),
        (["--timestamp-jitter", "0.5"], "--timestamp-jitter 0.5 is not valid"),
        (["--version", "v2.1", "--no-video"], "--version v2.1 writes cameras as MP4 only"),
    ],
)
def test_bad_realism_options_are_one_line(tmp_path: Path, capsys, args: list[str], needle: str) -> None:
    from tests.conftest import run_cli

    code, _, err = run_cli(["dataset", "synth", tmp_path / "o", *args], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "o").exists()


def test_env_state_records_the_scene_loads_and_passes_leakage(
    tiny_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    from tests.conftest import run_cli

    ds = _load(tiny_ds)
    feat = ds.meta.features["observation.environment_state"]
    assert feat["dtype"] == "float32" and tuple(feat["shape"]) == (3,)
    assert feat["names"] == ["cube_x", "cube_y", "cube_z"]
    assert ds.meta.camera_keys == [] and ds[3]["observation.environment_state"].shape == (3,)
    data = ds.hf_dataset.with_format("numpy")
    env, ep = np.stack(data["observation.environment_state"]), np.asarray(data["episode_index"])
    for e in np.unique(ep):
        cube = env[ep == e]
        # Picked up off the table, carried away and put down again.
        assert cube[0, 2] == 0.0 and cube[:, 2].max() > 0.05 and cube[-1, 2] == 0.0
        assert np.linalg.norm(cube[-1, :2] - cube[0, :2]) > 0.1
    # Not even a warning from the full leakage scan (a constant dimension would be one).
    code, out, err = run_cli(["leakage", "full", tiny_ds, "--no-progress", "--fail-on", "warn"], capsys)
    assert code == 0, out + err

    # The CLI option; the scene is an extra column: state and action are those of the same seed without it.
    code, _, err = run_cli(
        ["dataset", "synth", tmp_path / "env", "--episodes", "2", "--frames", "12", "--seed", "4"]
        + ["--cameras", "none", "--env-state"],
        capsys,
    )
    assert code == 0, err
    plain = synthesize(tmp_path / "plain", SynthConfig(episodes=2, frames=(12, 12), seed=4, cameras=[]))
    a, b = (pq.read_table(r / "data/chunk-000/file-000.parquet") for r in (tmp_path / "env", plain))
    assert "observation.environment_state" in a.column_names
    assert "observation.environment_state" not in b.column_names
    for col in ("observation.state", "action", "timestamp", "episode_index"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
