"""One writer per run folder: an OS lock (flock) on RUN_DIR/run.lock, held for the life of the process.

The kernel drops the lock when the holder exits, however it exits (even SIGKILL), so a lock is
never stale. The file records who holds it (pid, host, since) for the message a second writer
gets. Readers (`checkpoints list`, `verify`) never take it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from piperctl.checkpoints.format import LOCK_FILE, RUN_FILE, utc_now
from piperctl.console import log
from piperctl.errors import PiperctlError


class RunLock:
    """Exclusive right to write one run folder; `acquire` refuses at once if another process has it."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self._fd: int | None = None
        self._created = False
        self._fork_hook = False

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None

    def acquire(self, run_dir: Path) -> None:
        """Take the lock of `run_dir` (created if missing), or raise naming the process that holds it."""
        if self._fd is not None:
            if self.run_dir is not None and self.run_dir.resolve() == run_dir.resolve():
                return
            raise RuntimeError("a RunLock holds one run folder at a time")
        self._created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PiperctlError(
                f"{run_dir} is being written by another piperctl process ({_holder(path)})",
                hint="wait for it to finish or stop it; 'piperctl checkpoints list' works meanwhile",
            ) from None
        except OSError as e:
            # Some network filesystems (Lustre without -o flock) have no flock: go on, but say so.
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            log(f"warning: cannot lock {path} ({e.strerror}): make sure no other process writes this run")
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.run_dir, self._fd = run_dir, fd
        if not self._fork_hook:
            # A forked child (a DataLoader worker) shares the locked file description: were it to keep
            # it, the lock would outlive this process by the seconds an orphaned worker takes to exit.
            os.register_at_fork(after_in_child=self._drop_in_child)
            self._fork_hook = True

    def _drop_in_child(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        """Let go of the lock; a folder that never became a run is left as it was found."""
        if self._fd is None or self.run_dir is None:
            return
        run_dir, fd = self.run_dir, self._fd
        self._fd = None
        if not (run_dir / RUN_FILE).exists():
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            if self._created:
                try:
                    run_dir.rmdir()
                except OSError:
                    pass  # something else was put there meanwhile: not ours to remove
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
