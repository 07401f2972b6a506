"""piperctl: train LeRobot policies for the AgileX PiPER arm with checkpoints you can trust."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from piperctl.training.api import train

__all__ = ["__version__", "train"]


def __getattr__(name: str) -> Any:
    # `import piperctl` stays fast (no torch/lerobot) until the training API is actually used.
    if name == "train":
        from piperctl.training.api import train

        return train
    raise AttributeError(f"module 'piperctl' has no attribute {name!r}")
