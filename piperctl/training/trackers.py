"""Experiment trackers (TensorBoard, W&B, trackio, MLflow) through accelerate's tracking API.

They log what metrics.jsonl logs, plus the run's options once. Resuming a run continues the same
tracker run: TensorBoard appends to RUN_DIR/tensorboard/<run id>, W&B and MLflow resume the run
whose id is the piperctl run id, trackio resumes the run of the same name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from piperctl.errors import PiperctlError
from piperctl.fs import first_line

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


class Tracker:
    """One tracker run: `log(record)` per metrics.jsonl line, `finish()` at the end."""

    def __init__(
        self, name: str, run_dir: Path, run_id: str, config: dict[str, Any], resuming: bool, step: int = 0
    ) -> None:
        package = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise PiperctlError(
                f"--tracker {name} needs the {package} package, which is not installed",
                hint=f"pip install {package} (or: pip install 'piperctl[{name}]')",
            )
        from accelerate import tracking

        project = f"piperctl-{Path(run_dir).resolve().name}"
        if name == "tensorboard":
            # On resume, events past the checkpoint's step (logged before the interruption) are dropped.
            extra = {"purge_step": step + 1} if resuming else {}
            self.tracker = tracking.TensorBoardTracker(run_id, Path(run_dir) / "tensorboard", **extra)
        elif name == "wandb":
            self.tracker = tracking.WandBTracker(project, id=run_id, resume="allow", name=run_id)
        elif name == "trackio":
            self.tracker = tracking.TrackioTracker(project, name=run_id, resume="allow")
        else:
            self.tracker = tracking.MLflowTracker(
                experiment_name=project, run_id=run_id if resuming else None
            )
        try:
            self.tracker.start()
            if not resuming:
                self.tracker.store_init_configuration(_flat(config))
        except Exception as e:  # noqa: BLE001 - each tracker library fails in its own way (no login, offline)
            raise PiperctlError(
                f"--tracker {name} could not start ({first_line(e)})",
                hint="check its login/network settings, or train without --tracker",
            ) from e

    def log(self, record: dict[str, Any]) -> None:
        """Log one metrics.jsonl record at its step."""
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        self.tracker.log(values, step=int(record["step"]))

    def finish(self) -> None:
        """Flush and close the tracker run."""
        self.tracker.finish()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Hyperparameters as trackers accept them: flat keys, scalar values (others as strings)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        elif value is None or isinstance(value, bool | int | float | str):
            out[name] = "none" if value is None else value
        else:
            out[name] = str(value)
    return out
