"""The tunable limits of the leakage checks: one declaration, shared by the API and the CLI defaults.

Kept free of polars/pyarrow imports so that the CLI can read the defaults without loading them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from piperctl.defaults import TOLERANCE_S


@dataclass
class Thresholds:
    """Tunable limits of the checks (docs/leakage.md explains each)."""

    tolerance_s: float = TOLERANCE_S  # lerobot's own timestamp tolerance (piperctl.defaults)
    frozen_seconds: float = 2.0  # a stream identical for this long is reported
    min_shared_frames: int = 1  # pairs of episodes sharing fewer (moving) frames are not reported
    rest_frames: int = 2  # a frame held this many consecutive frames is a rest pose, never a copy
    spike_factor: float = 8.0  # a one-frame step this many times the joint's robust step scale is a spike
    lag_frames: int = 3  # an episode whose action-state lag differs from the dataset's by this many frames
    max_lag_frames: int = 60  # how far the lag search looks, in frames
    unit_factor: float = 10.0  # an episode whose level and range differ from the dataset's by this factor
    short_fraction: float = 0.25  # episodes shorter than this share of the median length are reported
    chunk_size: int | None = None  # episodes shorter than a policy's action chunk are reported

    def frozen_frames(self, fps: float) -> int:
        """The frozen-run threshold in frames at `fps` (at least 2)."""
        return max(2, math.ceil(self.frozen_seconds * fps - 1e-9))

    def problems(self) -> list[str]:
        """Names of the options holding impossible values (empty when all are usable)."""
        bad = []
        for name in ("tolerance_s", "frozen_seconds", "spike_factor", "unit_factor", "short_fraction"):
            if not getattr(self, name) > 0:
                bad.append(name)
        for name in ("min_shared_frames", "rest_frames", "lag_frames", "max_lag_frames"):
            if getattr(self, name) < 1:
                bad.append(name)
        if self.chunk_size is not None and self.chunk_size < 1:
            bad.append("chunk_size")
        return bad
