"""The recorded episodes (read with Polars, no policy needed) and two policy-free baselines on them.

"hold": command the current state, i.e. stay where the arm is (needs state and action to describe
the same joints). "repeat": send the previous recorded action again. A policy that does not beat
both has not learned anything useful.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from piperctl.errors import PiperctlError

ACTION, STATE = "action", "observation.state"


@dataclass
class Episode:
    """One recorded episode: its actions and states, frame by frame, in the dataset's own units."""

    index: int
    action: np.ndarray  # (T, A)
    state: np.ndarray | None  # (T, S), None when the dataset has no observation.state

    @property
    def frames(self) -> int:
        """Number of frames."""
        return len(self.action)


@dataclass(frozen=True)
class Pairing:
    """How the "hold" baseline maps state entries onto action joints: `order[j]` is the state index of joint j."""

    mode: str  # "by name" | "by position"
    order: tuple[int, ...]


def read_episodes(root: str | Path, episodes: list[int], features: dict) -> dict[int, Episode]:
    """Actions and states of `episodes` from the dataset's parquet files (only the columns needed)."""
    import polars as pl

    files = sorted((Path(root) / "data").rglob("*.parquet"))
    if not files:
        raise PiperctlError(f"{root} has no data/*.parquet files", hint="pass a LeRobot v3.0 dataset folder")
    columns = ["episode_index", "frame_index", ACTION] + ([STATE] if STATE in features else [])
    frame = (
        pl.scan_parquet(files, glob=False)  # a '[' in the dataset's path is not a pattern
        .select(columns)
        .filter(pl.col("episode_index").is_in(episodes))
        .sort(["episode_index", "frame_index"])
        .collect()
    )
    out: dict[int, Episode] = {}
    for (ep,), part in frame.group_by(["episode_index"], maintain_order=True):
        action = np.stack(part[ACTION].to_list()).astype(np.float64)
        state = np.stack(part[STATE].to_list()).astype(np.float64) if STATE in columns else None
        out[int(ep)] = Episode(int(ep), action, state)
    missing = sorted(set(episodes) - set(out))
    if missing:
        raise PiperctlError(f"the dataset has no frames for episodes {missing}")
    return out


def hold_pairing(features: dict) -> Pairing | None:
    """Pair state entries with action joints: by name when both are named alike, else by position; None if impossible."""
    if STATE not in features or ACTION not in features:
        return None
    a_shape, s_shape = tuple(features[ACTION]["shape"]), tuple(features[STATE]["shape"])
    a_names, s_names = _names(features[ACTION]), _names(features[STATE])
    if a_names and s_names and set(a_names) <= set(s_names):
        return Pairing("by name", tuple(s_names.index(n) for n in a_names))
    if a_shape == s_shape and len(a_shape) == 1:
        return Pairing("by position", tuple(range(a_shape[0])))
    return None


def hold_unavailable(features: dict) -> str | None:
    """Why the "hold" baseline cannot be scored on a dataset (None when it can): shown instead of a bare n/a."""
    if hold_pairing(features) is not None:
        return None
    if STATE not in features:
        return "the dataset has no observation.state"
    if ACTION not in features:
        return "the dataset has no action"
    a_dim, s_dim = (int(np.prod(features[k]["shape"])) for k in (ACTION, STATE))
    if a_dim != s_dim:
        return (
            f"action has {a_dim} values and observation.state {s_dim}, and the state does not name "
            "every action joint (e.g. velocity or leader-arm actions)"
        )
    return "action and observation.state are not one-dimensional vectors of the same joints"


def _names(feature: dict) -> list[str] | None:
    names = feature.get("names")
    if isinstance(names, dict):  # older datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if isinstance(names, list) else None


def joint_names(features: dict) -> list[str]:
    """The action's joint names from meta/info.json (`joint_<i>` where it names none)."""
    dim = int(np.prod(features[ACTION]["shape"]))
    names = _names(features[ACTION])
    return names if names and len(names) == dim else [f"joint_{i}" for i in range(dim)]


def hold(ep: Episode, pairing: Pairing) -> np.ndarray:
    """The "hold" baseline's action at every frame: the current state, on the action's joints."""
    assert ep.state is not None
    return ep.state[:, list(pairing.order)]


def repeat(ep: Episode) -> np.ndarray:
    """The "repeat" baseline's action at every frame: the previous recorded action (NaN at frame 0, never scored)."""
    out = np.full_like(ep.action, np.nan)
    out[1:] = ep.action[:-1]
    return out
