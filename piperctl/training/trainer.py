"""The `Trainer`: one training run (or one rank of a data-parallel run) over lerobot's pieces.

`setup()` builds the dataset split, policy, processors, optimizer and loaders (training/build.py),
fresh or as a checkpoint left them (training/state.py restores the state); `run()` is the loop,
readable top to bottom: take a batch, `train_step()`, log, `validate()` when due, let the
`CheckpointManager` save when due, stop cleanly on a signal.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from piperctl.checkpoints.format import (
    LOSS_CURVE,
    METRICS_FILE,
    BestCheckpoint,
    TrainingState,
    checkpoint_dir,
    step_of,
)
from piperctl.checkpoints.manager import CheckpointManager
from piperctl.console import log, progress_bar
from piperctl.errors import PiperctlError
from piperctl.faults import maybe_crash
from piperctl.training import build, loading, rng, run_log
from piperctl.training.config import TrainConfig, resolve_device
from piperctl.training.distributed import Dist
from piperctl.training.metrics import MetricsLog, NoMetrics, Rate, plot_loss_curve
from piperctl.training.precision import Precision
from piperctl.training.scoring import OpenLoopScorer
from piperctl.training.signals import StopFlag
from piperctl.training.state import Progress, RandomState, RunState, versions
from piperctl.training.trackers import Tracker

if TYPE_CHECKING:
    from lerobot.policies.pretrained import PreTrainedPolicy


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    losses: list[float]


class TrainingInterrupted(PiperctlError):
    """Raised after a signal made the loop save a checkpoint and stop."""


class Trainer:
    """Builds the pieces of a run, runs the loop, and hands checkpoints to its `CheckpointManager`."""

    cfg: TrainConfig
    run_dir: Path
    run_id: str
    dist: Dist
    ckpts: CheckpointManager
    scorer: OpenLoopScorer | None
    device: str
    precision: Precision
    split: build.DataSplit  # the dataset's metadata and its train/validation episodes
    parts: build.ModelParts  # policy, processors, optimizer, scheduler
    feed: build.Feed  # the dataset and its loaders
    model: torch.nn.Module  # `parts.policy`, wrapped in DDP with several processes
    progress: Progress  # step, samples, data order, topology, best
    state: RunState  # what a checkpoint holds, captured and restored in one place

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        run_id: str,
        dist: Dist | None = None,
        scorer: OpenLoopScorer | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.run_id = run_id
        self.dist = dist or Dist()
        self.scorer = scorer
        self.ckpts = CheckpointManager(
            run_dir, save_every=cfg.save_every, keep_last=cfg.keep_last, total_steps=cfg.steps
        )
        self.progress = Progress()

    @property
    def policy(self) -> PreTrainedPolicy:
        """The policy being trained (unwrapped)."""
        return self.parts.policy

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.progress.step

    def setup(self, start: tuple[Path, TrainingState] | None) -> None:
        """Open the dataset and build policy, processors and optimizer: fresh, or as checkpoint `start` left them."""
        cfg, dist = self.cfg, self.dist
        self.device = dist.device or resolve_device(cfg.device)
        self.precision = Precision(cfg.precision or "fp32", self.device, dist.accelerator)
        build.use_determinism(cfg.deterministic)
        if dist.is_main:
            self.ckpts.open(self.run_id, mirror=cfg.mirror)
        self.split = build.open_split(cfg, start[1] if start else None)
        if start is None:
            self.parts = build.fresh_model(cfg, self.device, self.split)
        else:
            self.parts = build.resumed_model(cfg, self.device, self.split, *start)
        describes = build.describe_run(cfg, self.run_id, dist, self.split, self.parts, versions())
        self.progress.topology = list(describes.topology)
        self.state = RunState(
            self.parts, self.precision, self.progress, RandomState(dist, cfg.seed), describes
        )
        if start is not None:
            self._restore(*start)
        self.feed = build.open_feed(cfg, dist, self.device, self.split, self.parts.policy_cfg)
        self.progress.data.epoch_length = self.feed.epoch_len
        if self._background_saves:
            self.state.cpu_copies()  # allocate the CPU copies now, so that saves only copy into them
        if start is None and dist.rank > 0:
            # Same initial weights everywhere (seeded alike above), but each rank its own dropout and
            # noise from here on; rank 0 keeps the stream a single-process run has.
            rng.seed_everything(rng.derive_seed(cfg.seed, dist.rank))

    def _restore(self, folder: Path, state: TrainingState) -> None:
        if self.state.restore(folder, state):
            run_log.log_world_size_change(
                self.cfg, state, self.progress.topology, state.samples_seen, rng.saved_ranks(folder)
            )
        best = self.progress.best
        if best is not None and checkpoint_dir(self.run_dir, best.step).is_dir():
            self.ckpts.best = checkpoint_dir(self.run_dir, best.step)
        # The checkpoint resumed from stays until a newer one is saved, whatever --keep-last says.
        self.ckpts.protect = folder
        self.ckpts.last = folder

    def save_checkpoint(self, background: bool = False) -> Path | None:
        """Write checkpoint-<step> (rank 0, with every rank's RNG states); the manager publishes and rotates.

        `background`: copy the state to CPU and let the manager write it while training goes on
        (returns None; the checkpoint appears when the write completes).
        """
        if background:
            self.ckpts.save_in_background(lambda: self.state.capture(copy=True))
            return None
        snapshot = self.state.capture(copy=False)
        # One writer; the other ranks wait for its verdict, so none runs ahead of (or outlives) a failed save.
        path = self.dist.all_or_none(lambda: self.ckpts.save(snapshot.step, snapshot.write), main_only=True)
        self.ckpts.last = path
        return path

    @property
    def _background_saves(self) -> bool:
        # Several processes save synchronously: every rank must learn at once that a save failed.
        return self.cfg.async_save and self.dist.world_size == 1

    # -- the loop --------------------------------------------------------------------------------

    def _forward(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        for key in self.split.meta.camera_keys:
            if key in batch and batch[key].dtype == torch.uint8:
                batch[key] = batch[key].to(torch.float32) / 255.0
        return model(self.parts.preprocessor(batch))

    def train_step(self, stream: Iterator[dict]) -> tuple[float, float]:
        """One optimizer step over `--grad-accum` batches: the loss (mean over ranks) and the gradient norm."""
        accum, p = self.cfg.grad_accum, self.parts
        total = 0.0
        for micro in range(accum):
            batch = next(stream)
            # DDP all-reduces the gradients once, after the last micro-batch.
            with self.dist.no_sync(self.model, skip=micro < accum - 1):
                with self.precision.autocast():
                    loss, _ = self._forward(self.model, batch)
                self.precision.backward(loss / accum if accum > 1 else loss)
            total += float(loss.detach())
            self.progress.samples_seen += self.feed.sampler.global_count(len(batch["index"]))
        grad_norm = self.precision.clip_and_step(p.optimizer, p.policy.parameters(), p.grad_clip_norm)
        p.optimizer.zero_grad(set_to_none=True)
        if p.scheduler is not None:
            p.scheduler.step()
        if hasattr(p.policy, "update"):
            p.policy.update()
        self.progress.step += 1
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
        best = self.progress.best
        if best is not None and best.metric == self.best_metric and not value < best.value:
            return False
        if best is not None and best.metric != self.best_metric:
            log(f"best checkpoint now chosen by {self.best_metric} (was {best.metric})")
        self.progress.best = BestCheckpoint(self.step, self.best_metric, float(value))
        self.ckpts.best = checkpoint_dir(self.run_dir, self.step)
        return True

    def validate_open_loop(self) -> dict[str, float]:
        """Open-loop action error (normalised MAE of the executed action) on held-out episodes: overall, per dataset."""
        assert self.scorer is not None  # run() refuses val_action_nmae without one
        p = self.parts
        values = None
        if self.dist.is_main:
            values = self.scorer(
                p.policy, p.preprocessor, p.postprocessor, self.split.sources, seed=self.cfg.seed
            )
        values = self.dist.broadcast(values)
        p.policy.train()
        return values

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss over the held-out episodes, overall and per dataset; seeded so it neither varies nor disturbs training RNG."""
        sums: list[float] = []  # frames' loss total, frame count: per dataset
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            # Training mode without gradients: ACT only computes its full loss in training mode.
            for _, loader in self.feed.val_loaders:
                # Seeded per dataset: a dataset's loss does not depend on which datasets come before it.
                torch.manual_seed(self.cfg.seed)
                sums += [0.0, 0]
                for batch in loader:
                    with self.precision.autocast():
                        loss, _ = self._forward(self.policy, batch)
                    sums[-2:] = [sums[-2] + float(loss) * len(batch["index"]), sums[-1] + len(batch["index"])]
        # Each rank scored its own share of the validation frames.
        names = [name for name, _ in self.feed.val_loaders]
        return run_log.val_losses(self.dist.sum(sums), names, per_dataset=len(self.split.sources) > 1)

    def run(self, start: tuple[Path, TrainingState] | None) -> TrainResult:
        """Train until `cfg.steps`, checkpointing when the manager says so and on SIGINT/SIGTERM."""
        cfg, dist = self.cfg, self.dist
        dist.all_or_none(lambda: self.setup(start))
        if self.feed.val_loaders and self.best_metric == "val_action_nmae" and self.scorer is None:
            raise PiperctlError(
                "--best-metric val_action_nmae needs the open-loop scorer: train with piperctl.train"
            )
        # DDP wraps the model only once every rank has built it: its constructor is a collective.
        self.model, self.parts.optimizer = dist.prepare(self.policy, self.parts.optimizer)
        if start is None:
            dist.all_or_none(lambda: self.ckpts.start_run(self.run_id, cfg.to_json()), main_only=True)
            maybe_crash("after-start", 0)
        metrics = (
            MetricsLog(self.run_dir / METRICS_FILE, truncate_after=self.step) if dist.is_main else NoMetrics()
        )
        if cfg.tracker:
            # Rank 0 logs; a tracker that cannot start stops every rank with its message.
            tracker = (cfg.tracker, self.run_dir, self.run_id, cfg.to_json(), start is not None, self.step)
            dist.all_or_none(lambda: metrics.add_tracker(Tracker(*tracker)), main_only=True)
        run_log.log_start(
            cfg, resuming=start is not None, step=self.step, device=self.device, precision=self.precision.name,
            world_size=dist.world_size, split=self.split, parts=self.parts, run_dir=self.run_dir,
        )  # fmt: skip
        eval_every = cfg.eval_every or cfg.save_every
        losses: list[float] = []
        self.policy.train()
        stream = loading.batches(self.feed.loader, self.feed.sampler, self.progress.data)
        rate, t_last, steps_since = Rate(), time.perf_counter(), 0
        with self.feed, StopFlag() as stop, progress_bar("training", cfg.steps, start=self.step) as bar:
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
                    "lr": self.parts.optimizer.param_groups[0]["lr"],
                    "grad_norm": grad_norm,
                    "epoch": self.progress.data.epoch,
                    "samples": self.progress.samples_seen,
                }
                new_best = False
                if self.feed.val_loaders and (self.step % eval_every == 0 or self.step == cfg.steps):
                    record.update(self.validate())
                    if self.best_metric == "val_action_nmae":
                        record.update(self.validate_open_loop())
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
                bar.update(1, **run_log.bar_fields(record, rate.tick(), self.ckpts.last))
            if stop_signal:
                self._stop(stop_signal, metrics)
            self.ckpts.wait()
        metrics.close()
        dist.all_or_none(self._finish, main_only=True)
        run_log.log_done(self.step, self.run_dir, self.ckpts.last, self.progress.best)
        dist.close()
        return TrainResult(
            run_dir=self.run_dir, step=self.step, last_checkpoint=self.ckpts.last, losses=losses
        )

    def _finish(self) -> None:
        self.ckpts.save_final(self.step, lambda folder: self.state.write_final(folder, self.run_dir))
        plot_loss_curve(self.run_dir / METRICS_FILE, self.run_dir / LOSS_CURVE)

    def _stop(self, signum: int, metrics: MetricsLog | NoMetrics) -> None:
        """Save at this step (unless just saved), leave the process group, and raise TrainingInterrupted."""
        name = signal.Signals(signum).name
        if self.dist.world_size > 1:
            log(f"{name}: all {self.dist.world_size} processes stop at step {self.step}")
        self.ckpts.wait()
        if self.ckpts.last is None or step_of(self.ckpts.last) != self.step:
            self.save_checkpoint()
        metrics.close()
        self.ckpts.finish_mirror(final=False)  # preempted: get the checkpoint just saved off the machine
        self.dist.close()
        raise TrainingInterrupted(
            f"{name} at step {self.step}: saved {self.ckpts.last}",
            hint=f"continue with: piperctl resume {self.ckpts.last}{self.dist.launcher_hint}",
            exit_code=128 + signum,
        )
