"""Tiny datasets shaped like real recordings, built by the tests themselves (never ../shared)."""

from __future__ import annotations

import shutil
from pathlib import Path

from piperctl.datasets.synth import SynthConfig, synthesize


def tiny(out: Path, **kw: object) -> Path:
    """Synthesize a tiny dataset (3 episodes of 10-14 frames, two 24x32 MP4 cameras unless overridden)."""
    base: dict = {
        "episodes": 3,
        "frames": (10, 14),
        "cameras": ["front", "wrist"],
        "image_size": (24, 32),
        "seed": 5,
    }
    base.update(kw)
    return synthesize(out, SynthConfig(**base))


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `root` with its size, mtime (ns) and mode: what 'never touched' must preserve."""
    result = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        result[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns, st.st_mode)
    st = root.lstat()
    result["."] = (0, st.st_mtime_ns, st.st_mode)
    return result


def copy(src: Path, dst: Path) -> Path:
    """A private copy of a shared fixture dataset that a test may damage."""
    shutil.copytree(src, dst)
    return dst


def load(root: Path, **kw: object):
    """LeRobotDataset of a local root, offline, with the video backend that works here."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from piperctl.quiet import video_backend

    return LeRobotDataset("local/" + root.name, root=root, video_backend=video_backend(), **kw)
