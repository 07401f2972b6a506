"""Fault injection for crash-safety tests: `PIPERCTL_FAULT=<point>:<step>[@<rank>]` hits a process there.

Points (SIGKILL unless said otherwise):
- `after-start` (step 0): right after run.json is written, before any checkpoint;
- `mid-save` / `after-save`: inside / right after writing checkpoint <step>;
- `mid-rotate`: while --keep-last deletes an old checkpoint after saving checkpoint <step>;
- `mid-final-save`: while the final model of a run that ended at <step> is written;
- `mid-upload`: with `--mirror`, after the first file of checkpoint <step> is uploaded (before its manifest);
- `disk-full`: raises OSError(ENOSPC) inside the write of checkpoint <step>, as a full disk would;
- `kill`: SIGKILL right after optimizer step <step> (a crash between saves);
- `sigterm` / `sigint`: that signal after optimizer step <step>, as a scheduler or Ctrl-C would.
With `@<rank>` only that rank of a multi-process run is hit (its RANK variable); without it, every rank.
"""

from __future__ import annotations

import errno
import os
import signal

_SIGNALS = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}


def maybe_crash(point: str, step: int) -> None:
    """Signal this process when PIPERCTL_FAULT names `point` at `step` (tests only; no-op otherwise)."""
    spec = os.environ.get("PIPERCTL_FAULT")
    if not spec:
        return
    name, _, at = spec.partition(":")
    at, _, rank = at.partition("@")
    if rank and rank != os.environ.get("RANK", "0"):
        return
    if name == point and at.isdigit() and int(at) == step:
        if point == "disk-full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "(injected fault)")
        os.kill(os.getpid(), _SIGNALS.get(point, signal.SIGKILL))
