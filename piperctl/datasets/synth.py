"""Synthesize LeRobot datasets (v3.0, or v2.1 like older recorders) of a simulated PiPER arm doing pick-and-place.

Options model what real recordings look like: rest frames at a shared home pose, the unit conventions
of PiPER plugins, `joint_1.pos`-style names, a 6-dim SO-101-named action, jittered wall-clock timestamps.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from piperctl.console import progress_bar
from piperctl.errors import PiperctlError

JOINT_NAMES = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6", "gripper"]
# PiPER joint limits (rad) from AgileX's spec sheet; the gripper opening is in metres.
JOINT_LIMITS = np.array(
    [
        [-2.618, 2.618],
        [0.0, 3.14],
        [-2.967, 0.0],
        [-1.745, 1.745],
        [-1.22, 1.22],
        [-2.0944, 2.0944],
        [0.0, 0.07],
    ],
    dtype=np.float64,
)
TASKS = [
    "pick up the red cube and place it in the blue bin",
    "move the cube into the bin",
    "grasp the block and put it in the box",
    "pick and place the red cube",
]
GRIPPER_OPEN, GRIPPER_CLOSED = 0.06, 0.012
# The one pose every episode starts and ends in when `rest_frames` > 0 (a real arm's home/rest pose).
HOME = np.array([0.0, 0.5, -1.2, 0.0, 0.9, 0.0, GRIPPER_OPEN])
UNITS = ("radians", "degrees", "percent")
NAME_STYLES = ("joint", "pos")
ACTION_STYLES = ("joints", "so101")
# An SO-101 leader arm drives 5 PiPER joints and the gripper; PiPER's forearm roll (joint_4) has no
# counterpart on the leader, so a 6-dim SO-101 action leaves it out.
SO101_NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
SO101_JOINTS = [0, 1, 2, 4, 5, 6]
VERSIONS = ("v3.0", "v2.1")
# Link geometry (m) of the simplified arm used for kinematics and drawing.
SHOULDER_H, UPPER, FORE, HAND = 0.123, 0.285, 0.25, 0.09


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


# ----------------------------------------------------------------------------------------------
# Kinematics of the simplified arm: yaw (j1), shoulder pitch (j2), elbow (j3), wrist pitch (j5).


def inverse_kinematics(x: float, y: float, z: float, wrist_roll: float) -> np.ndarray:
    """Joint angles (6) that put the gripper tip at (x, y, z) pointing down."""
    yaw = math.atan2(y, x)
    r = math.hypot(x, y)
    # The wrist centre sits HAND above the tip because the gripper points straight down.
    wz = z + HAND - SHOULDER_H
    d = min(math.hypot(r, wz), UPPER + FORE - 1e-3)
    cos_elbow = (UPPER**2 + FORE**2 - d**2) / (2 * UPPER * FORE)
    elbow = math.pi - math.acos(max(-1.0, min(1.0, cos_elbow)))  # 0 = straight arm
    alpha = math.atan2(wz, r) + math.acos(max(-1.0, min(1.0, (UPPER**2 + d**2 - FORE**2) / (2 * UPPER * d))))
    j2 = math.pi / 2 - alpha  # 0 = upper arm vertical, positive leans forward
    j3 = -elbow
    # Bend the wrist so the hand points straight down (see `forward_points`: hand = forearm - j5).
    j5 = math.pi - j2 - elbow
    return np.array([yaw, j2, j3, 0.0, j5, wrist_roll])


def forward_points(q: np.ndarray) -> np.ndarray:
    """3-D points (base, shoulder, elbow, wrist, tip) of the arm for joint angles `q` (>= 6)."""
    yaw, j2, j3, j5 = q[0], q[1], q[2], q[4]
    a1 = math.pi / 2 - j2  # upper-arm elevation
    a2 = a1 + j3  # forearm elevation (j3 <= 0 bends down)
    a3 = a2 - j5  # hand elevation; -pi/2 points straight down
    pts_rz = [(0.0, 0.0), (0.0, SHOULDER_H)]
    r, z = 0.0, SHOULDER_H
    for length, ang in ((UPPER, a1), (FORE, a2), (HAND, a3)):
        r, z = r + length * math.cos(ang), z + length * math.sin(ang)
        pts_rz.append((r, z))
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[pr * c, pr * s, pz] for pr, pz in pts_rz])


def _min_jerk(t: np.ndarray) -> np.ndarray:
    return 10 * t**3 - 15 * t**4 + 6 * t**5


def episode_trajectory(
    rng: np.random.Generator, n_frames: int, rest: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pick-and-place: joint positions (T+1, 7), cube xyz per frame (T, 3), bin xy (2,).

    With `rest`, the motion starts at the shared HOME pose and returns there at the end.
    """
    side = rng.choice([-1.0, 1.0])
    obj = np.array([rng.uniform(0.22, 0.38), side * rng.uniform(0.05, 0.2), 0.0])
    place = np.array([rng.uniform(0.2, 0.34), -side * rng.uniform(0.1, 0.22)])
    roll = rng.uniform(-0.8, 0.8)
    home = np.array([0.0, 0.5, -1.2, 0.0, 0.9, 0.0, GRIPPER_OPEN]) + rng.normal(0, 0.03, 7) * [
        1,
        1,
        1,
        1,
        1,
        1,
        0,
    ]
    if rest:
        home = HOME.copy()

    def pose(xy: np.ndarray, z: float, grip: float) -> np.ndarray:
        return np.append(inverse_kinematics(float(xy[0]), float(xy[1]), z, roll), grip)

    waypoints = [
        (home, 0.0),
        (pose(obj[:2], 0.12, GRIPPER_OPEN), 1.3),
        (pose(obj[:2], 0.025, GRIPPER_OPEN), 0.8),
        (pose(obj[:2], 0.025, GRIPPER_CLOSED), 0.5),
        (pose(obj[:2], 0.13, GRIPPER_CLOSED), 0.7),
        (pose(place, 0.13, GRIPPER_CLOSED), 1.3),
        (pose(place, 0.05, GRIPPER_CLOSED), 0.6),
        (pose(place, 0.05, GRIPPER_OPEN), 0.4),
        (pose(place, 0.14, GRIPPER_OPEN), 0.6),
    ]
    if rest:
        waypoints.append((home, 1.2))
    weights = np.array([w for _, w in waypoints[1:]])
    # Segment boundaries in frames; one extra sample so every frame has a "next" command.
    bounds = np.round(np.concatenate([[0], np.cumsum(weights) / weights.sum()]) * n_frames).astype(int)
    q = np.zeros((n_frames + 1, 7))
    for i in range(len(weights)):
        a, b = waypoints[i][0], waypoints[i + 1][0]
        lo, hi = bounds[i], bounds[i + 1] + (1 if i == len(weights) - 1 else 0)
        steps = max(hi - lo, 1)
        if rest and i == len(weights) - 1:
            steps = max(hi - lo - 1, 1)  # the last command (q[T]) lands exactly on HOME, where rest begins
        tau = _min_jerk(np.arange(hi - lo) / steps)[:, None]
        q[lo:hi] = a + (b - a) * tau
    # A human teleoperator is never perfectly smooth: add a small low-frequency wobble.
    t = np.arange(n_frames + 1) / n_frames
    for j in range(6):  # sin(pi t) vanishes at both ends, so a rest motion still ends at HOME
        q[:, j] += (
            0.01
            * math.sin(2 * math.pi * (rng.uniform(0.5, 2.0) * t[-1]) + rng.uniform(0, 6.28))
            * np.sin(math.pi * t)
        )
    q = np.clip(q, JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])

    # The cube rides with the gripper between the grasp (segment 3 ends) and the release (segment 7).
    cube = np.repeat(obj[None, :], n_frames, axis=0)
    grasp_end, release = bounds[3], bounds[7]
    for f in range(grasp_end, min(release, n_frames)):
        tip = forward_points(q[f])[-1]
        cube[f] = [tip[0], tip[1], max(tip[2] - 0.02, 0.0)]
    cube[min(release, n_frames) :] = cube[min(release, n_frames) - 1] * [1, 1, 0]
    return q, cube, place


# ----------------------------------------------------------------------------------------------
# Rendering: tiny numpy drawings that still carry what a policy needs (arm pose, cube, bin).


def _disc(img: np.ndarray, cy: float, cx: float, r: float, color: tuple[int, int, int]) -> None:
    h, w = img.shape[:2]
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, h)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[y0:y1, x0:x1][mask] = color


def _rect(img: np.ndarray, cy: float, cx: float, hh: float, hw: float, color: tuple[int, int, int]) -> None:
    h, w = img.shape[:2]
    y0, y1 = max(int(cy - hh), 0), min(int(cy + hh) + 1, h)
    x0, x1 = max(int(cx - hw), 0), min(int(cx + hw) + 1, w)
    if y0 < y1 and x0 < x1:
        img[y0:y1, x0:x1] = color


def _line(img: np.ndarray, p: np.ndarray, q: np.ndarray, r: float, color: tuple[int, int, int]) -> None:
    n = int(max(abs(q - p).max(), 1) / max(r, 0.5)) + 2
    for t in np.linspace(0, 1, n):
        y, x = p + (q - p) * t
        _disc(img, y, x, r, color)


def render_front(q: np.ndarray, cube: np.ndarray, place: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Oblique view of the table from in front of the robot."""
    h, w = size
    img = np.full((h, w, 3), (200, 190, 170), dtype=np.uint8)
    img[: h // 3] = (120, 130, 150)  # back wall, so height reads as distance from the table edge
    s = min(h, w) / 0.6

    def proj(p: np.ndarray) -> np.ndarray:
        return np.array([h * 0.95 - (p[0] * 0.55 + p[2] * 0.9) * s, w / 2 - p[1] * s])

    bp = proj(np.array([place[0], place[1], 0.0]))
    _rect(img, bp[0], bp[1], 0.04 * s * 0.55, 0.05 * s, (40, 60, 200))
    cp = proj(cube)
    _rect(img, cp[0], cp[1], 0.015 * s, 0.015 * s, (210, 30, 30))
    pts = [proj(p) for p in forward_points(q)]
    r = max(min(h, w) / 64, 1.0)
    for a, b in zip(pts[1:-1], pts[2:], strict=False):
        _line(img, a, b, r, (30, 30, 30))
    _line(img, pts[0], pts[1], r * 1.5, (70, 70, 70))
    open_px = q[6] / 0.07 * 0.05 * s
    _disc(img, pts[-1][0], pts[-1][1] - open_px, r, (240, 200, 0))
    _disc(img, pts[-1][0], pts[-1][1] + open_px, r, (240, 200, 0))
    return img


def render_wrist(q: np.ndarray, cube: np.ndarray, place: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downward view from the gripper: cube and bin move across the image as the hand moves."""
    h, w = size
    img = np.full((h, w, 3), (185, 175, 160), dtype=np.uint8)
    tip = forward_points(q)[-1]
    height = max(tip[2] + 0.03, 0.02)
    s = min(h, w) * 0.08 / height  # pixels per metre shrink with height, like a real lens

    def proj(p: np.ndarray) -> np.ndarray:
        return np.array([h / 2 - (p[0] - tip[0]) * s, w / 2 - (p[1] - tip[1]) * s])

    bp = proj(np.array([place[0], place[1], 0.0]))
    _rect(img, bp[0], bp[1], 0.04 * s, 0.05 * s, (40, 60, 200))
    cp = proj(cube)
    _rect(img, cp[0], cp[1], 0.015 * s, 0.015 * s, (210, 30, 30))
    finger = q[6] / 0.07 * w * 0.35
    _rect(img, h - h * 0.12, w / 2 - finger, h * 0.12, w * 0.04, (60, 60, 60))
    _rect(img, h - h * 0.12, w / 2 + finger, h * 0.12, w * 0.04, (60, 60, 60))
    return img


RENDERERS = {"wrist": render_wrist}


def render(
    camera: str, q: np.ndarray, cube: np.ndarray, place: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Render one camera; cameras other than `wrist` are fixed front-style views."""
    return RENDERERS.get(camera, render_front)(q, cube, place, size)


# ----------------------------------------------------------------------------------------------


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
