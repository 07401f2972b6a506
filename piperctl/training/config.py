"""`TrainConfig`: the one declaration of every training option, its default, and whether resume may change it.

The CLI reads its defaults and help from here, the API builds it from keyword arguments, and every
checkpoint stores it, so adding an option is one field below (plus its line in piperctl/cli/train.py,
which tests/test_cli_help.py checks against this class).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piperctl.defaults import TOLERANCE_S
from piperctl.errors import PiperctlError
from piperctl.hub import dataset_source

DEFAULT_DATASET_ID = "ISdept/piper_arm"
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
BEST_METRICS = ("auto", "val_loss", "val_action_nmae")
MIXED_FPS = ("refuse", "own-rate")


# Upper bounds of the count options: what a 64-bit step counter, a seed and a machine's memory and
# time allow (a billion steps is years of training at 10 steps/s); anything larger is a typo.
COUNT_LIMITS: dict[str, tuple[int, str]] = {
    "steps": (10**9, "a billion optimizer steps is years of training"),
    "save_every": (10**9, "at most --steps' own limit"),
    "eval_every": (10**9, "at most --steps' own limit"),
    "log_every": (10**9, "at most --steps' own limit"),
    "batch_size": (2**20, "a batch no accelerator's memory holds"),
    "grad_accum": (2**20, "micro-batches per optimizer step"),
    "num_workers": (1024, "DataLoader worker processes"),
    "keep_last": (10**6, "checkpoints kept on disk"),
    "seed": (2**63 - 1, "seeds are 64-bit integers"),
}


def option(
    default: Any, help: str, *, resumable: bool = False, factory: Any = None, resume_help: str | None = None
) -> Any:
    """A TrainConfig field: its default, its --help text (and `resume`'s, where it means more), whether `resume` may change it."""
    meta = {"help": help, "resumable": resumable, "resume_help": resume_help or help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint's training_state.json)."""

    output_dir: str = option("", "Run folder (new or empty).")
    dataset_id: str | None = option(
        None,
        f"Hub dataset id (default {DEFAULT_DATASET_ID}; with --dataset-root: local/<folder name>, never downloaded).",
    )
    dataset_root: str | None = option(None, "Local LeRobot v3.0 dataset folder.")
    dataset: list[str] = option(
        None,
        "A dataset to train on: a local folder or a Hub id (optionally @revision); repeat it to train "
        "on several as one (instead of --dataset-id/--dataset-root).",
        factory=list,
    )
    dataset_weights: str | None = option(
        None, "Sampling weights of the --dataset entries, e.g. 1,3 (default: every frame alike)."
    )
    rename_map: str | None = option(
        None,
        "JSON object: dataset feature name -> the name the policy sees (lerobot-train's rename_map), "
        'e.g. \'{"observation.images.top": "observation.images.front"}\'.',
    )
    convert_units: bool = option(
        False,
        "Convert datasets recorded in other joint units to the first dataset's (state, action, stats); "
        "without it, mixed units are refused.",
    )
    mixed_fps: str = option(
        "refuse",
        "Datasets recorded at other frame rates: refuse, or own-rate (each sampled at its own rate: "
        "action chunks and observation history count that dataset's frames, as lerobot-train on it alone).",
    )
    cameras: str | None = option(
        None, "Cameras to train on, by name (e.g. front,wrist; default: all). Others are not read."
    )
    tolerance_s: float = option(
        TOLERANCE_S,
        "Allowed error (s) between timestamps and frame_index / fps, as lerobot-train's.",
        resumable=True,
    )
    policy: str = option("act", "lerobot policy type: act, diffusion, ...")
    policy_options: dict[str, Any] = option(
        None, "Policy config fields (from --policy-opt / --policy-config).", factory=dict
    )
    steps: int = option(
        1000, "Total optimizer steps.", resumable=True, resume_help="New total steps (to extend the run)."
    )
    batch_size: int = option(8, "Batch size (per process).")
    save_every: int = option(500, "Checkpoint every K steps.", resumable=True)
    keep_last: int = option(3, "Keep the newest L checkpoints (0 keeps all).", resumable=True)
    seed: int = option(1000, "Seed for initialisation and data order.")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.", resumable=True)
    num_workers: int = option(2, "DataLoader worker processes.", resumable=True)
    lr: float | None = option(None, "Learning rate (default: the policy's preset).")
    imagenet_stats: bool = option(
        True,
        "Normalize camera images with ImageNet's mean/std, as lerobot-train does (the default vision "
        "backbones are ImageNet-pretrained); --no-imagenet-stats uses the training episodes' own.",
    )
    val_episodes: str | None = option(
        None,
        "Held-out episodes: a count (last N), a range A:B, or ids i,j; of each --dataset, or per "
        "dataset as NAME:SPEC;NAME:SPEC (NAME: the folder or repo name).",
    )
    eval_every: int = option(0, "Validation every K steps (default: --save-every).", resumable=True)
    best_metric: str = option(
        "auto",
        "What picks the best checkpoint: val_loss, val_action_nmae (open-loop action error on the "
        "held-out episodes), or auto (val_action_nmae when --eval-every is given, else val_loss).",
    )
    log_every: int = option(1, "Write metrics.jsonl every K steps.", resumable=True)
    init_from: str | None = option(
        None,
        "Start from these weights (fresh optimizer, step 0): a piperctl run, checkpoint or export, a "
        "lerobot pretrained_model folder, or a Hub model id.",
    )
    peft: str | None = option(
        None,
        "Fine-tune with PEFT adapters of this method (lora, ...) over --init-from's weights, which stay "
        "frozen; checkpoints then hold only the adapter.",
    )
    peft_options: dict[str, Any] = option(
        None, "PEFT config fields (from --peft-opt: r, lora_alpha, target_modules, ...).", factory=dict
    )
    freeze: list[str] | None = option(
        None,
        "Keep the parameters whose names match this glob fixed (e.g. 'model.backbone.*'); repeatable. "
        "Needs --init-from: frozen parameters come from it and are not saved.",
    )
    gradient_checkpointing: bool = option(
        False, "Recompute activations in backward to save memory, where the policy supports it."
    )
    allow_dataset_change: bool = option(
        False, "When resuming (resume, or train --resume-from-checkpoint): accept a changed dataset."
    )
    precision: str | None = option(
        None, "fp32, bf16 or fp16 (default: from the policy config's use_amp/dtype, as lerobot-train)."
    )
    grad_accum: int = option(1, "Micro-batches per optimizer step (effective batch = batch x processes x N).")
    augment: bool = option(False, "Augment training images with lerobot's image transforms (their defaults).")
    augment_config: str | None = option(
        None, "TOML or JSON file of lerobot ImageTransformsConfig fields (implies --augment)."
    )
    tracker: str | None = option(
        None, "Also log to tensorboard, wandb, trackio or mlflow (install that package).", resumable=True
    )
    async_save: bool = option(
        True, "Write checkpoints in the background while training goes on.", resumable=True
    )
    frame_cache: bool = option(
        True,
        "Decode each video once into an on-disk frame cache and serve samples from it "
        "(bit-identical, several times faster; costs disk, see docs/data-loading.md).",
        resumable=True,
    )
    cache_dir: str | None = option(
        None, "Folder of the frame cache (default: $HF_LEROBOT_HOME/piperctl_frame_cache).", resumable=True
    )
    deterministic: bool = option(
        False, "Use torch's deterministic algorithms (exact resume on CUDA; slower).", resumable=True
    )
    mirror: str | None = option(
        None,
        "Also upload each checkpoint, run.json and the final model in the background to this URL "
        "(s3://, gs://, az://, hf://, file://; credentials from each backend's usual place; docs/cloud.md).",
        resumable=True,
        resume_help="Upload checkpoints to this URL (default: the run's own --mirror, if any).",
    )

    @classmethod
    def names(cls) -> list[str]:
        """Every option's name."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def resumable(cls) -> tuple[str, ...]:
        """Options that may differ on resume; everything else comes from the checkpoint."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable"))

    @classmethod
    def default(cls, name: str) -> Any:
        """The default value of option `name` (for the CLI)."""
        f = cls.__dataclass_fields__[name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    @classmethod
    def help(cls, name: str, on_resume: bool = False) -> str:
        """The --help text of option `name` (of `resume`'s option with `on_resume`)."""
        return cls.__dataclass_fields__[name].metadata["resume_help" if on_resume else "help"]

    @classmethod
    def from_options(cls, output_dir: Any, dataset_id: str | None, options: dict[str, Any]) -> TrainConfig:
        """A validated config from keyword options (unknown names are refused)."""
        names = set(cls.names()) - {"output_dir", "dataset_id"}
        unknown = sorted(set(options) - names)
        if unknown:
            raise PiperctlError(
                f"unknown training option(s): {', '.join(unknown)}", hint=f"valid: {', '.join(sorted(names))}"
            )
        cfg = cls(output_dir=str(output_dir), dataset_id=dataset_id, **options)
        for name in ("dataset_root", "val_episodes", "init_from", "cameras", "augment_config", "cache_dir"):
            value = getattr(cfg, name)
            if value is not None:
                setattr(cfg, name, str(value))
        cfg.dataset = [str(d) for d in cfg.dataset or []]
        if isinstance(cfg.rename_map, dict):
            cfg.rename_map = json.dumps(cfg.rename_map, sort_keys=True)
        if isinstance(cfg.dataset_weights, list | tuple):
            cfg.dataset_weights = ",".join(str(w) for w in cfg.dataset_weights)
        first = dataset_source(cfg.dataset[0])[0] if cfg.dataset else None
        if cfg.dataset and (cfg.dataset_root or dataset_id not in (None, first)):
            raise PiperctlError(
                "--dataset and --dataset-id/--dataset-root both name the training data",
                hint="name every dataset with --dataset, or the one dataset with --dataset-id/--dataset-root",
            )
        if cfg.dataset_id is None and first is not None:
            cfg.dataset_id = first
        if cfg.dataset_id is None:
            # A local folder is never looked up on the Hub under someone else's name.
            cfg.dataset_id = (
                f"local/{Path(cfg.dataset_root).resolve().name}" if cfg.dataset_root else DEFAULT_DATASET_ID
            )
        if cfg.augment_config is not None:
            cfg.augment = True
        if isinstance(cfg.freeze, str):
            cfg.freeze = [cfg.freeze]
        cfg.validate()
        return cfg

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in checkpoints (a --mirror URL without its credentials)."""
        data = dataclasses.asdict(self)
        if data.get("mirror"):
            from piperctl.checkpoints.remote import redact

            data["mirror"] = redact(data["mirror"])
        return data

    def validate(self) -> None:
        """Refuse nonsensical values with one clear line each."""
        for name, (limit, why) in COUNT_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, int) and abs(value) > limit:
                raise PiperctlError(
                    f"--{name.replace('_', '-')} {value} is beyond the limit of {limit:,} ({why})",
                    hint=f"use a value of at most {limit:,}",
                )
        for name in ("steps", "batch_size", "save_every", "log_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise PiperctlError(
                    f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})"
                )
        for name in ("keep_last", "num_workers", "eval_every"):
            if getattr(self, name) < 0:
                raise PiperctlError(
                    f"--{name.replace('_', '-')} must be 0 or more (got {getattr(self, name)})"
                )
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise PiperctlError(
                f"--device {self.device!r} is not valid", hint="use auto, cpu, cuda, cuda:N or mps"
            )
        if self.precision not in (None, "fp32", "bf16", "fp16"):
            raise PiperctlError(f"--precision {self.precision!r} is not valid", hint="use fp32, bf16 or fp16")
        if self.tracker not in (None, *TRACKERS):
            raise PiperctlError(
                f"--tracker {self.tracker!r} is not valid", hint=f"use one of: {', '.join(TRACKERS)}"
            )
        if not self.tolerance_s >= 0:
            raise PiperctlError(f"--tolerance-s must be 0 or more (got {self.tolerance_s})")
        if self.lr is not None and not self.lr > 0:
            raise PiperctlError(f"--lr must be positive (got {self.lr})")
        if self.mirror:
            from piperctl.checkpoints.remote import is_url, redact

            if not is_url(self.mirror):
                raise PiperctlError(
                    f"--mirror {redact(self.mirror)!r} is not a URL",
                    hint="use s3://, gs://, az://, hf:// or file:///absolute/path (a mounted volume)",
                )
        self.renames()
        self.weights()
        if self.mixed_fps not in MIXED_FPS:
            raise PiperctlError(
                f"--mixed-fps {self.mixed_fps!r} is not valid", hint=f"use one of: {', '.join(MIXED_FPS)}"
            )
        if self.best_metric not in BEST_METRICS:
            raise PiperctlError(
                f"--best-metric {self.best_metric!r} is not valid",
                hint=f"use one of: {', '.join(BEST_METRICS)}",
            )

    def renames(self) -> dict[str, str]:
        """--rename-map as a dict (dataset feature name -> the name the policy sees)."""
        if not self.rename_map:
            return {}
        try:
            value = json.loads(self.rename_map)
        except ValueError as e:
            raise PiperctlError(
                f"--rename-map {self.rename_map!r} is not valid JSON ({e})",
                hint='write a JSON object, e.g. \'{"observation.images.top": "observation.images.front"}\'',
            ) from e
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in (*value, *value.values())):
            raise PiperctlError(
                f"--rename-map {self.rename_map!r} must be a JSON object of feature names to feature names",
                hint='e.g. \'{"observation.images.top": "observation.images.front"}\'',
            )
        return value

    def weights(self) -> list[float] | None:
        """--dataset-weights as numbers (one per --dataset), or None for every frame alike."""
        if not self.dataset_weights:
            return None
        try:
            values = [float(w) for w in self.dataset_weights.split(",")]
        except ValueError:
            values = []
        n = len(self.dataset) or 1
        if len(values) != n or not all(0 < w < float("inf") for w in values):
            raise PiperctlError(
                f"--dataset-weights {self.dataset_weights!r} must be {n} positive number(s), one per --dataset",
                hint="e.g. --dataset-weights 1,3 for two datasets, the second drawn three times as often",
            )
        return values

    def resolved_best_metric(self) -> str:
        """The metric that picks the best checkpoint once 'auto' is decided."""
        if self.best_metric != "auto":
            return self.best_metric
        return "val_action_nmae" if self.eval_every > 0 else "val_loss"


def resolve_device(name: str) -> str:
    """'auto' picks CUDA, then Apple MPS, then CPU (lerobot's choice); explicit devices must exist."""
    from lerobot.utils.device_utils import auto_select_torch_device, get_safe_torch_device

    if name == "auto":
        # lerobot logs a warning on CPU-only machines; choosing the CPU is not a problem here.
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            device = auto_select_torch_device()
        finally:
            logging.disable(previous)
        return "cpu" if device.type == "xpu" else device.type
    try:
        get_safe_torch_device(name)
    except ValueError as e:
        raise PiperctlError(
            f"--device {name} requested but {'CUDA' if name.startswith('cuda') else name.upper()} is not available",
            hint="use --device cpu or auto",
        ) from e
    return name


def read_fields_file(path: str | Path, what: str, fields_of: str) -> dict[str, Any]:
    """The table/object of a TOML (by suffix) or JSON file of config fields, with one-line errors naming `what`."""
    import tomllib

    path = Path(path)
    kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix.lower())
    if kind is None:
        raise PiperctlError(
            f"{what} {path} must be a .toml or .json file (got {path.suffix or 'no suffix'!r})",
            hint="write the fields as TOML or JSON and name the file accordingly",
        )
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except FileNotFoundError as e:
        raise PiperctlError(f"{what} {path} does not exist") from e
    except (OSError, ValueError) as e:
        raise PiperctlError(f"{what} {path} is not valid {kind} ({e})") from e
    if not isinstance(data, dict):
        raise PiperctlError(f"{what} {path} must hold a table/object of {fields_of} fields")
    return data
