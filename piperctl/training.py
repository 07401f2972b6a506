"""`piperctl train` / `resume`: our own training loop over lerobot's datasets, policies and optimizers."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from piperctl import __version__, distributed
from piperctl import checkpoint as ckpt
from piperctl.console import log, progress_bar
from piperctl.errors import PiperctlError
from piperctl.faults import maybe_crash

TRAINING_STATE_FORMAT = "piperctl-training-state"
# Options that may differ on resume; everything else comes from the checkpoint.
RESUMABLE_OPTIONS = ("steps", "save_every", "keep_last", "num_workers", "device", "eval_every", "log_every")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint's training_state.json)."""

    output_dir: str
    dataset_id: str = "ISdept/piper_arm"
    dataset_root: str | None = None
    policy: str = "act"
    policy_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 8
    save_every: int = 500
    keep_last: int = 3
    seed: int = 1000
    device: str = "auto"
    num_workers: int = 2
    lr: float | None = None
    val_episodes: str | None = None
    eval_every: int = 0
    log_every: int = 1
    init_from: str | None = None
    allow_dataset_change: bool = False

    def validate(self) -> None:
        """Refuse nonsensical values with one clear line each."""
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "save_every": self.save_every,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise PiperctlError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        for name, value in {
            "keep_last": self.keep_last,
            "num_workers": self.num_workers,
            "eval_every": self.eval_every,
        }.items():
            if value < 0:
                raise PiperctlError(f"--{name.replace('_', '-')} must be 0 or more (got {value})")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise PiperctlError(
                f"--device {self.device!r} is not valid", hint="use auto, cpu, cuda, cuda:N or mps"
            )
        if self.lr is not None and not self.lr > 0:
            raise PiperctlError(f"--lr must be positive (got {self.lr})")


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    losses: list[float]


class TrainingInterrupted(PiperctlError):
    """Raised after a signal made the loop save a checkpoint and stop."""


def resolve_device(name: str) -> str:
    """'auto' picks CUDA, then Apple MPS, then CPU; explicit devices must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PiperctlError(
            f"--device {name} requested but CUDA is not available", hint="use --device cpu or auto"
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PiperctlError(
            "--device mps requested but MPS is not available", hint="use --device cpu or auto"
        )
    return name


def _make_config(output_dir: str | Path, dataset_id: str, options: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"output_dir", "dataset_id"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise PiperctlError(
            f"unknown training option(s): {', '.join(unknown)}", hint=f"valid: {', '.join(sorted(names))}"
        )
    cfg = TrainConfig(output_dir=str(output_dir), dataset_id=dataset_id, **options)
    if cfg.dataset_root is not None:
        cfg.dataset_root = str(cfg.dataset_root)
    if cfg.val_episodes is not None:
        cfg.val_episodes = str(cfg.val_episodes)
    cfg.validate()
    return cfg


def train(
    output_dir: str | Path,
    dataset_id: str = "ISdept/piper_arm",
    resume_from_checkpoint: str | Path | None = None,
    **options: Any,
) -> TrainResult:
    """Train a LeRobot policy into `output_dir`, or continue from `resume_from_checkpoint`.

    Started by torchrun or `accelerate launch`, every process calls this and becomes one rank of a
    data-parallel run (see docs/distributed.md).
    """
    if resume_from_checkpoint is not None:
        return resume(resume_from_checkpoint, output_dir=output_dir, dataset_id=dataset_id, **options)
    with distributed.errors_once():
        cfg = _make_config(output_dir, dataset_id, options)
        dist = distributed.init(lambda: resolve_device(cfg.device))
        run_dir = Path(cfg.output_dir)
        dist.all_or_none(lambda: _refuse_existing_run(run_dir), main_only=True)
        run_id = dist.broadcast(uuid.uuid4().hex)
        return Trainer(cfg, run_dir, run_id, dist).run(start=None)


def _write_run_file(run_dir: Path, run_id: str) -> None:
    ckpt.write_json(
        run_dir / ckpt.RUN_FILE,
        {"format": "piperctl-run", "run_id": run_id, "created": _now(), "piperctl": __version__},
    )


def _refuse_existing_run(run_dir: Path) -> None:
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise PiperctlError(f"--output-dir {run_dir} is a file", hint="choose a folder for the run")
    if (run_dir / ckpt.RUN_FILE).exists() or ckpt.list_checkpoints(run_dir):
        raise PiperctlError(
            f"{run_dir} already holds a training run",
            hint=f"continue it with 'piperctl resume {run_dir}', or choose a new --output-dir",
        )
    if any(p for p in run_dir.iterdir() if not p.name.startswith(ckpt.TMP_PREFIX)):
        raise PiperctlError(f"--output-dir {run_dir} is not empty", hint="choose a new or empty folder")


def resolve_checkpoint(path: str | Path) -> tuple[Path, list[tuple[Path, str]]]:
    """A checkpoint folder as given, or the newest intact one of a run folder (plus what was skipped)."""
    path = Path(path)
    if not path.exists():
        raise PiperctlError(f"{path} does not exist", hint="pass a checkpoint-N folder or a run folder")
    if (
        ckpt.step_of(path) is not None
        or (path / ckpt.TRAINING_STATE).exists()
        or (path / ckpt.MANIFEST).exists()
        and not ckpt.list_checkpoints(path)
    ):
        return path, []
    if not path.is_dir():
        raise PiperctlError(f"{path} is not a folder", hint="pass a checkpoint-N folder or a run folder")
    return ckpt.find_resumable(path)


def load_training_state(folder: Path) -> dict:
    """Read and sanity-check training_state.json against the folder name."""
    state = ckpt.read_json(folder / ckpt.TRAINING_STATE, "training state")
    if state.get("format") != TRAINING_STATE_FORMAT:
        raise PiperctlError(f"{folder / ckpt.TRAINING_STATE} is not a piperctl training state")
    step = ckpt.step_of(folder)
    if step is None:
        raise PiperctlError(
            f"{folder.name} is not named checkpoint-N",
            hint="the step is read from the folder name; rename it back",
        )
    if state.get("step") != step:
        raise PiperctlError(
            f"{folder} is named for step {step} but its training_state.json says step {state.get('step')}",
            hint="the folder was renamed or mixed up; rename it to checkpoint-{} or pick another checkpoint".format(
                state.get("step")
            ),
        )
    return state


def _saved_device(path: str | Path) -> str:
    """The device a checkpoint (or a run's newest checkpoint) trains on, read without verifying it."""
    path = Path(path)
    folders = [path] if (path / ckpt.TRAINING_STATE).is_file() else ckpt.list_checkpoints(path)[::-1]
    for folder in folders:
        try:
            device = json.loads((folder / ckpt.TRAINING_STATE).read_text(encoding="utf-8"))["config"][
                "device"
            ]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        # Only a hint for choosing the process group's backend: the checkpoint is verified afterwards.
        if device in ("auto", "cpu", "cuda", "mps") or str(device).startswith("cuda:"):
            return str(device)
    return "auto"


def resume(
    path: str | Path, output_dir: str | Path | None = None, dataset_id: str | None = None, **changes: Any
) -> TrainResult:
    """Continue a run exactly where checkpoint `path` (or the newest intact one of a run folder) left it.

    Under a launcher, with any number of processes: the same number continues bit-exactly, another
    number continues from the same sample and says what changed (docs/distributed.md).
    """
    with distributed.errors_once():
        dist = distributed.init(lambda: resolve_device(changes.get("device") or _saved_device(path)))
        # Rank 0 checks the checkpoint (hashing it once, not once per rank) and hands the verdict round.
        cfg, folder, state = dist.all_or_none(
            lambda: _prepare_resume(path, output_dir, dataset_id, changes), main_only=True
        )
        return Trainer(cfg, folder.parent, state["run_id"], dist).run(start=(folder, state))


def _prepare_resume(
    path: str | Path, output_dir: str | Path | None, dataset_id: str | None, changes: dict[str, Any]
) -> tuple[TrainConfig, Path, dict]:
    """Check the checkpoint and the requested changes; the config to continue with, the folder, its state."""
    changes = dict(changes)
    folder, skipped = resolve_checkpoint(path)
    for p, why in skipped:
        log(f"skipping {p.name}: {why}")
    check = ckpt.check_checkpoint(folder)
    if not check.ok:
        raise PiperctlError(
            f"checkpoint {folder} is {check.state}: {'; '.join(check.problems)}",
            hint="pick another checkpoint; 'piperctl checkpoints verify' shows details",
        )
    state = load_training_state(folder)
    if skipped or Path(path) != folder:
        log(f"resuming from {folder} (newest intact checkpoint, step {state['step']})")
    saved = dict(state["config"])
    allow_change = bool(changes.pop("allow_dataset_change", False))
    for key, value in changes.items():
        if value is None:
            continue
        if key in RESUMABLE_OPTIONS:
            saved[key] = value
        elif key not in saved:
            raise PiperctlError(f"unknown training option {key!r}")
        elif saved[key] != value:
            if key == "policy":
                raise PiperctlError(
                    f"the checkpoint holds a {saved[key]!r} policy, not {value!r}",
                    hint="start a new run to train another policy type",
                )
            raise PiperctlError(
                f"--{key.replace('_', '-')} cannot change on resume (checkpoint has {saved[key]!r})",
                hint=f"only {', '.join('--' + o.replace('_', '-') for o in RESUMABLE_OPTIONS)} may change; start a new run otherwise",
            )
    if dataset_id is not None and dataset_id != saved["dataset_id"] and saved.get("dataset_root") is None:
        raise PiperctlError(
            f"the checkpoint was trained on {saved['dataset_id']}, not {dataset_id}",
            hint="use --allow-dataset-change with the same dataset layout",
        )
    run_dir = folder.parent
    if output_dir is not None and Path(output_dir).resolve() != run_dir.resolve():
        raise PiperctlError(
            f"checkpoint {folder} belongs to the run in {run_dir}, not {output_dir}",
            hint=f"resume into its own folder: 'piperctl resume {folder}'",
        )
    run_file = run_dir / ckpt.RUN_FILE
    if run_file.exists():
        run = ckpt.read_json(run_file, "run file")
        if run.get("run_id") != state.get("run_id"):
            raise PiperctlError(
                f"{run_dir} holds another run than checkpoint {folder.name} (run ids differ)",
                hint="copy the checkpoint into its own run folder before resuming",
            )
    else:
        ckpt.write_json(
            run_file,
            {"format": "piperctl-run", "run_id": state["run_id"], "created": _now(), "piperctl": __version__},
        )
    saved["allow_dataset_change"] = allow_change
    cfg = _make_config(saved.pop("output_dir", run_dir), saved.pop("dataset_id"), saved)
    cfg.output_dir = str(run_dir)
    if cfg.steps <= state["step"]:
        raise PiperctlError(
            f"the checkpoint is at step {state['step']} and the run ends at step {cfg.steps}",
            hint="pass --steps N with N larger than the checkpoint's step to extend the run",
        )
    return cfg, folder, state


class _Rate:
    """Smoothed steps per second for the progress display."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.value = 0.0

    def tick(self) -> float:
        now = time.perf_counter()
        inst = 1.0 / max(now - self._last, 1e-9)
        self._last = now
        self.value = inst if self.value == 0.0 else 0.9 * self.value + 0.1 * inst
        return self.value


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                # A second Ctrl-C means "now": give the default behaviour back and re-raise it.
                signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
                os.kill(os.getpid(), signum)
            # A repeated SIGTERM is a scheduler or launcher resending it (SLURM signals the whole job
            # step and torchrun forwards it too), not a request to abort: keep saving.
            return
        self.signum = signum
        log(
            f"received {signal.Signals(signum).name}: saving a checkpoint at the end of this step (Ctrl-C again to abort)"
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _processes(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _versions() -> dict[str, str]:
    import lerobot

    return {
        "piperctl": __version__,
        "lerobot": lerobot.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class _NoMetrics:
    """metrics.jsonl stand-in on the ranks that do not write files."""

    def write(self, record: dict) -> None:
        """Drop the record (rank 0 writes the mean over ranks)."""

    def close(self) -> None:
        """Nothing to close."""


class Trainer:
    """One training run (or one rank of a data-parallel run): builds the pieces, runs the loop, saves checkpoints."""

    def __init__(
        self, cfg: TrainConfig, run_dir: Path, run_id: str, dist: distributed.Dist | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.run_id = run_id
        self.dist = dist or distributed.Dist()

    # -- setup -----------------------------------------------------------------------------------

    def _setup(self, start: tuple[Path, dict] | None) -> None:
        from lerobot.datasets.factory import resolve_delta_timestamps

        from piperctl import data, policy, rng

        cfg = self.cfg
        dist = self.dist
        self.device = dist.device or resolve_device(cfg.device)
        if dist.is_main:
            removed = ckpt.remove_stale_tmp(self.run_dir)
            if removed:
                log(
                    f"removed {len(removed)} unfinished save(s) left by an interrupted run: {', '.join(p.name for p in removed)}"
                )

        meta = data.open_metadata(cfg.dataset_id, cfg.dataset_root)
        self.meta = meta
        self.fingerprint = data.fingerprint(meta)
        val = data.parse_val_episodes(cfg.val_episodes, meta.total_episodes)
        self.val_episodes = val
        self.train_episodes = [e for e in range(meta.total_episodes) if e not in set(val)]

        if start is None:
            rng.seed_everything(cfg.seed)
            options = dict(cfg.policy_options)
            if cfg.lr is not None:
                options.setdefault("optimizer_lr", cfg.lr)
            policy_cfg = policy.make_policy_config(cfg.policy, self.device, options)
        else:
            folder, state = start
            saved = state["dataset"]
            if saved["fingerprint"] != self.fingerprint and not cfg.allow_dataset_change:
                raise PiperctlError(
                    f"the dataset {cfg.dataset_root or cfg.dataset_id} differs from the one checkpoint {folder.name} was trained on (fingerprint mismatch)",
                    hint="pass --allow-dataset-change to resume on the changed dataset anyway",
                )
            if saved["fingerprint"] != self.fingerprint:
                log(
                    "warning: the dataset changed since this checkpoint (--allow-dataset-change): the data order is not exact"
                )
            policy_cfg = policy.load_policy_config(folder, self.device)
            if policy_cfg.type != cfg.policy:
                raise PiperctlError(
                    f"{folder}/config.json holds a {policy_cfg.type!r} policy but the run trains {cfg.policy!r}"
                )
        self.policy_cfg = policy_cfg

        self.policy = policy.build_policy(policy_cfg, meta)
        if start is None and cfg.init_from:
            init = Path(cfg.init_from)
            folder_init, _ = resolve_checkpoint(init)
            init_cfg = policy.load_policy_config(folder_init, self.device)
            if init_cfg.type != policy_cfg.type:
                raise PiperctlError(
                    f"--init-from {folder_init} holds a {init_cfg.type!r} policy, not {policy_cfg.type!r}"
                )
            policy.load_weights(self.policy, folder_init / ckpt.POLICY_WEIGHTS)
            log(f"initialised weights from {folder_init}")
        shapes = policy.feature_shapes(self.policy.config)
        if start is not None:
            folder, state = start
            dataset_shapes = policy.dataset_feature_shapes(meta)
            mismatched = {
                k: (v, dataset_shapes.get(k)) for k, v in shapes.items() if dataset_shapes.get(k) != v
            }
            if mismatched:
                key, (want, got) = next(iter(mismatched.items()))
                raise PiperctlError(
                    f"the dataset's features do not match the checkpoint's: {key} has shape {got}, the policy expects {want}",
                    hint="resume on a dataset with the same cameras, state and action shapes",
                )
            policy.load_weights(self.policy, folder / ckpt.POLICY_WEIGHTS)
        self.feature_shapes = shapes
        self.policy.to(self.device)

        if start is None:
            stats = data.train_stats(meta, self.train_episodes)
            self.preprocessor, self.postprocessor = policy.make_processors(policy_cfg, stats=stats)
        else:
            self.preprocessor, self.postprocessor = policy.make_processors(
                policy_cfg, pretrained=start[0], device=self.device
            )

        opt_cfg = policy_cfg.get_optimizer_preset()
        if cfg.lr is not None:
            opt_cfg.lr = cfg.lr
        self.grad_clip_norm = float(getattr(opt_cfg, "grad_clip_norm", 0.0) or 0.0)
        self.optimizer = opt_cfg.build(self.policy.get_optim_params())
        sched_cfg = policy_cfg.get_scheduler_preset()
        self.scheduler = sched_cfg.build(self.optimizer, cfg.steps) if sched_cfg is not None else None
        self.lr_schedule = self._describe_lr_schedule(sched_cfg)
        self.topology = [self._topology_entry(0)]

        self.step = 0
        self.samples_seen = 0
        self.position = data.DataPosition()
        if start is not None:
            folder, state = start
            try:
                opt_state = torch.load(folder / ckpt.OPTIMIZER_STATE, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any failure here means the file is not a plain state dict
                raise PiperctlError(
                    f"{folder / ckpt.OPTIMIZER_STATE} cannot be loaded safely ({str(e).splitlines()[0]})",
                    hint="the file is damaged or not a plain optimizer state; pick another checkpoint",
                ) from e
            try:
                self.optimizer.load_state_dict(opt_state)
            except (ValueError, KeyError, RuntimeError) as e:
                raise PiperctlError(
                    f"{folder / ckpt.OPTIMIZER_STATE} does not fit this policy's parameters ({e})"
                ) from e
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self.samples_seen = int(state["samples_seen"])
            self.position = data.DataPosition(int(state["data"]["epoch"]), int(state["data"]["offset"]))
            if not rng.load_rng_state(folder, dist.rank):
                # A rank the checkpoint's run did not have: a fresh stream of its own.
                rng.seed_everything(rng.derive_seed(cfg.seed, dist.rank, self.step))
            self.topology = list(state.get("topology") or [self._topology_entry(0, state)])
            if self.topology[-1]["world_size"] != dist.world_size:
                self.topology.append(self._topology_entry(self.step))
                self._log_world_size_change(state, rng.saved_ranks(folder))
            self.resumed_from = folder
        else:
            self.resumed_from = None

        delta = resolve_delta_timestamps(policy_cfg, meta)
        self.dataset = data.open_dataset(cfg.dataset_id, cfg.dataset_root, delta)
        drop_last_frames = int(getattr(policy_cfg, "drop_n_last_frames", 0) or 0)
        inner = data.make_sampler(
            meta, self.train_episodes, shuffle=True, seed=cfg.seed, drop_n_last_frames=drop_last_frames
        )
        self.sampler = data.EpochSampler(inner, cfg.batch_size, dist.rank, dist.world_size)
        if dist.world_size > 1 and len(inner) < self.sampler.global_batch:
            raise PiperctlError(
                f"the training episodes hold {len(inner)} frames, fewer than one global batch "
                f"({cfg.batch_size} x {dist.world_size} processes)",
                hint="lower --batch-size or use fewer processes",
            )
        pin = self.device.startswith("cuda")
        self.loader = data.make_loader(self.dataset, self.sampler, cfg.batch_size, cfg.num_workers, pin)
        self.epoch_len = len(inner)
        self.val_loader = None
        if val:
            vs = data.EpochSampler(
                data.make_sampler(meta, val, shuffle=False, seed=cfg.seed),
                cfg.batch_size,
                dist.rank,
                dist.world_size,
                drop_incomplete=False,
            )
            vs.epoch = -1
            self.val_loader = data.make_loader(self.dataset, vs, cfg.batch_size, 0, pin)
        if start is None and dist.rank > 0:
            # Same initial weights everywhere (seeded alike above), but each rank its own dropout and
            # noise from here on; rank 0 keeps the stream a single-process run has.
            rng.seed_everything(rng.derive_seed(cfg.seed, dist.rank))

    def _describe_lr_schedule(self, sched_cfg: Any) -> dict:
        """The learning-rate schedule as stored in training_state.json and stated in the log."""
        lrs = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        return {
            "type": sched_cfg.type if sched_cfg is not None else "constant",
            "warmup_steps": int(getattr(sched_cfg, "num_warmup_steps", None) or 0),
            "total_steps": self.cfg.steps,
            "peak_lr": max(lrs),
            "param_group_lrs": lrs,
            # The schedule advances once per optimizer step, whatever the number of processes.
            "unit": "optimizer step",
            "scaled_with_world_size": False,
        }

    def _topology_entry(self, from_step: int, state: dict | None = None) -> dict:
        """One stretch of the run with a fixed number of processes (from `state` if given)."""
        world = int(state.get("world_size", 1)) if state else self.dist.world_size
        per_process = self.cfg.batch_size
        effective = (
            int(state.get("effective_batch_size", per_process * world)) if state else per_process * world
        )
        return {
            "from_step": from_step,
            "world_size": world,
            "batch_size_per_process": per_process,
            "effective_batch_size": effective,
        }

    def _log_world_size_change(self, state: dict, saved_ranks: int) -> None:
        """Say what resuming with another number of processes changes."""
        before, now = self.topology[-2], self.topology[-1]
        left = self.cfg.steps - self.step
        log(
            f"world size changed: checkpoint {state['step']} was written by {_processes(before['world_size'])}, "
            f"this run has {now['world_size']}; effective batch {before['effective_batch_size']} -> "
            f"{now['effective_batch_size']} samples per step"
        )
        log(
            f"continuing from sample {self.samples_seen} (epoch {self.position.epoch}, position {self.position.offset}) "
            f"of the same data order; the LR schedule counts optimizer steps and is unchanged, so the remaining "
            f"{left} step(s) see {left * now['effective_batch_size']} samples instead of {left * before['effective_batch_size']}"
        )
        if now["world_size"] > saved_ranks:
            ranks = (
                f"rank {saved_ranks}"
                if now["world_size"] == saved_ranks + 1
                else f"ranks {saved_ranks}-{now['world_size'] - 1}"
            )
            log(f"{ranks}: no saved random state in the checkpoint, starting a fresh stream")
        log(
            "a resume with another world size is not bit-exact with either world size (see docs/distributed.md)"
        )

    # -- checkpointing ---------------------------------------------------------------------------

    def _training_state(self) -> dict:
        from piperctl.policy import feature_shapes  # noqa: F401

        return {
            "format": TRAINING_STATE_FORMAT,
            "version": 1,
            "step": self.step,
            "samples_seen": self.samples_seen,
            "data": {
                "epoch": self.position.epoch,
                "offset": self.position.offset,
                "epoch_length": self.epoch_len,
            },
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "seed": self.cfg.seed,
            "world_size": self.dist.world_size,
            "batch_size_per_process": self.cfg.batch_size,
            "effective_batch_size": self.cfg.batch_size * self.dist.world_size,
            "lr_schedule": self.lr_schedule,
            "topology": self.topology,
            "run_id": self.run_id,
            "config": dataclasses.asdict(self.cfg),
            "policy_type": self.policy_cfg.type,
            "feature_shapes": self.feature_shapes,
            "dataset": {
                "id": self.cfg.dataset_id,
                "root": self.cfg.dataset_root,
                "fingerprint": self.fingerprint,
                "total_episodes": self.meta.total_episodes,
                "total_frames": self.meta.total_frames,
                "train_episodes": self.train_episodes,
                "val_episodes": self.val_episodes,
            },
            "versions": _versions(),
            "created": _now(),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
        }

    def save_checkpoint(self) -> Path:
        """Write checkpoint-<step> atomically (rank 0, with every rank's RNG states), then apply --keep-last."""
        from piperctl.policy import save_model_files
        from piperctl.rng import capture_rng_state, save_rng_states

        step = self.step
        state = self._training_state()
        # Collecting every rank's generators is also the barrier before the save: all finished the step.
        rng_states = self.dist.all_gather(capture_rng_state())

        def write(folder: Path) -> None:
            save_model_files(folder, self.policy, self.preprocessor, self.postprocessor)
            maybe_crash("mid-save", step)
            torch.save(self.optimizer.state_dict(), folder / ckpt.OPTIMIZER_STATE)
            save_rng_states(folder, rng_states)
            (folder / ckpt.TRAINING_STATE).write_text(
                json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )

        def save() -> Path:
            path = ckpt.save_atomically(ckpt.checkpoint_dir(self.run_dir, step), write, step)
            maybe_crash("after-save", step)
            for old in ckpt.rotate(
                self.run_dir,
                self.cfg.keep_last,
                protect=self.resumed_from if self.resumed_from and self._saved_since_resume == 0 else None,
            ):
                log(f"removed old checkpoint {old.name} (--keep-last {self.cfg.keep_last})")
            return path

        # One writer; the other ranks wait for its verdict, so none runs ahead of (or outlives) a failed save.
        self.last_checkpoint = self.dist.all_or_none(save, main_only=True)
        self._saved_since_resume += 1
        return self.last_checkpoint

    def _start_run_folder(self) -> None:
        # Only now that dataset, policy and options are known to work does the folder become a run.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_file(self.run_dir, self.run_id)

    def _finish(self) -> None:
        from piperctl.metrics import plot_loss_curve

        self.save_final()
        plot_loss_curve(self.run_dir / "metrics.jsonl", self.run_dir / "loss_curve.png")

    def save_final(self) -> None:
        """Write the final model files into the run folder itself (same layout, no optimizer)."""
        from piperctl.policy import save_model_files

        staging = self.run_dir / f"{ckpt.TMP_PREFIX}final.{os.getpid()}"
        ckpt.save_atomically(
            staging,
            lambda f: save_model_files(f, self.policy, self.preprocessor, self.postprocessor),
            self.step,
        )
        manifest = ckpt.read_json(staging / ckpt.MANIFEST, "manifest")
        for rel in manifest["files"]:
            os.replace(staging / rel, self.run_dir / rel)
        os.replace(staging / ckpt.MANIFEST, self.run_dir / ckpt.MANIFEST)
        ckpt.fsync_dir(self.run_dir)
        import shutil

        shutil.rmtree(staging, ignore_errors=True)

    # -- the loop --------------------------------------------------------------------------------

    def _forward(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        for key in self.meta.camera_keys:
            if key in batch and batch[key].dtype == torch.uint8:
                batch[key] = batch[key].to(torch.float32) / 255.0
        batch = self.preprocessor(batch)
        return model(batch)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss over the held-out episodes, seeded so it neither varies nor disturbs training RNG."""
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            torch.manual_seed(self.cfg.seed)
            # Training mode without gradients: ACT only computes its full loss in training mode.
            for batch in self.val_loader:
                n = len(batch["index"])
                loss, _ = self._forward(self.policy, batch)
                total += float(loss) * n
                count += n
        # Each rank scored its own share of the validation frames.
        total, count = self.dist.sum([total, count])
        return total / max(count, 1)

    def run(self, start: tuple[Path, dict] | None) -> TrainResult:
        """Train until `cfg.steps`, checkpointing every `save_every` steps and on SIGINT/SIGTERM."""
        from piperctl import data
        from piperctl.metrics import MetricsLog

        dist = self.dist
        dist.all_or_none(lambda: self._setup(start))
        # DDP wraps the model only once every rank has built it: its constructor is a collective.
        self.model, self.optimizer = dist.prepare(self.policy, self.optimizer)
        cfg = self.cfg
        if start is None:
            dist.all_or_none(self._start_run_folder, main_only=True)
        self.last_checkpoint = start[0] if start else None
        self._saved_since_resume = 0
        metrics = (
            MetricsLog(self.run_dir / "metrics.jsonl", truncate_after=self.step)
            if dist.is_main
            else _NoMetrics()
        )
        n_params = sum(p.numel() for p in self.policy.parameters())
        eval_every = cfg.eval_every or cfg.save_every
        processes = _processes(dist.world_size)
        log(
            f"{'resuming' if start else 'training'} {self.policy_cfg.type} ({n_params / 1e6:.2f}M params) on {self.device}: "
            f"step {self.step} -> {cfg.steps}, batch {cfg.batch_size} x {processes} = effective batch "
            f"{cfg.batch_size * dist.world_size}, {len(self.train_episodes)} train / {len(self.val_episodes)} val episodes, "
            f"run {self.run_dir}"
        )
        sched = self.lr_schedule
        log(
            f"lr schedule: {sched['type']}"
            + (f" with {sched['warmup_steps']} warm-up steps" if sched["warmup_steps"] else "")
            + f", peak lr {sched['peak_lr']:.2e}, advancing once per optimizer step "
            f"({cfg.batch_size * dist.world_size} samples); not scaled with the number of processes"
        )
        losses: list[float] = []
        self.policy.train()
        stream = data.batches(self.loader, self.sampler, self.position)
        t_last, steps_since = time.perf_counter(), 0
        rate = _Rate()
        with _StopFlag() as stop, progress_bar("training", cfg.steps) as bar:
            bar.update(self.step)
            while True:
                # All ranks stop at the same step: a signal on any one of them stops every one.
                stop_signal = dist.agree_on_signal(stop.signum)
                if stop_signal or self.step >= cfg.steps:
                    break
                batch = next(stream)
                loss, _ = self._forward(self.model, batch)
                loss.backward()
                clip = self.grad_clip_norm if self.grad_clip_norm > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.policy.parameters(), clip, error_if_nonfinite=False
                )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.scheduler is not None:
                    self.scheduler.step()
                if hasattr(self.policy, "update"):
                    self.policy.update()
                self.step += 1
                self.samples_seen += self.sampler.global_count(len(batch["index"]))
                maybe_crash("sigterm", self.step)
                maybe_crash("sigint", self.step)
                loss_value = dist.mean(float(loss.detach()))
                losses.append(loss_value)
                if not math.isfinite(loss_value):
                    raise PiperctlError(
                        f"loss became {loss_value} at step {self.step}",
                        hint="lower --lr, or resume from an earlier checkpoint",
                    )
                steps_since += 1
                now = time.perf_counter()
                record = {
                    "step": self.step,
                    "loss": loss_value,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm),
                    "epoch": self.position.epoch,
                    "samples": self.samples_seen,
                }
                if self.val_loader is not None and (self.step % eval_every == 0 or self.step == cfg.steps):
                    record["val_loss"] = self.validation_loss()
                if self.step % cfg.log_every == 0 or "val_loss" in record or self.step == cfg.steps:
                    record["steps_per_s"] = steps_since / max(now - t_last, 1e-9)
                    metrics.write(record)
                    t_last, steps_since = now, 0
                saved = None
                if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    saved = self.save_checkpoint()
                fields = {
                    "loss": f"{loss_value:.4f}",
                    "lr": f"{record['lr']:.1e}",
                    "steps/s": f"{rate.tick():.2f}",
                }
                if "val_loss" in record:
                    fields["val"] = f"{record['val_loss']:.4f}"
                if self.last_checkpoint is not None:
                    fields["ckpt"] = self.last_checkpoint.name
                bar.update(1, **fields)
                if saved is not None and not bar.progress:
                    log(f"saved {saved}")
            if stop_signal:
                name = signal.Signals(stop_signal).name
                if dist.world_size > 1:
                    log(f"{name}: all {dist.world_size} processes stop at step {self.step}")
                if self.last_checkpoint is None or ckpt.step_of(self.last_checkpoint) != self.step:
                    self.save_checkpoint()
                metrics.close()
                dist.close()
                raise TrainingInterrupted(
                    f"{name} at step {self.step}: saved {self.last_checkpoint}",
                    hint=f"continue with: piperctl resume {self.last_checkpoint}{dist.launcher_hint}",
                    exit_code=128 + stop_signal,
                )
        metrics.close()
        dist.all_or_none(self._finish, main_only=True)
        log(f"done: step {self.step}, final model in {self.run_dir}, last checkpoint {self.last_checkpoint}")
        dist.close()
        return TrainResult(
            run_dir=self.run_dir, step=self.step, last_checkpoint=self.last_checkpoint, losses=losses
        )
