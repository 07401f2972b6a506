"""piperctl: train LeRobot policies for the AgileX PiPER arm with checkpoints you can trust.

`piperctl.train` and `piperctl.resume` are the Python API: the training API (`piperctl.training`)
wired with the open-loop scorer of `piperctl.evaluation` (for `--best-metric val_action_nmae`).
This is the top of the package: training never imports evaluation, so the wiring happens here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from piperctl.training.api import TrainResult

__all__ = ["__version__", "resume", "train"]


def train(
    output_dir: str | Path,
    dataset_id: str | None = None,
    resume_from_checkpoint: str | Path | None = None,
    **options: Any,
) -> TrainResult:
    """Train a LeRobot policy into `output_dir` (options: the fields of `TrainConfig`); see `training.api.train`."""
    # Imported here: `import piperctl` stays fast (no torch/lerobot) until training is actually used.
    from piperctl.evaluation.per_dataset import score_during_training
    from piperctl.training import api

    return api.train(output_dir, dataset_id, resume_from_checkpoint, scorer=score_during_training, **options)


def resume(
    path: str | Path, output_dir: str | Path | None = None, dataset_id: str | None = None, **changes: Any
) -> TrainResult:
    """Continue a run exactly where checkpoint `path` (or a run folder's newest intact one) left it."""
    from piperctl.evaluation.per_dataset import score_during_training
    from piperctl.training import api

    return api.resume(path, output_dir, dataset_id, scorer=score_during_training, **changes)
