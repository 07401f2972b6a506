"""Fault injection for crash-safety tests: `PIPERCTL_FAULT=<point>:<step>[@<rank>]` hits a process there.

Points: `mid-save` and `after-save` (SIGKILL inside / right after writing checkpoint <step>),
`sigterm` and `sigint` (that signal after optimizer step <step>, as a scheduler or Ctrl-C would).
With `@<rank>` only that rank of a multi-process run is hit (its RANK variable); without it, every rank.
"""

from __future__ import annotations

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
        os.kill(os.getpid(), _SIGNALS.get(point, signal.SIGKILL))
