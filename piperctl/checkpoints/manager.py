"""A run folder's checkpoints: when to save, publishing, keep-last rotation, and which one to resume from.

As in torchtitan, the training loop only asks `should_save(step)` and hands over a writer; the
`CheckpointManager` owns where the folder goes, that it is published atomically and sealed, and
which old ones go.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.filesize import decimal

from piperctl import __version__
from piperctl.checkpoints.atomic import fsync_dir, read_json, remove_stale_tmp, write_json
from piperctl.checkpoints.format import (
    MANIFEST,
    PRETRAINED_DIR,
    RUN_FILE,
    TMP_PREFIX,
    TRAINING_STATE,
    RunInfo,
    TrainingState,
    checkpoint_dir,
    list_checkpoints,
    looks_like_checkpoint,
    model_layout,
)
from piperctl.checkpoints.integrity import (
    QuickCheck,
    check_checkpoint,
    hash_pending,
    publish,
    scan_checkpoint,
)
from piperctl.console import is_interactive, log
from piperctl.errors import PiperctlError
from piperctl.faults import maybe_crash


class CheckpointManager:
    """Saves `checkpoint-N` folders of one run and keeps the newest `keep_last` (0 keeps all)."""

    def __init__(self, run_dir: Path, *, save_every: int, keep_last: int, total_steps: int) -> None:
        self.run_dir = run_dir
        self.save_every = save_every
        self.keep_last = keep_last
        self.total_steps = total_steps
        self.last: Path | None = None
        # The checkpoint a resume started from is kept until a newer one exists, even past keep_last.
        self.protect: Path | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[Path] | None = None
        # The run's best checkpoint (lowest validation metric) is never rotated away.
        self.best: Path | None = None

    def should_save(self, step: int) -> bool:
        """True at every `save_every`-th step and at the last step."""
        return step % self.save_every == 0 or step == self.total_steps

    def save(self, step: int, write_files: Callable[[Path], None]) -> Path:
        """Publish checkpoint-`step` (filled by `write_files(folder)`), then apply keep-last."""
        self._warn_if_short_of_space()
        target = checkpoint_dir(self.run_dir, step)
        try:
            path = publish(target, write_files, step)
        except OSError as e:
            raise save_error(e, target, self.run_dir) from e
        maybe_crash("after-save", step)
        for old in rotate(self.run_dir, self.keep_last, protect=self.protect, best=self.best, step=step):
            log(f"removed old checkpoint {old.name} (--keep-last {self.keep_last})")
        self.protect = None
        self.last = path
        if not is_interactive():  # on a terminal the progress bar shows the newest checkpoint
            log(f"saved {path}")
        return path

    def save_in_background(self, step: int, write_files: Callable[[Path], None]) -> None:
        """`save` in a background thread; at most one save is in flight (this waits for the previous one).

        `write_files` must only read state the caller no longer changes (a copy). A failed save
        surfaces at the next `wait` or `raise_if_failed`; a crash of the process leaves only complete
        checkpoints (the unfinished one is a temporary folder, removed at the next start).
        """
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piperctl-save")
        self._pending = self._pool.submit(self.save, step, write_files)

    def wait(self) -> Path | None:
        """Wait for the save in flight, if any; its checkpoint, or its error raised here."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def raise_if_failed(self) -> None:
        """Raise the error of a background save that has already failed (no waiting)."""
        if self._pending is not None and self._pending.done() and self._pending.exception() is not None:
            self.wait()

    def save_final(self, step: int, write_files: Callable[[Path], None]) -> Path:
        """Publish the final model as RUN_DIR/pretrained_model (lerobot's layout), sealed by its own manifest."""
        target = self.run_dir / PRETRAINED_DIR
        try:
            return publish(target, write_files, step)
        except OSError as e:
            raise save_error(e, target, self.run_dir) from e

    def _warn_if_short_of_space(self) -> None:
        """Say before a save, not after it failed, that the disk may not hold another checkpoint."""
        if self.last is None:
            return
        try:
            need = sum(p.stat().st_size for p in self.last.iterdir() if p.is_file())
            free = shutil.disk_usage(self.run_dir).free
        except OSError:
            return
        if free < need * 1.2:
            log(
                f"warning: {decimal(free)} free on the disk of {self.run_dir}, the last checkpoint took "
                f"{decimal(need)}: this save may fail (free space, or lower --keep-last)"
            )

    def clean_stale(self) -> list[Path]:
        """Remove what interrupted saves of ours left in the run folder, saying so."""
        removed = remove_stale_tmp(self.run_dir)
        if removed:
            names = ", ".join(p.name for p in removed)
            log(f"removed {len(removed)} unfinished save(s) left by an interrupted run: {names}")
        return removed

    def start_run(self, run_id: str, config: dict[str, Any]) -> None:
        """Make the folder a run: write run.json (only once dataset, policy and options are known to work)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_file(self.run_dir, run_id, config)


def final_model_intact(run_dir: Path) -> bool:
    """True when the run's final model (RUN_DIR/pretrained_model) is complete and matches its manifest."""
    final = run_dir / PRETRAINED_DIR
    return check_checkpoint(final, required=model_layout(final).files).ok


def write_run_file(run_dir: Path, run_id: str, config: dict[str, Any] | None = None) -> None:
    """Write run.json for `run_id` (with the run's options) atomically."""
    write_json(run_dir / RUN_FILE, RunInfo(run_id=run_id, piperctl=__version__, config=config).to_json())


def read_run_file(run_dir: Path) -> RunInfo | None:
    """run.json of a run folder, or None when there is none."""
    path = run_dir / RUN_FILE
    if not path.exists():
        return None
    return RunInfo.from_json(read_json(path, "run file"))


def read_training_state(folder: Path) -> TrainingState:
    """training_state.json of a checkpoint, checked against the folder name (the first problem raises)."""
    state, problems = TrainingState.parse(read_json(folder / TRAINING_STATE, "training state"), folder)
    if problems or state is None:
        raise PiperctlError(f"{folder}: {problems[0].message}")
    return state


def resolve_checkpoint(path: str | Path) -> tuple[Path, list[tuple[Path, str]]]:
    """A checkpoint folder as given, or the newest intact one of a run folder (plus what was skipped)."""
    path = Path(path)
    if not path.exists():
        raise PiperctlError(f"{path} does not exist", hint="pass a checkpoint-N folder or a run folder")
    if looks_like_checkpoint(path) or ((path / MANIFEST).exists() and not list_checkpoints(path)):
        return path, []
    if not path.is_dir():
        raise PiperctlError(f"{path} is not a folder", hint="pass a checkpoint-N folder or a run folder")
    return find_resumable(path)


def pick_resumable(checks: list[QuickCheck]) -> tuple[QuickCheck | None, list[tuple[Path, str]]]:
    """What `resume RUN_DIR` picks from quick checks (oldest first): the newest that also passes hashing.

    Only candidates are hashed, newest first, so a healthy run costs one checkpoint's worth of reading.
    """
    skipped: list[tuple[Path, str]] = []
    for check in reversed(checks):
        if check.ok and not check.hashed:
            hash_pending([check])
        if check.ok:
            return check, skipped
        skipped.append((check.path, f"{check.state}: {'; '.join(check.problems)}"))
    return None, skipped


def find_resumable(run_dir: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """Newest checkpoint of `run_dir` that passes the full manifest check, plus why newer ones were skipped."""
    picked, skipped = pick_resumable([scan_checkpoint(p) for p in list_checkpoints(run_dir)])
    if picked is not None:
        return picked.path, skipped
    if skipped:
        reasons = "; ".join(f"{p.name} {why}" for p, why in skipped)
        raise PiperctlError(
            f"no intact checkpoint in {run_dir} ({reasons})",
            hint="run 'piperctl checkpoints verify' for details",
        )
    raise PiperctlError(
        f"no checkpoint-N folders in {run_dir}", hint="pass a run folder written by 'piperctl train'"
    )


def save_error(e: OSError, target: Path, run_dir: Path) -> PiperctlError:
    """One line for a save that failed on the filesystem (its temporary folder is already gone)."""
    what = f"cannot save {target.name} in {run_dir}"
    resume = f"'piperctl resume {run_dir}' continues from the last checkpoint"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return PiperctlError(f"{what}: no space left on the device", hint=f"free some space, then {resume}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PiperctlError(
            f"{what}: {e.strerror or 'permission denied'}", hint=f"make the folder writable, then {resume}"
        )
    return PiperctlError(f"{what}: {e.strerror or e}", hint=f"fix the cause, then {resume}")


def rotate(
    run_dir: Path, keep_last: int, protect: Path | None = None, best: Path | None = None, step: int = 0
) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep_last` (0 keeps all); never `protect` or `best`.

    Only checkpoints that passed the quick check count and get deleted: a damaged one is left for the
    user to inspect.
    """
    if keep_last <= 0:
        return []
    complete = [p for p in list_checkpoints(run_dir) if check_checkpoint(p, hash_contents=False).ok]
    doomed = complete[:-keep_last] if len(complete) > keep_last else []
    removed = []
    for p in doomed:
        if any(keep is not None and p.resolve() == keep.resolve() for keep in (protect, best)):
            continue
        # Rename first so that a crash mid-delete cannot leave a half checkpoint under a valid name.
        trash = run_dir / f"{TMP_PREFIX}{p.name}.deleting"
        os.replace(p, trash)
        maybe_crash("mid-rotate", step)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(p)
    if removed:
        fsync_dir(run_dir)
    return removed
