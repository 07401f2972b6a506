"""`piperctl ARGS` in a new process forked from a server that has imported piperctl, torch and lerobot once.

A fresh interpreter spends 5-10 s of CPU importing torch, lerobot and transformers before `piperctl`
does anything; the crash tests start dozens. multiprocessing's forkserver keeps one single-threaded
process with those imports done and forks each run from it, so every run still starts from a clean,
never-trained interpreter state (no threads, no torch settings of earlier tests), with its own
stdin/stdout/stderr and default signal handlers, and is killed, exits and is waited for like the
console script. `fresh=True` (or PIPERCTL_TEST_FRESH=1) runs the installed console script instead.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile

import piperctl.cli  # noqa: F401  (the forkserver preloads this module: its imports are the point)
import piperctl.training.trainer  # noqa: F401

_context: multiprocessing.context.ForkServerContext | None = None


def _server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        # Started on first use, after the session fixtures set the cache variables lerobot reads at import.
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([__name__])
    return _context


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `piperctl ARGS` with `env` added, in a forked process; its exit code, stdout and stderr."""
    with tempfile.TemporaryDirectory(prefix="piperctl-cli-") as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        proc = _server().Process(target=_child, args=(args, {**os.environ, **env}, os.getcwd(), out, err))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["piperctl", *args], timeout)
        texts = []
        for path in (out, err):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    return subprocess.CompletedProcess(["piperctl", *args], proc.exitcode, texts[0], texts[1])


def _child(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """The forked process: look like a fresh `piperctl ARGS`, run it, exit with its code."""
    import atexit
    import signal
    import threading
    import traceback

    code = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # A process forked by the server inherits its start method; the console script's DataLoader
        # workers fork from the trainer (and die with it), so must these.
        multiprocessing.set_start_method("fork", force=True)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = ["piperctl", *args]
        from piperctl.cli import main

        try:
            main(args)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        threading._shutdown()  # join non-daemon threads, as the interpreter does at exit
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        os._exit(code)
