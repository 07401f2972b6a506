"""Fault injection for crash-safety tests: `PIPERCTL_FAULT=<point>:<step>` kills the process there."""

from __future__ import annotations

import os
import signal


def maybe_crash(point: str, step: int) -> None:
    """SIGKILL this process when PIPERCTL_FAULT names `point` at `step` (tests only; no-op otherwise)."""
    spec = os.environ.get("PIPERCTL_FAULT")
    if not spec:
        return
    name, _, at = spec.partition(":")
    if name == point and at.isdigit() and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)
