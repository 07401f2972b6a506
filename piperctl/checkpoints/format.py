"""The checkpoint and run-folder contract: file names, and the typed training state every checkpoint carries.

docs/checkpoint-format.md describes the same layout for people. Adding a checkpoint file is one
entry here (plus its writer in the trainer and its check in `verify`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

# Temporary folders and files start with TMP_PREFIX so that a later start can tell ours from the user's.
from piperctl.fs import TMP_PREFIX  # noqa: F401 - part of the checkpoint contract

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "piperctl-checkpoint"
MANIFEST_VERSION = 1
RUN_FILE = "run.json"
RUN_FORMAT = "piperctl-run"
# Held (flock) by the one process that writes a run folder; see checkpoints/lock.py.
LOCK_FILE = "run.lock"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"

POLICY_WEIGHTS = "policy.safetensors"
POLICY_CONFIG = "config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
POSTPROCESSOR_CONFIG = "postprocessor_config.json"
OPTIMIZER_STATE = "optimizer_state.pth"
TRAINING_STATE = "training_state.json"
RNG_STATE_TENSORS = "rng_state.safetensors"
RNG_STATE_JSON = "rng_state.json"

# The model half of a checkpoint (also the final model in a run folder). Processor state files
# (`*_processor.safetensors`) are named by lerobot and listed in the processor configs.
MODEL_FILES = (POLICY_WEIGHTS, POLICY_CONFIG, PREPROCESSOR_CONFIG, POSTPROCESSOR_CONFIG)
# What resuming needs on top of the model.
RESUME_FILES = (OPTIMIZER_STATE, TRAINING_STATE, RNG_STATE_TENSORS, RNG_STATE_JSON)
REQUIRED_FILES = (*MODEL_FILES, *RESUME_FILES)

# lerobot's own `pretrained_model` layout (what `PreTrainedPolicy.from_pretrained` and
# `make_pre_post_processors(pretrained_path=...)` read): a run's final model and every export.
PRETRAINED_DIR = "pretrained_model"
LEROBOT_WEIGHTS = "model.safetensors"
LEROBOT_PREPROCESSOR = "policy_preprocessor.json"
LEROBOT_POSTPROCESSOR = "policy_postprocessor.json"
MODEL_INFO = "piperctl.json"  # where the model came from: run, step, dataset and split, losses
MODEL_CARD = "README.md"

# A fine-tuning run (--peft, --freeze) saves only what it trains; the rest comes from its base model,
# named (and fingerprinted) by BASE_REF. A PEFT model in lerobot's layout is PEFT's own adapter files
# beside config.json (use_peft: true): lerobot's make_policy loads it as an adapter over its base.
BASE_REF = "base_model.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class ModelLayout:
    """The file names of the model half of a folder: piperctl's checkpoint names or lerobot's own."""

    name: str
    weights: str
    preprocessor: str
    postprocessor: str
    config: str = POLICY_CONFIG
    extra: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """The model files every folder of this layout holds."""
        return (self.weights, self.config, self.preprocessor, self.postprocessor, *self.extra)


CHECKPOINT_LAYOUT = ModelLayout("checkpoint", POLICY_WEIGHTS, PREPROCESSOR_CONFIG, POSTPROCESSOR_CONFIG)
LEROBOT_LAYOUT = ModelLayout("lerobot", LEROBOT_WEIGHTS, LEROBOT_PREPROCESSOR, LEROBOT_POSTPROCESSOR)
PEFT_LAYOUT = ModelLayout(
    "peft", ADAPTER_WEIGHTS, LEROBOT_PREPROCESSOR, LEROBOT_POSTPROCESSOR, extra=(ADAPTER_CONFIG, BASE_REF)
)


def model_layout(folder: Path, listed: object = None) -> ModelLayout:
    """Which layout a model folder uses: the names in `listed` (its manifest's files) decide, else the files present.

    Folders written before exports existed (a run's final model beside its checkpoints) use the
    checkpoint names; anything else is read as lerobot's layout.
    """
    if listed is not None:
        names = set(listed) if isinstance(listed, dict | list | set | tuple) else set()
    else:
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if CHECKPOINT_LAYOUT.weights in names or CHECKPOINT_LAYOUT.preprocessor in names:
        return CHECKPOINT_LAYOUT
    if ADAPTER_CONFIG in names:
        return PEFT_LAYOUT
    return LEROBOT_LAYOUT


_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def step_of(path: Path) -> int | None:
    """The step encoded in a `checkpoint-N` folder name, or None for other names."""
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint at `step` inside `run_dir`."""
    return run_dir / f"{CHECKPOINT_PREFIX}{step}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoint-N` folders of a run, oldest (lowest step) first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0)


def looks_like_checkpoint(path: Path) -> bool:
    """True for a folder named checkpoint-N or holding a training state (a checkpoint, not a run)."""
    return step_of(path) is not None or (path / TRAINING_STATE).exists()


def is_safe_relpath(rel: object) -> bool:
    """True for a relative POSIX path that stays inside its folder (no '..', no absolute, no backslash)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def utc_now() -> str:
    """The current time as the ISO-8601 UTC string every piperctl file records."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Problem:
    """A reason a file does not meet the contract: a stable code (for reports) and a sentence."""

    code: str
    message: str


@dataclass
class RunInfo:
    """run.json: which run a folder holds (checkpoints of another run are refused)."""

    run_id: str
    created: str = field(default_factory=utc_now)
    piperctl: str = ""
    # The run's options, so that a run stopped before its first checkpoint can start again as it was.
    config: dict[str, Any] | None = None

    def to_json(self) -> dict:
        """The JSON object written to run.json."""
        return {"format": RUN_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> RunInfo:
        """Parse run.json (unknown keys are ignored; a missing run_id reads as empty)."""
        return cls(
            run_id=str(data.get("run_id") or ""),
            created=str(data.get("created") or ""),
            piperctl=str(data.get("piperctl") or ""),
            config=data.get("config") if isinstance(data.get("config"), dict) else None,
        )


@dataclass
class DataOrder:
    """Where the training data order stands: epoch, samples consumed in it, and the epoch's length."""

    epoch: int = 0
    offset: int = 0
    epoch_length: int = 0


@dataclass
class DatasetInfo:
    """The dataset a checkpoint was trained on, and how its episodes were split."""

    id: str
    root: str | None
    fingerprint: str
    total_episodes: int
    total_frames: int
    train_episodes: list[int]
    val_episodes: list[int]
    # Of one dataset among several (`train --dataset A --dataset B`); absent in older checkpoints.
    spec: str | None = None  # as named on the command line
    name: str | None = None  # short name in messages and metrics
    revision: str | None = None  # Hub revision asked for
    commit: str | None = None  # the Hub commit it resolved to (lerobot's snapshot cache)
    weight: float | None = None  # sampling weight (--dataset-weights)
    rename_map: dict[str, str] = field(default_factory=dict)  # recorded name -> policy name
    units: dict[str, str] = field(default_factory=dict)  # joints/gripper -> unit as recorded
    converted_to: dict[str, str] = field(default_factory=dict)  # joints/gripper -> unit trained in
    fps: int | None = None  # its frame rate (several rates: --mixed-fps own-rate samples each at its own)

    @classmethod
    def from_json(cls, data: dict) -> DatasetInfo:
        """Parse one dataset entry (keys a version lacks get their defaults)."""
        fields = cls.__dataclass_fields__
        required = {k for k, f in fields.items() if f.default is MISSING and f.default_factory is MISSING}
        # A null optional field takes its default; a null required one (a Hub dataset's root) stays null.
        return cls(**{k: v for k, v in data.items() if k in fields and (v is not None or k in required)})


@dataclass
class Topology:
    """One stretch of a run with a fixed number of processes, from optimizer step `from_step` on."""

    from_step: int
    world_size: int
    batch_size_per_process: int
    effective_batch_size: int

    @classmethod
    def from_json(cls, data: object) -> Topology | None:
        """Parse one `topology` entry (None when malformed)."""
        if not isinstance(data, dict):
            return None
        values = [data.get(k) for k in cls.__dataclass_fields__]
        if not all(isinstance(v, int) for v in values):
            return None
        return cls(*values)


@dataclass
class LrSchedule:
    """The learning-rate schedule of a run, as stated at its start (it advances once per optimizer step)."""

    type: str  # lerobot scheduler preset, or "constant"
    warmup_steps: int
    total_steps: int
    peak_lr: float
    param_group_lrs: list[float]
    unit: str = "optimizer step"
    scaled_with_world_size: bool = False

    @classmethod
    def from_json(cls, data: object) -> LrSchedule | None:
        """Parse the `lr_schedule` entry of a training state (None when absent or malformed)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                type=str(data["type"]),
                warmup_steps=int(data.get("warmup_steps") or 0),
                total_steps=int(data["total_steps"]),
                peak_lr=data["peak_lr"],
                param_group_lrs=list(data.get("param_group_lrs") or []),
                unit=str(data.get("unit") or "optimizer step"),
                scaled_with_world_size=bool(data.get("scaled_with_world_size", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class BestCheckpoint:
    """The best checkpoint of a run so far: its step and the validation metric that made it best (lower wins)."""

    step: int
    metric: str
    value: float

    @classmethod
    def from_json(cls, data: object) -> BestCheckpoint | None:
        """Parse the `best` entry of a training state (None when absent or malformed)."""
        if not isinstance(data, dict):
            return None
        step, metric, value = data.get("step"), data.get("metric"), data.get("value")
        if not isinstance(step, int) or not isinstance(metric, str) or not isinstance(value, int | float):
            return None
        return cls(step, metric, float(value))


@dataclass
class TrainingState:
    """training_state.json: everything besides tensors that exact resumption needs, and what the run was."""

    FORMAT = "piperctl-training-state"
    VERSION = 1

    step: int
    samples_seen: int
    data: DataOrder
    seed: int
    run_id: str
    config: dict[str, Any]
    policy_type: str | None = None
    feature_shapes: dict[str, list[int]] = field(default_factory=dict)
    dataset: DatasetInfo | None = None
    scheduler: dict | None = None
    scaler: dict | None = None  # fp16 loss scaler
    world_size: int = 1
    grad_accum: int = 1
    batch_size_per_process: int | None = None
    effective_batch_size: int | None = None
    lr_schedule: LrSchedule | None = None
    topology: list[Topology] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=utc_now)
    resumed_from: str | None = None
    best: BestCheckpoint | None = None
    # Every dataset of the run, in order (`dataset` is the first); empty in checkpoints before issue 18.
    datasets: list[DatasetInfo] = field(default_factory=list)

    @property
    def all_datasets(self) -> list[DatasetInfo]:
        """Every dataset of the run: `datasets`, or the one `dataset` of a checkpoint from before them."""
        return self.datasets or ([self.dataset] if self.dataset else [])

    def to_json(self) -> dict:
        """The JSON object written to training_state.json."""
        return {"format": self.FORMAT, "version": self.VERSION, **asdict(self)}

    @classmethod
    def problems(cls, data: object, folder: Path | None = None) -> list[Problem]:
        """Every way `data` (parsed JSON) falls short of a training state for `folder` (empty when none)."""
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            return [Problem("training-state-invalid", f"{TRAINING_STATE} is not a piperctl training state")]
        found: list[Problem] = []
        if folder is not None:
            step = step_of(folder)
            if step is None:
                found.append(
                    Problem(
                        "bad-name",
                        f"folder {folder.name!r} is not named checkpoint-N: resume reads the step from the folder name",
                    )
                )
            elif data.get("step") != step:
                found.append(
                    Problem(
                        "step-mismatch",
                        f"folder is named for step {step} but {TRAINING_STATE} says step {data.get('step')} "
                        f"(renamed or mixed up? rename it to checkpoint-{data.get('step')} or pick another checkpoint)",
                    )
                )
        lacking = [
            k for k in ("samples_seen", "seed", "run_id", "config") if k not in data or data[k] is None
        ]
        if not isinstance(data.get("step"), int):
            lacking.insert(0, "step")
        order = data.get("data")
        if not isinstance(order, dict) or not all(isinstance(order.get(k), int) for k in ("epoch", "offset")):
            lacking.append("data.epoch/offset")
        if not isinstance(data.get("config"), dict | None):
            lacking.append("config (an object)")
        if lacking:
            found.append(Problem("training-state-invalid", f"{TRAINING_STATE} lacks {', '.join(lacking)}"))
        return found

    @classmethod
    def from_json(cls, data: dict) -> TrainingState:
        """Build from JSON that passed `problems` (older files lacking optional keys get defaults)."""
        order = data["data"]
        dataset = data.get("dataset")
        return cls(
            step=int(data["step"]),
            samples_seen=int(data["samples_seen"]),
            data=DataOrder(int(order["epoch"]), int(order["offset"]), int(order.get("epoch_length") or 0)),
            seed=int(data["seed"]),
            run_id=str(data["run_id"]),
            config=dict(data["config"]),
            policy_type=data.get("policy_type"),
            feature_shapes=dict(data.get("feature_shapes") or {}),
            dataset=DatasetInfo.from_json(dataset) if isinstance(dataset, dict) else None,
            scheduler=data.get("scheduler"),
            scaler=data.get("scaler"),
            world_size=int(data.get("world_size") or 1),
            grad_accum=int(data.get("grad_accum") or 1),
            batch_size_per_process=data.get("batch_size_per_process"),
            effective_batch_size=data.get("effective_batch_size"),
            lr_schedule=LrSchedule.from_json(data.get("lr_schedule")),
            topology=[t for t in map(Topology.from_json, data.get("topology") or []) if t is not None],
            versions=dict(data.get("versions") or {}),
            created=str(data.get("created") or ""),
            resumed_from=data.get("resumed_from"),
            best=BestCheckpoint.from_json(data.get("best")),
            datasets=[DatasetInfo.from_json(d) for d in data.get("datasets") or [] if isinstance(d, dict)],
        )

    @classmethod
    def parse(cls, data: object, folder: Path | None = None) -> tuple[TrainingState | None, list[Problem]]:
        """`data` (parsed JSON) as a training state, or None when it is not one; plus every problem found."""
        problems = cls.problems(data, folder)
        if any(p.code == "training-state-invalid" for p in problems) or not isinstance(data, dict):
            return None, problems
        try:
            return cls.from_json(data), problems
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            why = Problem("training-state-invalid", f"{TRAINING_STATE} holds a malformed field ({e})")
            return None, [*problems, why]

    @classmethod
    def read(cls, folder: Path) -> TrainingState | None:
        """A folder's training_state.json, read leniently: None when it is missing, garbled or not a state.

        For looking before verifying (which checkpoint a run recorded as best, its options); loaders that
        act on a checkpoint read it strictly (`checkpoints.manager.read_training_state`).
        """
        try:
            data = json.loads((folder / TRAINING_STATE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return cls.parse(data)[0]

    def to_text(self) -> str:
        """The file's text: pretty, sorted JSON."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


def read_metrics(path: Path) -> list[dict]:
    """All well-formed lines of a run's metrics.jsonl (a torn last line from a crash is skipped)."""
    if not path.is_file():
        return []
    return parse_metrics(path.read_text(encoding="utf-8"))


def parse_metrics(text: str) -> list[dict]:
    """The well-formed step records of metrics.jsonl text (a torn last line is skipped)."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows
