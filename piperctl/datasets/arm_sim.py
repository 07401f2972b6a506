"""A simulated PiPER arm doing pick-and-place: kinematics, trajectories and tiny camera renderings.

`datasets/synth.py` turns these into LeRobot datasets; nothing here knows about files or lerobot.
"""

from __future__ import annotations

import math

import numpy as np

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
GRIPPER_OPEN, GRIPPER_CLOSED = 0.06, 0.012
# The one pose every episode starts and ends in when `rest_frames` > 0 (a real arm's home/rest pose).
HOME = np.array([0.0, 0.5, -1.2, 0.0, 0.9, 0.0, GRIPPER_OPEN])
# Link geometry (m) of the simplified arm used for kinematics and drawing.
SHOULDER_H, UPPER, FORE, HAND = 0.123, 0.285, 0.25, 0.09


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
