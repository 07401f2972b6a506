"""Where a model comes from: a checkpoint, a run (its best, final or newest model), an export, or a lerobot folder.

`export`, `eval` and `train --init-from` all take such a path; this module turns it into one
`ModelSource` (the folder, its file layout, and what piperctl knows about how it was trained) and
says which model of a run it picked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piperctl import hub
from piperctl.checkpoints import format as fmt
from piperctl.checkpoints.integrity import hash_pending, scan_checkpoint
from piperctl.errors import PiperctlError
from piperctl.fs import first_line


@dataclass
class ModelSource:
    """A model folder and what is known about it."""

    folder: Path
    layout: fmt.ModelLayout
    kind: str  # checkpoint | best | final | model (an export or a lerobot pretrained_model)
    description: str  # for people: which model this is and why it was picked
    run_dir: Path | None = None
    state: fmt.TrainingState | None = None  # a checkpoint's training state
    info: dict[str, Any] | None = None  # piperctl.json of a final model or an export
    best: fmt.BestCheckpoint | None = None
    saved_step: int | None = None  # the step another tool recorded (a lerobot-train checkpoint)

    @property
    def step(self) -> int | None:
        """The optimizer step the weights were saved at, when known."""
        if self.state is not None:
            return self.state.step
        if self.saved_step is not None:
            return self.saved_step
        step = (self.info or {}).get("step")
        return step if isinstance(step, int) else None

    @property
    def dataset(self) -> dict[str, Any] | None:
        """The training dataset (`id`, `root`, `fingerprint`, `train_episodes`, `val_episodes`, ...), when known."""
        if self.state is not None and self.state.dataset is not None:
            from dataclasses import asdict

            return asdict(self.state.dataset)
        data = (self.info or {}).get("dataset")
        return data if isinstance(data, dict) else None

    @property
    def datasets(self) -> list[dict[str, Any]]:
        """Every training dataset (one entry per `train --dataset`, else the one), when known."""
        from dataclasses import asdict

        if self.state is not None and self.state.datasets:
            return [asdict(d) for d in self.state.datasets]
        listed = (self.info or {}).get("datasets")
        if isinstance(listed, list) and listed:
            return [d for d in listed if isinstance(d, dict)]
        return [self.dataset] if self.dataset else []

    @property
    def val_episodes(self) -> list[int]:
        """The episodes the run held out for validation (empty when none or unknown)."""
        eps = (self.dataset or {}).get("val_episodes") or []
        return [int(e) for e in eps if isinstance(e, int)]


def read_model_info(folder: Path) -> dict[str, Any] | None:
    """piperctl.json of a model folder (None when absent or unreadable: a plain lerobot folder has none)."""
    try:
        data = json.loads((folder / fmt.MODEL_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_best(run_dir: Path) -> tuple[fmt.BestCheckpoint, Path] | None:
    """The best checkpoint a run recorded (from its newest readable training state), if that folder still exists."""
    for folder in reversed(fmt.list_checkpoints(run_dir)):
        state = fmt.TrainingState.read(folder)
        if state is None:
            continue
        if state.best is None:
            return None
        path = fmt.checkpoint_dir(run_dir, state.best.step)
        return (state.best, path) if path.is_dir() else None
    return None


def _require_intact(
    folder: Path, what: str, required: tuple[str, ...] = fmt.REQUIRED_FILES, strict: bool = True
) -> None:
    """Refuse a folder that disagrees with its manifest (sizes and sha256), before anything loads it."""
    check = scan_checkpoint(folder, required=required, strict_contents=strict)
    if check.ok:
        hash_pending([check])
    if not check.ok:
        raise PiperctlError(
            f"{what} {folder} is {check.state}: {'; '.join(check.problems)}",
            hint=f"run 'piperctl checkpoints verify {folder}' for details, or pick another checkpoint",
        )


def _checkpoint_source(folder: Path, kind: str, description: str, best: fmt.BestCheckpoint | None = None):
    from piperctl.checkpoints.manager import read_training_state

    _require_intact(folder, "checkpoint")
    state = read_training_state(folder)
    return ModelSource(
        folder, fmt.CHECKPOINT_LAYOUT, kind, description, run_dir=folder.parent, state=state, best=best
    )


def resolve_model(path: str | Path, *, final: bool = False) -> ModelSource:
    """The model at `path`: a checkpoint-N folder, a model folder, or a run (its best, else final, else newest).

    With `final`, a run gives its final model even when it recorded a best checkpoint.
    """
    from piperctl.checkpoints.manager import find_resumable

    path = Path(path)
    if not path.exists():
        raise PiperctlError(
            f"{path} does not exist", hint="pass a run folder, a checkpoint-N folder or an exported model"
        )
    if not path.is_dir():
        raise PiperctlError(
            f"{path} is not a folder", hint="pass a run folder, a checkpoint-N folder or an exported model"
        )
    if fmt.looks_like_checkpoint(path):
        return _checkpoint_source(path, "checkpoint", f"checkpoint {path.name}")
    is_run = (path / fmt.RUN_FILE).is_file() or bool(fmt.list_checkpoints(path))
    if is_run:
        best = None if final else find_best(path)
        if best is not None:
            record, folder = best
            return _checkpoint_source(
                folder,
                "best",
                f"{folder.name}, the run's best checkpoint ({record.metric} {record.value:.4g} at step {record.step})",
                best=record,
            )
        final_dir = path / fmt.PRETRAINED_DIR
        if (final_dir / fmt.MANIFEST).is_file():
            layout = fmt.model_layout(final_dir)  # lerobot's, or a PEFT adapter's
            _require_intact(final_dir, "final model", layout.files)
            info = read_model_info(final_dir)
            step = (info or {}).get("step")
            return ModelSource(
                final_dir,
                layout,
                "final",
                f"the run's final model ({fmt.PRETRAINED_DIR}, step {step})",
                run_dir=path,
                info=info,
            )
        if (path / fmt.MANIFEST).is_file() and (path / fmt.POLICY_WEIGHTS).is_file():
            # A run written before final models moved to pretrained_model/: its files sit in the run folder.
            _require_intact(path, "final model", fmt.MODEL_FILES, strict=False)
            return ModelSource(path, fmt.CHECKPOINT_LAYOUT, "final", "the run's final model", run_dir=path)
        if final:
            raise PiperctlError(
                f"{path} has no final model yet (training did not finish)",
                hint="drop --final to use its newest checkpoint",
            )
        folder, _ = find_resumable(path)
        return _checkpoint_source(folder, "checkpoint", f"{folder.name}, the run's newest intact checkpoint")
    if (path / fmt.POLICY_CONFIG).is_file():
        layout = fmt.model_layout(path)
        if (path / fmt.MANIFEST).is_file():
            _require_intact(path, "model", layout.files)
        info = read_model_info(path)
        step = _lerobot_train_step(path.parent) if path.name == fmt.PRETRAINED_DIR else None
        return ModelSource(path, layout, "model", f"the model in {path}", info=info, saved_step=step)
    lerobot = _lerobot_train_checkpoint(path)
    if lerobot is not None:
        return lerobot
    raise PiperctlError(
        f"{path} holds no model (no config.json, no checkpoint-N folders)",
        hint="pass a run folder, a checkpoint-N folder, an exported model or a lerobot pretrained_model folder",
    )


# lerobot-train's output layout (lerobot.utils.constants): RUN/checkpoints/<step:06d>/pretrained_model/
# (fmt.PRETRAINED_DIR, the name our final models share), RUN/checkpoints/last -> the newest step, and
# training_state/training_step.json beside pretrained_model/.
LEROBOT_CHECKPOINTS = "checkpoints"
LEROBOT_STEP_FILE = "training_state/training_step.json"


def _lerobot_train_step(checkpoint: Path) -> int | None:
    """The step of a lerobot-train checkpoint folder: from its training_step.json, else its name."""
    try:
        step = json.loads((checkpoint / LEROBOT_STEP_FILE).read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        step = None
    if isinstance(step, int):
        return step
    name = checkpoint.resolve().name
    return int(name) if name.isdigit() else None


def _lerobot_train_checkpoint(path: Path) -> ModelSource | None:
    """A lerobot-train run (its newest step), `checkpoints/`, `checkpoints/last` or `checkpoints/<step>`; None otherwise."""
    if (path / fmt.PRETRAINED_DIR / fmt.POLICY_CONFIG).is_file():
        chosen, why = path, "named"
    else:
        steps_dir = path / LEROBOT_CHECKPOINTS if (path / LEROBOT_CHECKPOINTS).is_dir() else path
        steps = (
            sorted(
                (
                    p
                    for p in steps_dir.iterdir()
                    if p.name.isdigit() and (p / fmt.PRETRAINED_DIR / fmt.POLICY_CONFIG).is_file()
                ),
                key=lambda p: int(p.name),
            )
            if steps_dir.is_dir()
            else []
        )
        if not steps:
            return None
        chosen, why = steps[-1], "newest"
    folder = chosen / fmt.PRETRAINED_DIR
    step = _lerobot_train_step(chosen)
    at = f" (step {step})" if step is not None else ""
    which = "" if why == "named" else ", the run's newest"
    return ModelSource(
        folder,
        fmt.model_layout(folder),
        "model",
        f"lerobot-train checkpoint {chosen.resolve().name}{at}{which}",  # `last` is a link to a step
        info=read_model_info(folder),
        saved_step=step,
    )


def resolve_pretrained(spec: str | Path) -> ModelSource:
    """`--init-from`: a local model (as `resolve_model`), or a Hub model id such as `lerobot/act_aloha_sim_transfer_cube_human`."""
    source = hub.local_or_repo_id(spec)
    if isinstance(source, Path):
        return resolve_model(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = snapshot_download(
            str(spec), allow_patterns=[fmt.POLICY_CONFIG, fmt.LEROBOT_WEIGHTS, "*.json", "*.safetensors"]
        )
    except (HFValidationError, ValueError) as e:
        raise PiperctlError(f"--init-from {spec} is neither a local folder nor a Hub model id ({e})") from e
    except Exception as e:  # noqa: BLE001 - offline, not found, unauthorized: huggingface_hub has many error types
        offline = "offline" in f"{type(e).__name__} {e}".lower()
        raise PiperctlError(
            f"cannot download {spec} from the Hugging Face Hub"
            + (" (HF_HUB_OFFLINE is set)" if offline else f" ({first_line(e)})"),
            hint="go online, or pass a local pretrained_model folder"
            if offline
            else "check the model id and your network/login",
        ) from e
    folder = Path(folder)
    if not (folder / fmt.LEROBOT_WEIGHTS).is_file():
        raise PiperctlError(
            f"Hub model {spec} has no {fmt.LEROBOT_WEIGHTS}", hint="pass a lerobot policy repo"
        )
    return ModelSource(folder, fmt.LEROBOT_LAYOUT, "model", f"Hub model {spec}", info=read_model_info(folder))


def check_features_fit(policy_cfg: Any, ds_meta: Any, what: str) -> None:
    """Refuse a policy whose input/output features are missing from, or shaped otherwise in, the dataset."""
    from piperctl.checkpoints.model import dataset_feature_shapes, feature_shapes

    have = dataset_feature_shapes(ds_meta)
    for key, shape in feature_shapes(policy_cfg).items():
        if key not in have:
            raise PiperctlError(
                f"{what} expects feature {key} (shape {shape}), which the dataset does not have",
                hint=f"the dataset has: {', '.join(sorted(have))}",
            )
        if have[key] != shape:
            raise PiperctlError(
                f"{what} expects {key} of shape {shape}, the dataset's {key} has shape {have[key]}",
                hint="use a dataset recorded with the same cameras, state and action sizes",
            )
