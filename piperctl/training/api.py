"""`train()` and `resume()`: the Python API behind `piperctl train` / `piperctl resume`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from piperctl.checkpoints.format import (
    LOCK_FILE,
    RUN_FILE,
    TMP_PREFIX,
    TRAINING_STATE,
    TrainingState,
    list_checkpoints,
    looks_like_checkpoint,
)
from piperctl.checkpoints.integrity import check_checkpoint
from piperctl.checkpoints.lock import RunLock
from piperctl.checkpoints.manager import (
    final_model_intact,
    read_run_file,
    read_training_state,
    resolve_checkpoint,
    write_run_file,
)
from piperctl.checkpoints.pull import pull
from piperctl.checkpoints.remote import is_url
from piperctl.console import log
from piperctl.errors import PiperctlError
from piperctl.training import distributed
from piperctl.training.config import TrainConfig, resolve_device
from piperctl.training.precision import resolve_precision
from piperctl.training.scoring import OpenLoopScorer
from piperctl.training.trainer import Trainer, TrainResult


def train(
    output_dir: str | Path,
    dataset_id: str | None = None,
    resume_from_checkpoint: str | Path | None = None,
    *,
    scorer: OpenLoopScorer | None = None,
    **options: Any,
) -> TrainResult:
    """Train a LeRobot policy into `output_dir`, or continue from `resume_from_checkpoint`.

    Options are the fields of `TrainConfig`. Started by torchrun or `accelerate launch`, every
    process calls this and becomes one rank of a data-parallel run (see docs/distributed.md).
    `scorer` scores `--best-metric val_action_nmae`; `piperctl.train` passes evaluation's.
    """
    if resume_from_checkpoint is not None:
        return resume(
            resume_from_checkpoint, output_dir=output_dir, dataset_id=dataset_id, scorer=scorer, **options
        )
    lock = RunLock()
    with distributed.errors_once():
        cfg = TrainConfig.from_options(output_dir, dataset_id, options)
        cfg.precision = resolve_precision(
            cfg.precision, cfg.policy, cfg.policy_options, resolve_device(cfg.device)
        )
        dist = distributed.init(lambda: resolve_device(cfg.device), cfg.precision)
        run_dir = Path(cfg.output_dir)

        def claim() -> None:
            _refuse_file(run_dir)
            lock.acquire(run_dir)
            _refuse_existing_run(run_dir)

        try:
            # The writing rank holds the run's lock for as long as it runs.
            dist.all_or_none(claim, main_only=True)
            run_id = dist.broadcast(uuid.uuid4().hex)
            return Trainer(cfg, run_dir, run_id, dist, scorer).run(start=None)
        finally:
            lock.release()


def resume(
    path: str | Path,
    output_dir: str | Path | None = None,
    dataset_id: str | None = None,
    *,
    scorer: OpenLoopScorer | None = None,
    **changes: Any,
) -> TrainResult:
    """Continue a run exactly where checkpoint `path` (or the newest intact one of a run folder) left it.

    Under a launcher, with any number of processes: the same number continues bit-exactly, another
    number continues from the same sample and says what changed (docs/distributed.md).
    """
    lock = RunLock()
    with distributed.errors_once():
        if is_url(path):
            # A --mirror URL: the newer intact of the remote's and the local folder's checkpoints,
            # downloaded (verified) when remote; the run keeps mirroring there.
            try:
                path, url = pull(str(path), Path(output_dir) if output_dir is not None else None, lock)
            except BaseException:
                lock.release()
                raise
            output_dir = None
            changes["mirror"] = changes.get("mirror") or url
        saved = _saved_config(path)
        dist = distributed.init(
            lambda: resolve_device(changes.get("device") or _saved_device(saved)),
            saved.get("precision") or "fp32",
        )
        try:
            # Rank 0 takes the run's lock, checks the checkpoint (hashing it once, not once per rank)
            # and hands the verdict round.
            cfg, folder, state, run_id = dist.all_or_none(
                lambda: _prepare_resume(path, output_dir, dataset_id, changes, lock), main_only=True
            )
            if folder is None:
                return Trainer(cfg, Path(cfg.output_dir), run_id, dist, scorer).run(start=None)
            return Trainer(cfg, folder.parent, run_id, dist, scorer).run(start=(folder, state))
        finally:
            lock.release()


def pull_remote(url: str, output_dir: Path | None) -> tuple[Path, str]:
    """Download what `resume URL` resumes from (see piperctl.checkpoints.pull): its local folder and the run's URL."""
    lock = RunLock()
    try:
        return pull(url, output_dir, lock)
    finally:
        lock.release()


def _refuse_file(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise PiperctlError(f"--output-dir {run_dir} is a file", hint="choose a folder for the run")


def _refuse_existing_run(run_dir: Path) -> None:
    """A new run goes into a new or empty folder (ours, the lock and leftovers of our saves, do not count)."""
    if list_checkpoints(run_dir):
        raise PiperctlError(
            f"{run_dir} already holds a training run",
            hint=f"continue it with 'piperctl resume {run_dir}', or choose a new --output-dir",
        )
    if (run_dir / RUN_FILE).exists():
        raise PiperctlError(
            f"{run_dir} holds a run that stopped before its first checkpoint",
            hint=f"start it again from step 0 with its own options: 'piperctl resume {run_dir}', or choose a new --output-dir",
        )
    if any(p for p in run_dir.iterdir() if not p.name.startswith(TMP_PREFIX) and p.name != LOCK_FILE):
        raise PiperctlError(f"--output-dir {run_dir} is not empty", hint="choose a new or empty folder")


def _saved_config(path: str | Path) -> dict[str, Any]:
    """The options of a checkpoint (or of a run's newest checkpoint), read without verifying it.

    Only hints for joining the process group (device, precision): the checkpoint is verified afterwards.
    """
    path = Path(path)
    folders = [path] if (path / TRAINING_STATE).is_file() else list_checkpoints(path)[::-1]
    for folder in folders:
        state = TrainingState.read(folder)
        if state is not None:
            return state.config
    try:
        run = read_run_file(path)
    except PiperctlError:
        run = None
    return run.config if run is not None and run.config is not None else {}


def _saved_device(config: dict[str, Any]) -> str:
    device = config.get("device")
    if device in ("auto", "cpu", "cuda", "mps") or str(device).startswith("cuda:"):
        return str(device)
    return "auto"


def _merge_changes(saved: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's options with the requested changes applied; refuses what may not change."""
    merged = dict(saved)
    # Runs from before --imagenet-stats existed normalized their cameras with the dataset's statistics.
    merged.setdefault("imagenet_stats", False)
    resumable = TrainConfig.resumable()
    for key, value in changes.items():
        if value is None:
            continue
        if key in resumable:
            merged[key] = value
        elif key not in merged:
            raise PiperctlError(f"unknown training option {key!r}")
        elif merged[key] != value:
            if key == "policy":
                raise PiperctlError(
                    f"the checkpoint holds a {merged[key]!r} policy, not {value!r}",
                    hint="start a new run to train another policy type",
                )
            raise PiperctlError(
                f"--{key.replace('_', '-')} cannot change on resume (checkpoint has {merged[key]!r})",
                hint=f"only {', '.join('--' + o.replace('_', '-') for o in resumable)} may change; start a new run otherwise",
            )
    return merged


def _prepare_resume(
    path: str | Path,
    output_dir: str | Path | None,
    dataset_id: str | None,
    changes: dict[str, Any],
    lock: RunLock,
) -> tuple[TrainConfig, Path | None, TrainingState | None, str]:
    """Lock the run, check the checkpoint and the requested changes: (config, folder, state, run id).

    A run folder without any checkpoint (stopped before its first save) starts again from step 0
    with the options in its run.json: folder and state are then None.
    """
    changes = dict(changes)
    allow_change = bool(changes.pop("allow_dataset_change", False))
    restart = _restart_before_first_save(Path(path), lock, changes)
    if restart is not None:
        return restart
    folder, skipped = resolve_checkpoint(path)
    run_dir = folder.parent
    if output_dir is not None and Path(output_dir).resolve() != run_dir.resolve():
        raise PiperctlError(
            f"checkpoint {folder} belongs to the run in {run_dir}, not {output_dir}",
            hint=f"resume into its own folder: 'piperctl resume {folder}'",
        )
    lock.acquire(run_dir)
    for p, why in skipped:
        log(f"skipping {p.name}: {why}")
    check = check_checkpoint(folder)
    if not check.ok:
        raise PiperctlError(
            f"checkpoint {folder} is {check.state}: {'; '.join(check.problems)}",
            hint="pick another checkpoint; 'piperctl checkpoints verify' shows details",
        )
    state = read_training_state(folder)
    if skipped or Path(path) != folder:
        log(f"resuming from {folder} (newest intact checkpoint, step {state.step})")
    saved = _merge_changes(state.config, changes)
    if dataset_id is not None and dataset_id != saved["dataset_id"] and saved.get("dataset_root") is None:
        raise PiperctlError(
            f"the checkpoint was trained on {saved['dataset_id']}, not {dataset_id}",
            hint="use --allow-dataset-change with the same dataset layout",
        )
    run = read_run_file(run_dir)
    if run is None:
        write_run_file(run_dir, state.run_id, state.config)
    elif run.run_id != state.run_id:
        raise PiperctlError(
            f"{run_dir} holds another run than checkpoint {folder.name} (run ids differ)",
            hint="copy the checkpoint into its own run folder before resuming",
        )
    saved["allow_dataset_change"] = allow_change
    saved.pop("output_dir", None)
    cfg = TrainConfig.from_options(run_dir, saved.pop("dataset_id"), saved)
    if cfg.steps < state.step or (cfg.steps == state.step and final_model_intact(run_dir)):
        raise PiperctlError(
            f"the checkpoint is at step {state.step} and the run ends at step {cfg.steps}",
            hint="pass --steps N with N larger than the checkpoint's step to extend the run",
        )
    if cfg.steps == state.step:
        log(
            f"the run reached its last step ({state.step}) but its final model is missing or incomplete "
            f"(interrupted while saving it): writing it from {folder.name}"
        )
    return cfg, folder, state, state.run_id


def _restart_before_first_save(
    run_dir: Path, lock: RunLock, changes: dict[str, Any]
) -> tuple[TrainConfig, None, None, str] | None:
    """For a run folder that holds no checkpoint-N folder at all: the run to start again, or None."""
    if not run_dir.is_dir() or looks_like_checkpoint(run_dir) or list_checkpoints(run_dir):
        return None
    run = read_run_file(run_dir)
    if run is None:
        return None  # not a run folder: resolve_checkpoint says so
    lock.acquire(run_dir)
    if list_checkpoints(run_dir):
        return None  # a checkpoint appeared before we held the lock: resume it instead
    if run.config is None:
        raise PiperctlError(
            f"{run_dir} holds no checkpoint (the run stopped before its first save) and its run.json "
            "does not record the run's options",
            hint="start a new run with 'piperctl train' in a new --output-dir",
        )
    saved = _merge_changes(run.config, changes)
    saved.pop("output_dir", None)
    cfg = TrainConfig.from_options(run_dir, saved.pop("dataset_id"), saved)
    log(
        f"{run_dir} has no checkpoint yet (the run stopped before its first save): starting it again from step 0"
    )
    return cfg, None, None, run.run_id
