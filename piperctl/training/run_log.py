"""What a run says: its start (what trains on what, the LR schedule, a new world size), its progress bar, its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from piperctl.checkpoints.format import PRETRAINED_DIR, BestCheckpoint, Topology, TrainingState
from piperctl.console import log
from piperctl.training.build import DataSplit, ModelParts
from piperctl.training.config import TrainConfig
from piperctl.training.multi_dataset import describe


def processes(n: int) -> str:
    """'1 process' / 'N processes'."""
    return f"{n} process{'es' if n != 1 else ''}"


def log_start(
    cfg: TrainConfig,
    *,
    resuming: bool,
    step: int,
    device: str,
    precision: str,
    world_size: int,
    split: DataSplit,
    parts: ModelParts,
    run_dir: Path,
) -> None:
    """What trains, from which step, with which batch, on which episodes; then the LR schedule."""
    if len(split.sources) > 1:
        for line in describe(split.sources):
            log(line)
    n_params = sum(p.numel() for p in parts.policy.parameters())
    n_train = sum(len(s.train_episodes) for s in split.sources)
    n_val = sum(len(s.val_episodes) for s in split.sources)
    accum = f" x {cfg.grad_accum} micro-batches" if cfg.grad_accum > 1 else ""
    effective = cfg.batch_size * world_size * cfg.grad_accum
    log(
        f"{'resuming' if resuming else 'training'} {parts.policy_cfg.type} ({n_params / 1e6:.2f}M params) on {device}"
        f" in {precision}: step {step} -> {cfg.steps}, batch {cfg.batch_size} x {processes(world_size)}"
        f"{accum} = effective batch {effective}, {n_train} train / "
        f"{n_val} val episodes{', augmented' if cfg.augment else ''}, run {run_dir}"
    )
    sched = parts.lr_schedule
    log(
        f"lr schedule: {sched.type}"
        + (f" with {sched.warmup_steps} warm-up steps" if sched.warmup_steps else "")
        + f", peak lr {sched.peak_lr:.2e}, advancing once per optimizer step "
        f"({effective} samples); not scaled with the number of processes"
    )


def log_world_size_change(
    cfg: TrainConfig, state: TrainingState, topology: list[Topology], samples_seen: int, saved_ranks: int
) -> None:
    """Say what resuming checkpoint `state` with another number of processes changes."""
    before, now = topology[-2], topology[-1]
    left = cfg.steps - state.step
    log(
        f"world size changed: checkpoint {state.step} was written by {processes(before.world_size)}, "
        f"this run has {now.world_size}; effective batch {before.effective_batch_size} -> "
        f"{now.effective_batch_size} samples per step"
    )
    log(
        f"continuing from sample {samples_seen} (epoch {state.data.epoch}, position {state.data.offset}) "
        f"of the same data order; the LR schedule counts optimizer steps and is unchanged, so the remaining "
        f"{left} step(s) see {left * now.effective_batch_size} samples instead of {left * before.effective_batch_size}"
    )
    if now.world_size > saved_ranks:
        ranks = (
            f"rank {saved_ranks}"
            if now.world_size == saved_ranks + 1
            else f"ranks {saved_ranks}-{now.world_size - 1}"
        )
        log(f"{ranks}: no saved random state in the checkpoint, starting a fresh stream")
    log("a resume with another world size is not bit-exact with either world size (see docs/distributed.md)")


def val_losses(sums: list[float], names: list[str], per_dataset: bool) -> dict[str, float]:
    """`val_loss` over every held-out frame and (`per_dataset`) `val_loss/NAME` of each, from (total, count) pairs."""
    totals, counts = sums[0::2], sums[1::2]
    out = {"val_loss": sum(totals) / max(sum(counts), 1)}
    if per_dataset:
        out |= {f"val_loss/{n}": t / max(c, 1) for n, t, c in zip(names, totals, counts, strict=True)}
    return out


def bar_fields(record: dict[str, Any], steps_per_s: float, last: Path | None) -> dict[str, str]:
    """The fields beside the training progress bar: loss, lr, speed, validation loss, newest checkpoint."""
    fields = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.1e}", "steps/s": f"{steps_per_s:.2f}"}
    if "val_loss" in record:
        fields["val"] = f"{record['val_loss']:.4f}"
    if last is not None:
        fields["ckpt"] = last.name
    return fields


def log_done(step: int, run_dir: Path, last: Path | None, best: BestCheckpoint | None) -> None:
    """The run's last line: where its final model, last and best checkpoints are."""
    log(
        f"done: step {step}, final model in {run_dir / PRETRAINED_DIR} (lerobot layout), last checkpoint {last}"
        + (f", best checkpoint-{best.step} ({best.metric} {best.value:.4g})" if best else "")
    )
