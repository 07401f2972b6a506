"""Turning SIGINT/SIGTERM into "save a checkpoint and stop at the next step boundary"."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from piperctl.console import log


class StopFlag:
    """Records the first SIGINT/SIGTERM; the loop checks `signum` between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
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
