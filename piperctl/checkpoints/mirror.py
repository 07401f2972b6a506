"""`--mirror URL`: upload a run's published checkpoints, run.json, metrics and final model in the background.

The commit rule (docs/cloud.md): a folder's files go first and its manifest.json last, so a remote
folder without its manifest is never taken for complete; replacing or deleting a remote folder takes
its manifest away first. The remote holds what the local run folder holds (keep-last rotation, the
best checkpoint), and a remote checkpoint is deleted only once every newer local one is complete
there. Uploads never stop training: a failure is retried with backoff, reported on one line, tried
again at the next checkpoint, and listed when the run ends.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from piperctl.checkpoints.format import (
    MANIFEST,
    METRICS_FILE,
    PRETRAINED_DIR,
    RUN_FILE,
    list_checkpoints,
    step_of,
    utc_now,
)
from piperctl.checkpoints.remote import OWNER_FILE, Remote, open_remote, remote_error
from piperctl.console import log, progress_bar
from piperctl.errors import PiperctlError
from piperctl.faults import maybe_crash
from piperctl.fs import first_line


class Mirror:
    """Keeps a remote copy of one run folder, from one background thread."""

    attempts = 4  # tries per upload before it is reported (and tried again at the next checkpoint)
    backoff_s = 1.0  # first wait between tries; doubles each time

    def __init__(
        self, url: str, run_dir: Path, run_id: str, on_uploaded: Callable[[int, float], None] | None = None
    ) -> None:
        self.remote: Remote = open_remote(url)
        self.run_dir = run_dir
        self.run_id = run_id
        self.on_uploaded = on_uploaded  # (step, seconds) of each checkpoint once it is complete remotely
        self.failures: dict[str, str] = {}  # what could not be uploaded (after every try) -> why
        self._uploaded: dict[str, bytes] = {}  # folder name -> the manifest that is complete remotely
        self._wanted: set[str] = set()  # "sync" (checkpoints, metrics) and "final" (the final model)
        self._busy = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def shown(self) -> str:
        """The URL as printed (no credentials)."""
        return self.remote.shown

    def claim(self) -> None:
        """Refuse a URL another run mirrors to (its owner file or run.json names it); else mark it ours."""
        try:
            for name in (OWNER_FILE, RUN_FILE):
                raw = self.remote.read_bytes(name)
                other = _run_id_of(raw)
                if raw is not None and other != self.run_id:
                    raise PiperctlError(
                        f"{self.shown} already holds the mirror of run {other or '(unreadable ' + name + ')'}",
                        hint="choose another --mirror URL (one run per remote folder)",
                    )
            owner = {
                "run_id": self.run_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": utc_now(),
            }
            self.remote.fs.makedirs(self.remote.root, exist_ok=True)
            self.remote.fs.pipe_file(self.remote.path(OWNER_FILE), (json.dumps(owner) + "\n").encode())
        except Exception as e:
            raise remote_error(e, "mirror to", self.shown) from e
        log(f"mirroring checkpoints to {self.shown}")

    # -- what the CheckpointManager asks for -------------------------------------------------------

    def sync(self) -> None:
        """Upload every local checkpoint not yet complete remotely, then drop the remote ones rotated away."""
        self._want("sync")

    def upload_final(self) -> None:
        """Upload the final model (after the checkpoints), run.json and metrics."""
        self._want("sync")
        self._want("final")

    def not_remote(self) -> list[str]:
        """Local checkpoints (and the final model) that are not complete remotely."""
        names = [p.name for p in list_checkpoints(self.run_dir) if (p / MANIFEST).is_file()]
        if (self.run_dir / PRETRAINED_DIR / MANIFEST).is_file():
            names.append(PRETRAINED_DIR)
        return [n for n in names if self._uploaded.get(n) != self._manifest(self.run_dir / n)]

    def wait(self) -> list[str]:
        """Wait (with a progress bar) until the uploads asked for are done; what is still not remote.

        Ctrl-C stops waiting: the uploads left are named, and the local run folder still holds them.
        """
        if not self._pending():
            return self.report()
        total = max(1, len(self.not_remote()))
        try:
            with progress_bar(f"uploading to {self.shown}", total) as bar:
                while self._pending():
                    time.sleep(0.1)
                    done = total - len(self.not_remote())
                    if done > bar.completed:
                        bar.update(done - bar.completed)
        except KeyboardInterrupt:
            left = self.not_remote()
            log(
                f"stopped waiting for uploads: not on {self.shown}: {', '.join(left) or 'nothing'} (they are in {self.run_dir})"
            )
            return left
        return self.report()

    def report(self) -> list[str]:
        """Say which uploads failed and what is not remote; the latter as a list."""
        left = self.not_remote()
        for what, why in self.failures.items():
            log(f"warning: upload of {what} to {self.shown} failed: {why}")
        if left:
            log(f"warning: not on {self.shown}: {', '.join(left)} (they are in {self.run_dir})")
        return left

    # -- the background thread ---------------------------------------------------------------------

    def _want(self, job: str) -> None:
        with self._cond:
            self._wanted.add(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="piperctl-mirror", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _pending(self) -> bool:
        with self._cond:
            return bool(self._wanted) or self._busy

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._wanted:
                    self._cond.wait()
                job = "sync" if "sync" in self._wanted else "final"
                self._wanted.discard(job)
                self._busy = True
            try:
                if job == "sync":
                    self._sync()
                else:
                    self._retry(PRETRAINED_DIR, lambda: self._upload_folder(PRETRAINED_DIR))
                    self._retry(RUN_FILE, lambda: self._upload_file(RUN_FILE))
                    self._retry(METRICS_FILE, lambda: self._upload_file(METRICS_FILE))
            except Exception as e:  # never let the thread die: report and go on with the next job
                self.failures[job] = first_line(e)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _sync(self) -> None:
        self._retry(RUN_FILE, lambda: self._upload_file(RUN_FILE))
        local = [p for p in list_checkpoints(self.run_dir) if (p / MANIFEST).is_file()]
        # Newest first: when the machine is about to go, the newest checkpoint is the one that matters.
        for folder in reversed(local):
            self._retry(folder.name, lambda name=folder.name: self._upload_folder(name))
        self._retry(METRICS_FILE, lambda: self._upload_file(METRICS_FILE))
        self._retry("rotation", lambda: self._delete_rotated({p.name for p in local}))

    def _retry(self, what: str, upload: Callable[[], None]) -> bool:
        for attempt in range(self.attempts):
            try:
                upload()
            except Exception as e:
                if attempt + 1 < self.attempts:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                why = f"{type(e).__name__}: {first_line(e, 200)} ({self.attempts} tries)"
                self.failures[what] = why
                log(
                    f"warning: upload of {what} to {self.shown} failed: {why}; tried again at the next checkpoint"
                )
                return False
            self.failures.pop(what, None)
            return True
        return False

    @staticmethod
    def _manifest(folder: Path) -> bytes | None:
        try:
            return (folder / MANIFEST).read_bytes()
        except OSError:
            return None

    def _upload_folder(self, name: str) -> None:
        """Files first, manifest last; a remote folder with another manifest loses that manifest first."""
        local = self.run_dir / name
        manifest = self._manifest(local)
        if manifest is None or self._uploaded.get(name) == manifest:
            return  # rotated away meanwhile, or already complete remotely
        remote, fs = self.remote, self.remote.fs
        existing = remote.read_bytes(name, MANIFEST)
        if existing == manifest:
            self._uploaded[name] = manifest
            return
        started = time.perf_counter()
        if fs.exists(remote.path(name)):
            if existing is not None:
                fs.rm(remote.path(name, MANIFEST))  # uncommitted before anything in it changes
            fs.rm(remote.path(name), recursive=True)
        entries = json.loads(manifest)["files"]
        step = step_of(local) or 0
        try:
            for i, rel in enumerate(sorted(entries)):
                rpath = remote.path(name, rel)
                fs.makedirs(rpath.rpartition("/")[0], exist_ok=True)
                fs.put_file(str(local / rel), rpath)
                if i == 0:
                    maybe_crash("mid-upload", step)
        except FileNotFoundError:
            if not local.exists():
                return  # rotated away locally while uploading: no longer wanted remotely
            raise
        fs.pipe_file(remote.path(name, MANIFEST), manifest)  # the commit marker, last
        self._uploaded[name] = manifest
        if name != PRETRAINED_DIR and self.on_uploaded is not None:
            self.on_uploaded(step, time.perf_counter() - started)

    def _upload_file(self, name: str) -> None:
        path = self.run_dir / name
        if path.is_file():
            self.remote.fs.pipe_file(self.remote.path(name), path.read_bytes())

    def _delete_rotated(self, local: set[str]) -> None:
        """Delete remote checkpoints no longer kept locally, each only once all newer local ones are remote."""
        remote_names = self.remote.list_checkpoints()
        for name in remote_names:
            if name in local:
                continue
            step = step_of(Path(name)) or 0
            newer = [n for n in local if (step_of(Path(n)) or 0) > step]
            if not newer or any(n not in self._uploaded for n in newer):
                continue
            fs = self.remote.fs
            if fs.exists(self.remote.path(name, MANIFEST)):
                fs.rm(self.remote.path(name, MANIFEST))  # never offered as complete while it goes
            fs.rm(self.remote.path(name), recursive=True)
            self._uploaded.pop(name, None)


def _run_id_of(raw: bytes | None) -> str | None:
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data.get("run_id") if isinstance(data, dict) and isinstance(data.get("run_id"), str) else None
