"""`piperctl ARGS` in a new process forked from a server that has imported torch, lerobot and piperctl once.

A fresh interpreter spends 10-15 s of CPU importing torch, lerobot, transformers, diffusers and
datasets before `piperctl` does anything (a tiny 8-step `train` measured 22 s fresh, 5 s forked);
the crash tests start dozens of runs. multiprocessing's forkserver keeps one single-threaded process
with those imports done and forks each run from it, so every run is still a process of its own
(SIGKILL kills it, its background threads die with it) that starts from a never-trained interpreter
state: no threads, no torch settings of earlier tests, its own stdin/stdout/stderr, default signal
handlers, the test's environment and working directory.

What a fork cannot give: variables the imported libraries read at import time (HF_HUB_OFFLINE,
HF_DATASETS_CACHE, HF_LEROBOT_HOME) keep the values the test session set before the server started,
and the console script's own start is not exercised. Tests about those run the installed script
(`piperctl_cli(..., fresh=True)`), as do runs with `--num-processes` (the launcher forks its ranks'
processes itself).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

# The server preloads this module: these imports are its point (lerobot's are what a run needs first).
import lerobot.datasets.lerobot_dataset  # noqa: F401
import lerobot.policies.factory  # noqa: F401
import lerobot.processor  # noqa: F401

import piperctl.cli  # noqa: F401
import piperctl.training.trainer  # noqa: F401

_context: multiprocessing.context.ForkServerContext | None = None


def _server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        # Started on first use, after the session fixtures set the cache variables lerobot reads at import.
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([__name__])
    return _context


class ForkedRun:
    """A `piperctl ARGS` process forked from the server, started and not yet waited for."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        *,
        without_dac: bool = False,
        new_process_group: bool = False,
        setup: tuple[Callable[..., Any], tuple] | None = None,
    ) -> None:
        self.args = args
        self._tmp = tempfile.TemporaryDirectory(prefix="piperctl-cli-")
        self._out, self._err = os.path.join(self._tmp.name, "out"), os.path.join(self._tmp.name, "err")
        child_args = (
            args,
            {**os.environ, **env},
            os.getcwd(),
            self._out,
            self._err,
            without_dac,
            new_process_group,
            setup,
        )
        self._proc = _server().Process(target=_child, args=child_args)
        self._proc.start()

    @property
    def pid(self) -> int | None:
        """The process id."""
        return self._proc.pid

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the process."""
        os.kill(self._proc.pid, sig)

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait for the exit; its code, stdout and stderr (killed and TimeoutExpired after `timeout` s)."""
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
            self._tmp.cleanup()
            raise subprocess.TimeoutExpired(["piperctl", *self.args], timeout)
        texts = []
        for path in (self._out, self._err):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
            except FileNotFoundError:  # killed before it opened its output
                texts.append("")
        self._tmp.cleanup()
        return subprocess.CompletedProcess(["piperctl", *self.args], self._proc.exitcode, texts[0], texts[1])


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `piperctl ARGS` with `env` added, in a forked process; its exit code, stdout and stderr."""
    return ForkedRun(args, env).wait(timeout)


def _drop_dac_capabilities() -> None:
    """Keep root, lose what lets root ignore file permissions: `setpriv --bounding-set -dac_override,...`."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # {effective, permitted, inheritable} for capabilities 0-31, 32-63
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP failed")
        for i in range(3):
            data[i] &= ~(1 << cap)
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _child(
    args: list[str],
    env: dict[str, str],
    cwd: str,
    out: str,
    err: str,
    without_dac: bool,
    new_group: bool,
    setup: tuple[Callable[..., Any], tuple] | None,
) -> None:
    """The forked process: look like a fresh `piperctl ARGS`, run it, exit with its code."""
    import signal
    import traceback

    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115
        # A forkserver child inherits "forkserver" as its default start method; a console script
        # has the platform's ("fork" on Linux), which its DataLoader workers must use too.
        multiprocessing.set_start_method(None, force=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        if without_dac:
            _drop_dac_capabilities()
        if new_group:  # like a shell job: a signal to the group reaches this run and its children only
            os.setpgrp()
        if setup is not None:  # what a test installs in its own process too (tiny models, say)
            setup[0](*setup[1])
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    from piperctl.cli import main
    from piperctl.training.launcher import run_and_exit

    run_and_exit(main, args)
