"""Synthesize LeRobot datasets (v3.0, or v2.1 like older recorders) of a simulated PiPER arm doing pick-and-place.

Options model what real recordings look like: rest frames at a shared home pose, the unit conventions
of PiPER plugins, `joint_1.pos`-style names, a 6-dim SO-101-named action, jittered wall-clock timestamps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from piperctl.console import progress_bar
from piperctl.datasets.arm_sim import (
    HOME,
    JOINT_LIMITS,
    JOINT_NAMES,
    episode_trajectory,
    render,
)
from piperctl.errors import PiperctlError

TASKS = [
    "pick up the red cube and place it in the blue bin",
    "move the cube into the bin",
    "grasp the block and put it in the box",
    "pick and place the red cube",
]
UNITS = ("radians", "degrees", "percent")
NAME_STYLES = ("joint", "pos")
ACTION_STYLES = ("joints", "so101")
# An SO-101 leader arm drives 5 PiPER joints and the gripper; PiPER's forearm roll (joint_4) has no
# counterpart on the leader, so a 6-dim SO-101 action leaves it out.
SO101_NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
SO101_JOINTS = [0, 1, 2, 4, 5, 6]
VERSIONS = ("v3.0", "v2.1")
ENV_STATE = "observation.environment_state"
# The cube's position only: the bin never moves within an episode, and a dimension that never changes
# is what the leakage scan's constant_dimensions check reports as a dead sensor.
ENV_NAMES = ("cube_x", "cube_y", "cube_z")


@dataclass
class SynthConfig:
    """What `synthesize` writes: size, timing, cameras and seed of a synthetic PiPER dataset."""

    episodes: int = 10
    frames: tuple[int, int] = (60, 90)
    fps: int = 30
    seed: int = 0
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: tuple[int, int] = (96, 128)
    video: bool = True
    repo_id: str = "piperctl/piper_synth"
    # Frames held at the shared HOME pose before and after the motion (added to `frames`).
    rest_frames: int = 0
    units: str = "radians"  # radians (gripper m) | degrees (gripper mm) | percent (-100..100, gripper 0..100)
    names: str = "joint"  # joint: `joint_1` ... `gripper`; pos: `joint_1.pos` ... `gripper.pos`
    action: str = "joints"  # joints: 7-dim like the state; so101: 6-dim SO-101 leader names
    # Stored timestamps become frame_index / fps + U(0, jitter) (videos keep one frame per 1/fps).
    timestamp_jitter_s: float = 0.0
    version: str = "v3.0"
    # Also record the scene as observation.environment_state (the cube's xyz), as lerobot's pusht and
    # aloha-sim datasets do: ACT and diffusion then train without any camera (no vision backbone).
    env_state: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.units in UNITS, "units", self.units, ", ".join(UNITS)),
            (self.names in NAME_STYLES, "names", self.names, ", ".join(NAME_STYLES)),
            (self.action in ACTION_STYLES, "action-names", self.action, ", ".join(ACTION_STYLES)),
            (self.version in VERSIONS, "version", self.version, ", ".join(VERSIONS)),
            (self.rest_frames >= 0, "rest-frames", self.rest_frames, "0 or more"),
        ]
        for ok, opt, value, allowed in checks:
            if not ok:
                raise PiperctlError(f"--{opt} {value!r} is not valid", hint=f"use {allowed}")
        if not 0.0 <= self.timestamp_jitter_s < 1.0 / self.fps:
            raise PiperctlError(
                f"--timestamp-jitter {self.timestamp_jitter_s} is not valid",
                hint=f"use 0 <= S < 1/fps = {1.0 / self.fps:.4g} s so timestamps still increase",
            )
        if self.version == "v2.1" and self.cameras and not self.video:
            raise PiperctlError(
                "--version v2.1 writes cameras as MP4 only", hint="drop --no-video, or use --cameras none"
            )


def parse_frames(text: str) -> tuple[int, int]:
    """Parse `N` or `MIN:MAX` frames per episode."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] < 10 or parts[1] < parts[0]:
        raise PiperctlError(
            f"--frames {text!r} is not valid", hint="give N or MIN:MAX with 10 <= MIN <= MAX, e.g. 60:90"
        )
    return parts[0], parts[1]


def parse_cameras(text: str) -> list[str]:
    """Parse a comma-separated camera list; 'none' means no cameras."""
    if text.strip().lower() in ("none", ""):
        return []
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [n for n in names if not n.replace("_", "").isalnum()]
    if bad or len(set(names)) != len(names):
        raise PiperctlError(
            f"--cameras {text!r} is not valid",
            hint="use distinct names made of letters, digits and '_', e.g. front,wrist, or 'none'",
        )
    return names


def parse_image_size(text: str) -> tuple[int, int]:
    """Parse an image size `HxW`."""
    try:
        h, w = (int(p) for p in text.lower().split("x"))
    except ValueError:
        h = w = 0
    if not (16 <= h <= 1080 and 16 <= w <= 1920):
        raise PiperctlError(
            f"--image-size {text!r} is not valid", hint="use HxW between 16x16 and 1080x1920, e.g. 96x128"
        )
    return h, w


def feature_names(cfg: SynthConfig) -> tuple[list[str], list[str]]:
    """Names of the state and action dimensions for `cfg`'s naming style."""
    suffix = ".pos" if cfg.names == "pos" else ""
    state = [n + suffix for n in JOINT_NAMES]
    action = [n + suffix for n in SO101_NAMES] if cfg.action == "so101" else list(state)
    return state, action


def unit_limits(units: str) -> np.ndarray:
    """Per-joint [min, max] (7, 2) of the state in `units` (the range every synthesized value lies in)."""
    return to_units(JOINT_LIMITS.T, units).T


def to_units(q: np.ndarray, units: str) -> np.ndarray:
    """Convert joint positions (..., 7) from radians/metres to `units`."""
    if units == "degrees":
        return np.concatenate([np.degrees(q[..., :6]), q[..., 6:] * 1000.0], axis=-1)
    if units == "percent":
        lo, hi = JOINT_LIMITS[:6, 0], JOINT_LIMITS[:6, 1]
        joints = (q[..., :6] - lo) / (hi - lo) * 200.0 - 100.0
        return np.concatenate([joints, q[..., 6:] / JOINT_LIMITS[6, 1] * 100.0], axis=-1)
    return q


def features_for(cfg: SynthConfig) -> dict:
    """The lerobot feature spec of a synthesized dataset."""
    state_names, action_names = feature_names(cfg)
    feats: dict = {
        "observation.state": {"dtype": "float32", "shape": (7,), "names": state_names},
        "action": {"dtype": "float32", "shape": (len(action_names),), "names": action_names},
    }
    if cfg.env_state:
        feats[ENV_STATE] = {"dtype": "float32", "shape": (len(ENV_NAMES),), "names": list(ENV_NAMES)}
    h, w = cfg.image_size
    for cam in cfg.cameras:
        feats[f"observation.images.{cam}"] = {
            "dtype": "video" if cfg.video else "image",
            "shape": (h, w, 3),
            "names": ["height", "width", "channels"],
        }
    return feats


@dataclass
class Episode:
    """One synthesized episode: per-frame state, action, pose to render, cube position and its task."""

    task: str
    state: np.ndarray  # (T, 7) in cfg.units
    action: np.ndarray  # (T, 7 or 6) in cfg.units
    pose: np.ndarray  # (T, 7) radians, what the cameras show
    cube: np.ndarray  # (T, 3)
    place: np.ndarray  # (2,)


def episodes(cfg: SynthConfig) -> Iterator[Episode]:
    """The episodes of `cfg`, the same for the same seed."""
    rng = np.random.default_rng(cfg.seed)
    rest = cfg.rest_frames
    for _ in range(cfg.episodes):
        n = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
        task = TASKS[int(rng.integers(len(TASKS)))]
        q, cube, place = episode_trajectory(rng, n, rest=rest > 0)
        noise = rng.normal(0.0, 2e-4, size=(n, 7)) * [1, 1, 1, 1, 1, 1, 0.1]
        state = np.clip(q[:n] + noise, JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])
        action = q[1 : n + 1]
        pose = q[:n]
        if rest:
            # A resting arm reads the same encoder values frame after frame (no noise).
            home = np.repeat(HOME[None, :], rest, axis=0)
            state = np.concatenate([home, state, home])
            action = np.concatenate([home, action, home])
            pose = np.concatenate([home, pose, home])
            cube = np.concatenate([np.repeat(cube[:1], rest, 0), cube, np.repeat(cube[-1:], rest, 0)])
        act = to_units(action, cfg.units)
        if cfg.action == "so101":
            act = act[:, SO101_JOINTS]
        yield Episode(
            task=task,
            state=to_units(state, cfg.units).astype(np.float32),
            action=act.astype(np.float32),
            pose=pose,
            cube=cube,
            place=place,
        )


def jittered_timestamps(cfg: SynthConfig) -> Callable[[int, np.ndarray], np.ndarray]:
    """Stored timestamps of episode `e` for its frame indices: frame_index / fps + U(0, jitter)."""

    def stamps(episode: int, frame_index: np.ndarray) -> np.ndarray:
        # An own stream per episode: jitter never changes the state, action or images of a seed.
        rng = np.random.default_rng([cfg.seed, 1, episode])
        return frame_index / cfg.fps + rng.uniform(0.0, cfg.timestamp_jitter_s, size=len(frame_index))

    return stamps


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PiperctlError(f"{out} is a file, not a folder", hint="choose a new folder for the dataset")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise PiperctlError(
                f"{out} is not empty", hint="choose a new folder, or pass --force to replace it"
            )
        resolved = out.resolve()
        if resolved in (Path("/"), Path.home().resolve(), Path.cwd().resolve()):
            raise PiperctlError(f"refusing to replace {out}", hint="choose a dedicated dataset folder")


def synthesize(out: str | Path, cfg: SynthConfig, force: bool = False) -> Path:
    """Write a synthetic PiPER dataset to `out` through lerobot's own writer; returns the path."""
    out = Path(out)
    _prepare_out(out, force)  # before the slow lerobot import, so mistakes fail fast
    from piperctl.quiet import quiet_third_party, silence_native_stderr

    quiet_third_party()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to OUT and rename at the end, so an interrupted run never leaves a half dataset.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    root = staging / "dataset"
    try:
        ds = LeRobotDataset.create(
            repo_id=cfg.repo_id,
            fps=cfg.fps,
            features=features_for(cfg),
            root=root,
            robot_type="piper",
            use_videos=cfg.video,
            image_writer_threads=4 if cfg.cameras and not cfg.video else 0,
            # v2.1 keeps one MP4 per episode: a tiny size limit makes lerobot start a file per episode.
            video_files_size_in_mb=1e-9 if cfg.version == "v2.1" else None,
        )
        with progress_bar("synthesizing episodes", cfg.episodes) as bar:
            for ep in episodes(cfg):
                for f in range(len(ep.state)):
                    frame = {"observation.state": ep.state[f], "action": ep.action[f], "task": ep.task}
                    if cfg.env_state:
                        frame[ENV_STATE] = ep.cube[f].astype(np.float32)
                    for cam in cfg.cameras:
                        frame[f"observation.images.{cam}"] = render(
                            cam, ep.pose[f], ep.cube[f], ep.place, cfg.image_size
                        )
                    ds.add_frame(frame)
                with silence_native_stderr():
                    ds.save_episode(parallel_encoding=False)
                bar.update(1)
        with silence_native_stderr():
            ds.finalize()
        if cfg.timestamp_jitter_s > 0:
            from piperctl.datasets.timestamps import rewrite_timestamps

            rewrite_timestamps(root, jittered_timestamps(cfg))
        if cfg.version == "v2.1":
            from piperctl.datasets.legacy import write_v21

            legacy = staging / "v21"
            write_v21(root, legacy)
            root = legacy
        if out.exists():
            shutil.rmtree(out) if force else out.rmdir()
        os.replace(root, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
