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
