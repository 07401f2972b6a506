"""Training: the config, the trainer and its loop, data order, policies, RNG, signals, multi-process.

`from piperctl.training import train, resume` is this layer's API; importing this package stays light
until one of them is used. `piperctl.train` / `piperctl.resume` are the same, wired with evaluation's
open-loop scorer (needed for `--best-metric val_action_nmae`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from piperctl.training.api import resume, train
    from piperctl.training.trainer import TrainingInterrupted

__all__ = ["TrainingInterrupted", "resume", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "resume"):
        from piperctl.training import api

        return getattr(api, name)
    if name == "TrainingInterrupted":
        from piperctl.training.trainer import TrainingInterrupted

        return TrainingInterrupted
    raise AttributeError(f"module 'piperctl.training' has no attribute {name!r}")
