"""The `Trainer`: one training run (or one rank of a data-parallel run) over lerobot's pieces.

`setup()` builds the dataset, policy, processors and optimizer (fresh, or from a checkpoint);
`run()` is the loop, readable top to bottom: take a batch, `train_step()`, log, `validate()` when
due, let the `CheckpointManager` save when due, stop cleanly on a signal.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from piperctl import __version__
from piperctl.checkpoints.format import (
    LOSS_CURVE,
    METRICS_FILE,
    OPTIMIZER_STATE,
    POLICY_WEIGHTS,
    PRETRAINED_DIR,
    TRAINING_STATE,
    BestCheckpoint,
    DataOrder,
    DatasetInfo,
    TrainingState,
    step_of,
)
from piperctl.checkpoints.manager import CheckpointManager
from piperctl.console import log, progress_bar
from piperctl.errors import PiperctlError
from piperctl.faults import maybe_crash
from piperctl.training import data, rng
from piperctl.training.config import TrainConfig, resolve_device
from piperctl.training.distributed import Dist
from piperctl.training.metrics import MetricsLog, NoMetrics, Rate, plot_loss_curve
from piperctl.training.precision import Precision
from piperctl.training.signals import StopFlag


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    losses: list[float]


class TrainingInterrupted(PiperctlError):
    """Raised after a signal made the loop save a checkpoint and stop."""


def processes(n: int) -> str:
    """'1 process' / 'N processes'."""
    return f"{n} process{'es' if n != 1 else ''}"


def _versions() -> dict[str, str]:
    import lerobot

    return {
        "piperctl": __version__,
        "lerobot": lerobot.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class Trainer:
    """Builds the pieces of a run, runs the loop, and hands checkpoints to its `CheckpointManager`."""

    cfg: TrainConfig
    run_dir: Path
    run_id: str
    dist: Dist
    ckpts: CheckpointManager
    device: str
    # the data
    meta: Any
    fingerprint: str
    dropped_cameras: list[str]  # cameras of the dataset left out by --cameras
    train_episodes: list[int]
    val_episodes: list[int]
    dataset: Any
    sampler: data.EpochSampler
    loader: Any
    val_loader: Any | None
    epoch_len: int
    # the model and its optimisation
    policy_cfg: Any
    policy: torch.nn.Module
    model: torch.nn.Module  # `policy`, wrapped in DDP with several processes
    feature_shapes: dict[str, list[int]]
    preprocessor: Any
    postprocessor: Any
    optimizer: Any
    scheduler: Any | None
    precision: Precision
    grad_clip_norm: float
    lr_schedule: dict
    # where the run stands
    step: int
    samples_seen: int
    position: data.DataPosition
    topology: list[dict]
    resumed_from: Path | None
    best: BestCheckpoint | None  # the lowest validation metric so far, and its checkpoint's step

    def __init__(self, cfg: TrainConfig, run_dir: Path, run_id: str, dist: Dist | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.run_id = run_id
        self.dist = dist or Dist()
        self.ckpts = CheckpointManager(
            run_dir, save_every=cfg.save_every, keep_last=cfg.keep_last, total_steps=cfg.steps
        )
        self.step = 0
        self.samples_seen = 0
        self.position = data.DataPosition()
        self.resumed_from = None
        self._shadow: torch.nn.Module | None = None
        self._optimizer_shadow: Any = None
        self.best = None

    # -- setup -----------------------------------------------------------------------------------

    def setup(self, start: tuple[Path, TrainingState] | None) -> None:
        """Open the dataset and build policy, processors and optimizer: fresh, or as checkpoint `start` left them."""
        self.device = self.dist.device or resolve_device(self.cfg.device)
        self.precision = Precision(self.cfg.precision or "fp32", self.device, self.dist.accelerator)
        if self.cfg.deterministic:
            # cuBLAS needs a fixed workspace for reproducible results (read when CUDA starts).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(self.cfg.deterministic)
        if self.dist.is_main:
            removed = self.ckpts.clean_stale()
            if removed:
                log(
                    f"removed {len(removed)} unfinished save(s) left by an interrupted run: {', '.join(p.name for p in removed)}"
                )
        self._open_metadata()
        if start is None:
            self._build_fresh()
        else:
            self._build_resumed(*start)
        self._open_data()
        if self._background_saves:
            self._snapshot()  # allocate the CPU copies now, so that saves only copy into them
        if start is None and self.dist.rank > 0:
            # Same initial weights everywhere (seeded alike above), but each rank its own dropout and
            # noise from here on; rank 0 keeps the stream a single-process run has.
            rng.seed_everything(rng.derive_seed(self.cfg.seed, self.dist.rank))

    def _open_metadata(self) -> None:
        from piperctl.datasets import inspect

        cfg = self.cfg
        root = Path(cfg.dataset_root) if cfg.dataset_root else None
        if root is not None:
            data.require_dataset_folder(root)
            inspect.require_v30(root)
        self.meta = data.open_metadata(cfg.dataset_id, root)
        cameras = inspect.select_cameras(self.meta.root, cfg.cameras)
        if root is not None:
            # Everything lerobot would otherwise fetch from the Hub, or reject at the first step.
            inspect.require_files(root, cameras=[k for k in cameras if k in self.meta.video_keys])
            data.check_data_files(root)
            inspect.require_consistent_timestamps(root, fps=self.meta.fps, tolerance_s=cfg.tolerance_s)
        self.dropped_cameras = data.drop_cameras(self.meta, cameras)
        data.require_inputs(self.meta, cfg.policy, cfg.cameras)
        self.fingerprint = data.fingerprint(self.meta)
        self.val_episodes = data.parse_val_episodes(cfg.val_episodes, self.meta.total_episodes)
        held_out = set(self.val_episodes)
        self.train_episodes = [e for e in range(self.meta.total_episodes) if e not in held_out]

    def _build_fresh(self) -> None:
        from piperctl.training.init_from import init_policy_config
        from piperctl.training.policy import build_policy, make_policy_config, new_processors

        cfg = self.cfg
        rng.seed_everything(cfg.seed)
        options = dict(cfg.policy_options)
        if cfg.lr is not None:
            options.setdefault("optimizer_lr", cfg.lr)
        init = self._init_source() if cfg.init_from else None
        if init is None:
            self.policy_cfg = make_policy_config(cfg.policy, self.device, options)
        else:
            self.policy_cfg = init_policy_config(init, cfg.policy, self.device, options, self.meta)
        self.policy = build_policy(self.policy_cfg, self.meta)
        if init is not None:
            self._init_weights(init)
        self._set_feature_shapes(check_against=None)
        self.policy.to(self.device)
        stats = data.train_stats(self.meta, self.train_episodes)
        if cfg.imagenet_stats:
            stats = data.with_imagenet_stats(stats, self.meta)
        self.preprocessor, self.postprocessor = new_processors(self.policy_cfg, stats)
        self._make_optimizer()
        self.topology = [self._topology_entry(0)]

    def _build_resumed(self, folder: Path, state: TrainingState) -> None:
        from piperctl.checkpoints.model import load_policy_config, load_processors, load_weights
        from piperctl.training.policy import build_policy

        cfg = self.cfg
        saved_fingerprint = state.dataset.fingerprint if state.dataset else None
        if saved_fingerprint != self.fingerprint and not cfg.allow_dataset_change:
            raise PiperctlError(
                f"the dataset {cfg.dataset_root or cfg.dataset_id} differs from the one checkpoint {folder.name} was trained on (fingerprint mismatch)",
                hint="pass --allow-dataset-change to resume on the changed dataset anyway",
            )
        if saved_fingerprint != self.fingerprint:
            log(
                "warning: the dataset changed since this checkpoint (--allow-dataset-change): the data order is not exact"
            )
        self.policy_cfg = load_policy_config(folder, self.device)
        if self.policy_cfg.type != cfg.policy:
            raise PiperctlError(
                f"{folder}/config.json holds a {self.policy_cfg.type!r} policy but the run trains {cfg.policy!r}"
            )
        self.policy = build_policy(self.policy_cfg, self.meta)
        self._set_feature_shapes(check_against=folder)
        load_weights(self.policy, folder / POLICY_WEIGHTS)
        self.policy.to(self.device)
        self.preprocessor, self.postprocessor = load_processors(self.policy_cfg, folder, self.device)
        self._make_optimizer()
        self._load_optimizer(folder)
        self.precision.load_state_dict(state.scaler)
        if self.scheduler is not None and state.scheduler is not None:
            self.scheduler.load_state_dict(state.scheduler)
        self.step = state.step
        self.samples_seen = state.samples_seen
        self.position = data.DataPosition(state.data.epoch, state.data.offset)
        if not rng.load_rng_state(folder, self.dist.rank):
            # A rank the checkpoint's run did not have: a fresh stream of its own.
            rng.seed_everything(rng.derive_seed(cfg.seed, self.dist.rank, self.step))
        self.topology = list(state.topology) or [self._topology_entry(0, state)]
        if self.topology[-1]["world_size"] != self.dist.world_size:
            self.topology.append(self._topology_entry(self.step))
            self._log_world_size_change(state, rng.saved_ranks(folder))
        self.resumed_from = folder
        self._restore_best(state)
        # The checkpoint resumed from stays until a newer one is saved, whatever --keep-last says.
        self.ckpts.protect = folder
        self.ckpts.last = folder

    def _init_source(self) -> Any:
        from piperctl.checkpoints.sources import resolve_pretrained

        return resolve_pretrained(self.cfg.init_from)

    def _init_weights(self, init: Any) -> None:
        from piperctl.checkpoints.model import load_weights

        load_weights(self.policy, init.folder / init.layout.weights)
        log(f"initialised weights from {init.description}")

    def _set_feature_shapes(self, check_against: Path | None) -> None:
        from piperctl.checkpoints.model import dataset_feature_shapes, feature_shapes

        shapes = feature_shapes(self.policy.config)
        if check_against is not None:
            dataset_shapes = dataset_feature_shapes(self.meta)
            mismatched = {
                k: (v, dataset_shapes.get(k)) for k, v in shapes.items() if dataset_shapes.get(k) != v
            }
            if mismatched:
                key, (want, got) = next(iter(mismatched.items()))
                raise PiperctlError(
                    f"the dataset's features do not match the checkpoint's: {key} has shape {got}, the policy expects {want}",
                    hint="resume on a dataset with the same cameras, state and action shapes",
                )
        self.feature_shapes = shapes

    def _make_optimizer(self) -> None:
        opt_cfg = self.policy_cfg.get_optimizer_preset()
        if self.cfg.lr is not None:
            opt_cfg.lr = self.cfg.lr
        self.grad_clip_norm = float(getattr(opt_cfg, "grad_clip_norm", 0.0) or 0.0)
        self.optimizer = opt_cfg.build(self.policy.get_optim_params())
        sched_cfg = self.policy_cfg.get_scheduler_preset()
        self.scheduler = sched_cfg.build(self.optimizer, self.cfg.steps) if sched_cfg is not None else None
        self.lr_schedule = self._describe_lr_schedule(sched_cfg)

    def _load_optimizer(self, folder: Path) -> None:
        path = folder / OPTIMIZER_STATE
        try:
            # The full integrity check (which scans this pickle) passed before resume got here.
            opt_state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here means the file is not a plain state dict
            raise PiperctlError(
                f"{path} cannot be loaded safely ({str(e).splitlines()[0]})",
                hint="the file is damaged or not a plain optimizer state; pick another checkpoint",
            ) from e
        try:
            self.optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise PiperctlError(f"{path} does not fit this policy's parameters ({e})") from e

    def _open_data(self) -> None:
        from lerobot.datasets.factory import resolve_delta_timestamps

        cfg, dist = self.cfg, self.dist
        delta = resolve_delta_timestamps(self.policy_cfg, self.meta)
        self.dataset = data.open_dataset(
            cfg.dataset_id, cfg.dataset_root, delta, tolerance_s=cfg.tolerance_s, drop=self.dropped_cameras
        )
        if cfg.frame_cache:
            from piperctl.training.frame_cache import FrameCache

            # Built here, before any DataLoader worker starts: workers only read it.
            cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
            self.dataset = FrameCache.wrap(self.dataset, cache_dir, progress=dist.is_main)
        drop_last_frames = int(getattr(self.policy_cfg, "drop_n_last_frames", 0) or 0)
        inner = data.make_sampler(
            self.meta, self.train_episodes, shuffle=True, seed=cfg.seed, drop_n_last_frames=drop_last_frames
        )
        self.sampler = data.EpochSampler(inner, cfg.batch_size, dist.rank, dist.world_size)
        if dist.world_size > 1 and len(inner) < self.sampler.global_batch:
            raise PiperctlError(
                f"the training episodes hold {len(inner)} frames, fewer than one global batch "
                f"({cfg.batch_size} x {dist.world_size} processes)",
                hint="lower --batch-size or use fewer processes",
            )
        pin = self.device.startswith("cuda")
        # Augmentation touches training batches only, never validation.
        transform = data.image_transforms(cfg.augment, cfg.augment_config)
        self.loader = data.make_loader(
            self.dataset,
            self.sampler,
            cfg.batch_size,
            cfg.num_workers,
            pin,
            transform=transform,
            camera_keys=self.meta.camera_keys,
        )
        self.epoch_len = len(inner)
        self.val_loader = None
        if self.val_episodes:
            vs = data.EpochSampler(
                data.make_sampler(self.meta, self.val_episodes, shuffle=False, seed=cfg.seed),
                cfg.batch_size,
                dist.rank,
                dist.world_size,
                drop_incomplete=False,
            )
            vs.epoch = -1
            self.val_loader = data.make_loader(self.dataset, vs, cfg.batch_size, 0, pin)

    # -- description ----------------------------------------------------------------------------

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

    def _topology_entry(self, from_step: int, state: TrainingState | None = None) -> dict:
        """One stretch of the run with a fixed number of processes (from `state` if given)."""
        world = state.world_size if state else self.dist.world_size
        per_process = self.cfg.batch_size
        accum = self.cfg.grad_accum
        effective = (
            (state.effective_batch_size or per_process * world * accum)
            if state
            else per_process * world * accum
        )
        return {
            "from_step": from_step,
            "world_size": world,
            "batch_size_per_process": per_process,
            "effective_batch_size": effective,
        }

    def _log_world_size_change(self, state: TrainingState, saved_ranks: int) -> None:
        """Say what resuming with another number of processes changes."""
        before, now = self.topology[-2], self.topology[-1]
        left = self.cfg.steps - self.step
        log(
            f"world size changed: checkpoint {state.step} was written by {processes(before['world_size'])}, "
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

    # -- checkpoints -----------------------------------------------------------------------------

    def training_state(self) -> TrainingState:
        """Where the run stands now, as stored in training_state.json."""
        return TrainingState(
            step=self.step,
            samples_seen=self.samples_seen,
            data=DataOrder(self.position.epoch, self.position.offset, self.epoch_len),
            seed=self.cfg.seed,
            run_id=self.run_id,
            config=self.cfg.to_json(),
            policy_type=self.policy_cfg.type,
            feature_shapes=self.feature_shapes,
            dataset=DatasetInfo(
                id=self.cfg.dataset_id,
                root=self.cfg.dataset_root,
                fingerprint=self.fingerprint,
                total_episodes=self.meta.total_episodes,
                total_frames=self.meta.total_frames,
                train_episodes=self.train_episodes,
                val_episodes=self.val_episodes,
            ),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            world_size=self.dist.world_size,
            batch_size_per_process=self.cfg.batch_size,
            effective_batch_size=self.effective_batch,
            grad_accum=self.cfg.grad_accum,
            scaler=self.precision.state_dict(),
            lr_schedule=self.lr_schedule,
            topology=self.topology,
            versions=_versions(),
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
            best=self.best,
        )

    def save_checkpoint(self, background: bool = False) -> Path | None:
        """Write checkpoint-<step> (rank 0, with every rank's RNG states); the manager publishes and rotates.

        `background`: copy the state to CPU and let the manager write it while training goes on
        (returns None; the checkpoint appears when the write completes).
        """
        step, state = self.step, self.training_state()
        # Collecting every rank's generators is also the barrier before the save: all finished the step.
        rng_states = self.dist.all_gather(rng.capture_rng_state())
        if background:
            self.ckpts.wait()  # the copies below are reused: the previous save must be done with them
            policy, optimizer_state = self._snapshot()
        else:
            policy, optimizer_state = self.policy, self.optimizer.state_dict()

        def write(folder: Path) -> None:
            from piperctl.checkpoints.model import save_model_files

            save_model_files(folder, policy, self.preprocessor, self.postprocessor)
            maybe_crash("mid-save", step)
            maybe_crash("disk-full", step)
            torch.save(optimizer_state, folder / OPTIMIZER_STATE)
            rng.save_rng_states(folder, rng_states)
            (folder / TRAINING_STATE).write_text(state.to_text(), encoding="utf-8")

        if background:
            self.ckpts.save_in_background(step, write)
            return None
        # One writer; the other ranks wait for its verdict, so none runs ahead of (or outlives) a failed save.
        path = self.dist.all_or_none(lambda: self.ckpts.save(step, write), main_only=True)
        self.ckpts.last = path
        return path

    def _snapshot(self) -> tuple[torch.nn.Module, dict]:
        """CPU copies of the weights (in a shadow policy, built once) and of the optimizer state."""
        from piperctl.checkpoints.model import policy_from_config

        if self._shadow is None:
            # Building a module draws initial weights from the global generators: keep training's stream.
            with data.isolated_rng(0):
                self._shadow = policy_from_config(self.policy_cfg).to("cpu")
        self._shadow.load_state_dict(self.policy.state_dict())
        # Copying into the buffers of the previous save avoids allocating (and page-faulting) them anew.
        self._optimizer_shadow = _cpu_copy(self.optimizer.state_dict(), into=self._optimizer_shadow)
        return self._shadow, self._optimizer_shadow

    @property
    def _background_saves(self) -> bool:
        # Several processes save synchronously: every rank must learn at once that a save failed.
        return self.cfg.async_save and self.dist.world_size == 1

    def _write_final(self, folder: Path) -> None:
        from piperctl.checkpoints.export import model_card, model_info, write_model_info
        from piperctl.checkpoints.format import LEROBOT_LAYOUT, MODEL_CARD
        from piperctl.checkpoints.model import save_model_files

        save_model_files(folder, self.policy, self.preprocessor, self.postprocessor, LEROBOT_LAYOUT)
        info = model_info(self.training_state(), self.run_dir, "final")
        write_model_info(folder, info)
        (folder / MODEL_CARD).write_text(model_card(info), encoding="utf-8")
        maybe_crash("mid-final-save", self.step)

    def _finish(self) -> None:
        self.ckpts.save_final(self.step, self._write_final)
        plot_loss_curve(self.run_dir / METRICS_FILE, self.run_dir / LOSS_CURVE)

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step, all processes and micro-batches together."""
        return self.cfg.batch_size * self.dist.world_size * self.cfg.grad_accum

    # -- the loop --------------------------------------------------------------------------------

    def _forward(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        for key in self.meta.camera_keys:
            if key in batch and batch[key].dtype == torch.uint8:
                batch[key] = batch[key].to(torch.float32) / 255.0
        return model(self.preprocessor(batch))

    def train_step(self, stream: Iterator[dict]) -> tuple[float, float]:
        """One optimizer step over `--grad-accum` batches: the loss (mean over ranks) and the gradient norm."""
        accum = self.cfg.grad_accum
        total = 0.0
        for micro in range(accum):
            batch = next(stream)
            # DDP all-reduces the gradients once, after the last micro-batch.
            with self.dist.no_sync(self.model, skip=micro < accum - 1):
                with self.precision.autocast():
                    loss, _ = self._forward(self.model, batch)
                self.precision.backward(loss / accum if accum > 1 else loss)
            total += float(loss.detach())
            self.samples_seen += self.sampler.global_count(len(batch["index"]))
        grad_norm = self.precision.clip_and_step(
            self.optimizer, self.policy.parameters(), self.grad_clip_norm
        )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if hasattr(self.policy, "update"):
            self.policy.update()
        self.step += 1
        maybe_crash("sigterm", self.step)
        maybe_crash("sigint", self.step)
        maybe_crash("kill", self.step)
        loss_value = self.dist.mean(total / accum if accum > 1 else total)
        if not math.isfinite(loss_value):
            raise PiperctlError(
                f"loss became {loss_value} at step {self.step}",
                hint="lower --lr, or resume from an earlier checkpoint",
            )
        return loss_value, grad_norm

    @property
    def best_metric(self) -> str:
        """The validation metric that picks the best checkpoint (lower is better)."""
        return self.cfg.resolved_best_metric()

    def _update_best(self, value: float) -> bool:
        """Record `value` of the best metric at this step; True when it is a new best."""
        from piperctl.checkpoints.format import checkpoint_dir

        if self.best is not None and self.best.metric == self.best_metric and not value < self.best.value:
            return False
        if self.best is not None and self.best.metric != self.best_metric:
            log(f"best checkpoint now chosen by {self.best_metric} (was {self.best.metric})")
        self.best = BestCheckpoint(self.step, self.best_metric, float(value))
        self.ckpts.best = checkpoint_dir(self.run_dir, self.step)
        return True

    def _restore_best(self, state: TrainingState) -> None:
        from piperctl.checkpoints.format import checkpoint_dir

        self.best = state.best
        if state.best is not None and checkpoint_dir(self.run_dir, state.best.step).is_dir():
            self.ckpts.best = checkpoint_dir(self.run_dir, state.best.step)

    def validate_open_loop(self) -> float:
        """Open-loop action error (mean normalised MAE of the executed action) on the held-out episodes."""
        from piperctl.evaluation.openloop import score_during_training

        value = self.dist.broadcast(score_during_training(self) if self.dist.is_main else None)
        self.policy.train()
        return float(value)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over the held-out episodes, seeded so it neither varies nor disturbs training RNG."""
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            torch.manual_seed(self.cfg.seed)
            # Training mode without gradients: ACT only computes its full loss in training mode.
            for batch in self.val_loader:
                n = len(batch["index"])
                with self.precision.autocast():
                    loss, _ = self._forward(self.policy, batch)
                total += float(loss) * n
                count += n
        # Each rank scored its own share of the validation frames.
        total, count = self.dist.sum([total, count])
        return total / max(count, 1)

    def run(self, start: tuple[Path, TrainingState] | None) -> TrainResult:
        """Train until `cfg.steps`, checkpointing when the manager says so and on SIGINT/SIGTERM."""
        cfg, dist = self.cfg, self.dist
        dist.all_or_none(lambda: self.setup(start))
        # DDP wraps the model only once every rank has built it: its constructor is a collective.
        self.model, self.optimizer = dist.prepare(self.policy, self.optimizer)
        if start is None:
            dist.all_or_none(lambda: self.ckpts.start_run(self.run_id, self.cfg.to_json()), main_only=True)
            maybe_crash("after-start", 0)
        metrics = (
            MetricsLog(self.run_dir / METRICS_FILE, truncate_after=self.step) if dist.is_main else NoMetrics()
        )
        if cfg.tracker:
            # Rank 0 logs; a tracker that cannot start stops every rank with its message.
            dist.all_or_none(
                lambda: metrics.add_tracker(self._start_tracker(start is not None)), main_only=True
            )
        self._log_start(resuming=start is not None)
        eval_every = cfg.eval_every or cfg.save_every
        losses: list[float] = []
        self.policy.train()
        stream = data.batches(self.loader, self.sampler, self.position)
        rate, t_last, steps_since = Rate(), time.perf_counter(), 0
        with StopFlag() as stop, progress_bar("training", cfg.steps) as bar:
            bar.update(self.step)
            while True:
                # All ranks stop at the same step: a signal on any one of them stops every one.
                stop_signal = dist.agree_on_signal(stop.signum)
                self.ckpts.raise_if_failed()  # a background save that failed stops training here
                if stop_signal or self.step >= cfg.steps:
                    break
                loss, grad_norm = self.train_step(stream)
                losses.append(loss)
                record = {
                    "step": self.step,
                    "loss": loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "grad_norm": grad_norm,
                    "epoch": self.position.epoch,
                    "samples": self.samples_seen,
                }
                new_best = False
                if self.val_loader is not None and (self.step % eval_every == 0 or self.step == cfg.steps):
                    record["val_loss"] = self.validate()
                    if self.best_metric == "val_action_nmae":
                        record["val_action_nmae"] = self.validate_open_loop()
                    new_best = self._update_best(record[self.best_metric])
                steps_since += 1
                if self.step % cfg.log_every == 0 or "val_loss" in record or self.step == cfg.steps:
                    now = time.perf_counter()
                    record["steps_per_s"] = steps_since / max(now - t_last, 1e-9)
                    metrics.write(record)
                    t_last, steps_since = now, 0
                # A new best is always checkpointed, so that the best step can be exported and resumed.
                if self.ckpts.should_save(self.step) or new_best:
                    self.save_checkpoint(background=self._background_saves)
                bar.update(1, **self._bar_fields(record, rate.tick()))
            if stop_signal:
                self._stop(stop_signal, metrics)
            self.ckpts.wait()
        metrics.close()
        dist.all_or_none(self._finish, main_only=True)
        log(
            f"done: step {self.step}, final model in {self.run_dir / PRETRAINED_DIR} (lerobot layout), "
            f"last checkpoint {self.ckpts.last}"
            + (
                f", best checkpoint-{self.best.step} ({self.best.metric} {self.best.value:.4g})"
                if self.best
                else ""
            )
        )
        dist.close()
        return TrainResult(
            run_dir=self.run_dir, step=self.step, last_checkpoint=self.ckpts.last, losses=losses
        )

    def _start_tracker(self, resuming: bool) -> Any:
        from piperctl.training.trackers import Tracker

        return Tracker(self.cfg.tracker, self.run_dir, self.run_id, self.cfg.to_json(), resuming, self.step)

    def _bar_fields(self, record: dict, steps_per_s: float) -> dict[str, str]:
        fields = {
            "loss": f"{record['loss']:.4f}",
            "lr": f"{record['lr']:.1e}",
            "steps/s": f"{steps_per_s:.2f}",
        }
        if "val_loss" in record:
            fields["val"] = f"{record['val_loss']:.4f}"
        if self.ckpts.last is not None:
            fields["ckpt"] = self.ckpts.last.name
        return fields

    def _stop(self, signum: int, metrics: MetricsLog | NoMetrics) -> None:
        """Save at this step (unless just saved), leave the process group, and raise TrainingInterrupted."""
        name = signal.Signals(signum).name
        if self.dist.world_size > 1:
            log(f"{name}: all {self.dist.world_size} processes stop at step {self.step}")
        self.ckpts.wait()
        if self.ckpts.last is None or step_of(self.ckpts.last) != self.step:
            self.save_checkpoint()
        metrics.close()
        self.dist.close()
        raise TrainingInterrupted(
            f"{name} at step {self.step}: saved {self.ckpts.last}",
            hint=f"continue with: piperctl resume {self.ckpts.last}{self.dist.launcher_hint}",
            exit_code=128 + signum,
        )

    def _log_start(self, resuming: bool) -> None:
        cfg, world = self.cfg, self.dist.world_size
        n_params = sum(p.numel() for p in self.policy.parameters())
        accum = f" x {cfg.grad_accum} micro-batches" if cfg.grad_accum > 1 else ""
        log(
            f"{'resuming' if resuming else 'training'} {self.policy_cfg.type} ({n_params / 1e6:.2f}M params) on {self.device}"
            f" in {self.precision.name}: step {self.step} -> {cfg.steps}, batch {cfg.batch_size} x {processes(world)}"
            f"{accum} = effective batch {self.effective_batch}, {len(self.train_episodes)} train / "
            f"{len(self.val_episodes)} val episodes{', augmented' if cfg.augment else ''}, run {self.run_dir}"
        )
        sched = self.lr_schedule
        log(
            f"lr schedule: {sched['type']}"
            + (f" with {sched['warmup_steps']} warm-up steps" if sched["warmup_steps"] else "")
            + f", peak lr {sched['peak_lr']:.2e}, advancing once per optimizer step "
            f"({self.effective_batch} samples); not scaled with the number of processes"
        )


def _cpu_copy(obj: Any, into: Any = None) -> Any:
    """A copy of a (nested) state dict whose tensors are CPU tensors of its own, safe to write while training goes on.

    `into`: a previous copy of the same structure whose tensors are reused (copied into) where they fit.
    """
    if isinstance(obj, torch.Tensor):
        if isinstance(into, torch.Tensor) and into.shape == obj.shape and into.dtype == obj.dtype:
            return into.copy_(obj.detach())
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        old = into if isinstance(into, dict) else {}
        return {k: _cpu_copy(v, old.get(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        old = into if isinstance(into, list | tuple) and len(into) == len(obj) else [None] * len(obj)
        return type(obj)(_cpu_copy(v, o) for v, o in zip(obj, old, strict=True))
    return obj
