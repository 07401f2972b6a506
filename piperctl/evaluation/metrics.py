"""Error statistics per joint: mean absolute error, RMSE and worst absolute error, in the dataset's units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ErrorStats:
    """Per-joint errors of predictions against recorded values over `n` frames."""

    mae: np.ndarray
    rmse: np.ndarray
    max: np.ndarray
    n: int

    def nmae(self, scale: np.ndarray) -> float | None:
        """Mean over joints of MAE / scale (joints whose scale is 0 are left out); None without frames."""
        keep = scale > 1e-12
        if self.n == 0 or not keep.any():
            return None
        return float(np.mean(self.mae[keep] / scale[keep]))

    def to_json(self, names: list[str], scale: np.ndarray) -> dict:
        """{"frames", "nmae", "mae": {joint: v}, "rmse": {...}, "max": {...}} (null values without frames)."""

        def per_joint(values: np.ndarray) -> dict[str, float | None]:
            return {n: (float(v) if self.n else None) for n, v in zip(names, values, strict=True)}

        return {
            "frames": self.n,
            "nmae": self.nmae(scale),
            "mae": per_joint(self.mae),
            "rmse": per_joint(self.rmse),
            "max": per_joint(self.max),
        }


def error_stats(predicted: np.ndarray, recorded: np.ndarray) -> ErrorStats:
    """Errors of `predicted` against `recorded`, both (frames, joints), computed in float64."""
    predicted = np.asarray(predicted, dtype=np.float64)
    recorded = np.asarray(recorded, dtype=np.float64)
    if predicted.shape != recorded.shape:
        raise ValueError(f"predicted {predicted.shape} and recorded {recorded.shape} differ")
    joints = recorded.shape[1] if recorded.ndim == 2 else 0
    if len(recorded) == 0:
        zero = np.zeros(joints)
        return ErrorStats(zero, zero, zero, 0)
    err = predicted - recorded
    return ErrorStats(
        mae=np.abs(err).mean(axis=0),
        rmse=np.sqrt((err**2).mean(axis=0)),
        max=np.abs(err).max(axis=0),
        n=len(recorded),
    )
