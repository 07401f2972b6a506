"""A run folder's checkpoints: when to save, publishing, keep-last rotation, and which one to resume from.

As in torchtitan, the training loop only asks `should_save(step)` and hands over a writer; the
`CheckpointManager` owns where the folder goes, that it is published atomically and sealed, and
which old ones go.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.filesize import decimal

from piperctl import __version__
from piperctl.checkpoints.atomic import fsync_dir, read_json, remove_stale_tmp, write_json
from piperctl.checkpoints.format import (
    MANIFEST,
    METRICS_FILE,
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
from piperctl.fs import first_line

if TYPE_CHECKING:
    from piperctl.checkpoints.mirror import Mirror


class Snapshot(Protocol):
    """What a background save writes: a step and a writer filling a checkpoint folder (training.state's)."""

    step: int

    def write(self, folder: Path) -> None:
        """Fill `folder` with the checkpoint's files."""


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
        self.mirror: Mirror | None = None  # --mirror URL: the remote copy of the run folder

    def attach_mirror(self, url: str, run_id: str) -> None:
        """Mirror this run to `url` (refused when another run owns it); uploads follow each save."""
        from piperctl.checkpoints.mirror import Mirror

        self.mirror = Mirror(url, self.run_dir, run_id, lambda step, s: self.record_timing(step, upload_s=s))
        self.mirror.claim()

    def finish_mirror(self, final: bool) -> list[str]:
        """Upload what is left (with `final`, also the final model) and wait for it; what is not remote."""
        if self.mirror is None:
            return []
        if final:
            self.mirror.upload_final()
        else:
            self.mirror.sync()
        return self.mirror.wait()

    def should_save(self, step: int) -> bool:
        """True at every `save_every`-th step and at the last step."""
        return step % self.save_every == 0 or step == self.total_steps

    def save(self, step: int, write_files: Callable[[Path], None], stall_s: float | None = None) -> Path:
        """Publish checkpoint-`step` (filled by `write_files(folder)`), then apply keep-last.

        `stall_s`: how long the training loop waited for this background save (None: a synchronous
        save, the loop waited for all of it); recorded in metrics.jsonl with the write time.
        """
        self._warn_if_short_of_space()
        target = checkpoint_dir(self.run_dir, step)
        started = time.perf_counter()
        try:
            path = publish(target, write_files, step)
        except Exception as e:
            raise writer_error(e, target, self.run_dir) from e
        save_s = time.perf_counter() - started
        maybe_crash("after-save", step)
        self.record_timing(step, save_s=save_s, stall_s=save_s if stall_s is None else stall_s)
        for old in rotate(self.run_dir, self.keep_last, protect=self.protect, best=self.best, step=step):
            log(f"removed old checkpoint {old.name} (--keep-last {self.keep_last})")
        self.protect = None
        self.last = path
        if not is_interactive():  # on a terminal the progress bar shows the newest checkpoint
            log(f"saved {path}")
        if self.mirror is not None:
            self.mirror.sync()
        return path

    def record_timing(self, step: int, **seconds: float) -> None:
        """Append a checkpoint's timings (save_s, stall_s, upload_s) to metrics.jsonl as their own line."""
        record = {"step": step, "checkpoint": checkpoint_dir(self.run_dir, step).name}
        record.update({k: round(v, 4) for k, v in seconds.items()})
        try:
            # One write of one line in append mode: it never interleaves with the training loop's lines.
            with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            log(
                f"warning: cannot record checkpoint timings in {self.run_dir / METRICS_FILE}: {e.strerror or e}"
            )

    def save_in_background(self, capture: Callable[[], Snapshot]) -> None:
        """`save` a `capture()`d snapshot in a background thread; at most one save is in flight.

        This waits for the previous save, then takes the snapshot, whose `write` must only read state
        the caller no longer changes (a copy); the loop's wait (`stall_s`) is both. A failed save
        surfaces at the next `wait` or `raise_if_failed`; a crash of the process leaves only complete
        checkpoints (the unfinished one is a temporary folder, removed at the next start).
        """
        started = time.perf_counter()
        self.wait()
        snapshot = capture()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piperctl-save")
        stall_s = time.perf_counter() - started
        self._pending = self._pool.submit(self.save, snapshot.step, snapshot.write, stall_s)

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
            publish(target, write_files, step)
        except Exception as e:
            raise writer_error(e, target, self.run_dir) from e
        self.finish_mirror(final=True)  # a finished run waits until the remote has it all
        return target

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

    def open(self, run_id: str, mirror: str | None = None) -> None:
        """Before the run's work: remove leftovers of interrupted saves; claim the `mirror` URL (refused if another run owns it)."""
        self.clean_stale()
        if mirror:
            self.attach_mirror(mirror, run_id)

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


# How writers that are not Python's file API report an OS error: safetensors' SafetensorError says
# "... No space left on device (os error 28)" (Rust's io::Error), its debug form "Os { code: 28, ...".
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")
# torch.save's zip writer reports a failed write as a RuntimeError naming its stream writer.
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def as_os_error(e: BaseException) -> OSError | None:
    """The OSError behind a checkpoint writer's failure (OSError, safetensors' or torch.save's own errors), or None."""
    from safetensors import SafetensorError

    if isinstance(e, OSError):
        return e
    if isinstance(e, SafetensorError | RuntimeError):
        text = str(e)
        found = _OS_ERROR_TEXT.search(text)
        if found:
            code = int(found.group(1) or found.group(2))
            return OSError(code, os.strerror(code))
        if isinstance(e, SafetensorError) or any(s in text for s in _TORCH_WRITE_FAILED):
            return OSError(errno.EIO, f"the write failed ({first_line(text, 160)})")
    return None


def writer_error(e: Exception, target: Path, run_dir: Path) -> Exception:
    """One line for a save whose writer failed on the disk (`save_error`); any other error unchanged."""
    if isinstance(e, PiperctlError):
        return e
    os_error = as_os_error(e)
    return e if os_error is None else save_error(os_error, target, run_dir)


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
