"""`piperctl train|resume --num-processes N`: start N ranks of one run on this machine and wait for them.

Each rank gets the variables torchrun would set (RANK, WORLD_SIZE, MASTER_ADDR, ...), so the ranks
join through accelerate exactly as under `torchrun` or `accelerate launch`. Unlike those, this
launcher forwards SIGINT/SIGTERM once and then waits for the checkpoint however long it takes, exits
with the ranks' own exit code, and prints no traceback of its own.

On a Linux machine without CUDA the launcher imports torch, lerobot and piperctl once and forks the
ranks from itself: a fresh interpreter spends 10-15 s of CPU on those imports, N ranks importing at
once contend for the same cores, and forked ranks share the imported pages. With a GPU (CUDA must
not be touched before a fork) or elsewhere, or with PIPERCTL_FRESH_RANKS=1, each rank is a fresh
`python -m piperctl`.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from piperctl import console
from piperctl.errors import PiperctlError
from piperctl.training.distributed import LAUNCHER_VAR, env_world_size

FRESH_RANKS_VAR = "PIPERCTL_FRESH_RANKS"

# What every rank imports before it trains: done once in the launcher when the ranks are forked.
_RANK_IMPORTS = (
    "accelerate",
    "lerobot.datasets.lerobot_dataset",
    "lerobot.policies.factory",
    "lerobot.processor",
    "piperctl.training.trainer",
)


def launch_local(
    num_processes: int, argv: list[str], main: Callable[[list[str]], None], resume_hint: str | None = None
) -> int:
    """Run `piperctl ARGV` as `num_processes` ranks of one run on this machine; its exit code.

    `main` is piperctl's command line, which a forked rank calls with ARGV (a fresh one runs
    `python -m piperctl ARGV`).
    """
    if env_world_size() > 1:
        raise PiperctlError(
            "--num-processes cannot be used inside torchrun/accelerate launch",
            hint="let the launcher start the processes, or run piperctl directly with --num-processes",
        )
    port = _free_port()
    threads = max(1, (os.cpu_count() or 1) // num_processes)
    envs = []
    for rank in range(num_processes):
        env = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(num_processes),
            "LOCAL_WORLD_SIZE": str(num_processes),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "GROUP_RANK": "0",
            LAUNCHER_VAR: "local",
            # N processes each using every core would oversubscribe the CPU many times over.
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
        }
        envs.append(env)
    fork = _prepare_fork()
    procs = [_fork_rank(main, argv, env) if fork else _start_fresh_rank(argv, env) for env in envs]

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        first, stuck = wait_for_ranks(procs)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if stuck:
        console.log(
            f"warning: process {', '.join(map(str, stuck))} of {num_processes} had not exited "
            f"{FINISHED_GRACE_S:.0f} s after the others finished (stuck tearing down the process group); "
            "stopped it — the run's files were written before"
        )
    if first is None:
        return 0
    rank, code, _ = first
    if code < 0:
        name = signal.Signals(-code).name
        hint = (
            f" — continue from its last checkpoint with: piperctl resume {resume_hint}" if resume_hint else ""
        )
        console.fail_line(f"process {rank} of {num_processes} was killed by {name}; stopped the others{hint}")
        return 128 - code
    return code


# A rank that exits 0 has passed the run's last barrier: the others have only their teardown left.
FINISHED_GRACE_S = 30.0


def wait_for_ranks(
    procs: list[Any], finished_grace: float = FINISHED_GRACE_S, tick: float = 0.1
) -> tuple[tuple[int, int, float] | None, list[int]]:
    """Wait for every rank; (rank, exit code, when) of the failure to report or None, and the ranks
    stopped for hanging after the others had finished."""
    first: tuple[int, int, float] | None = None
    finished_at: float | None = None
    stuck: list[int] = []
    while [p.poll() for p in procs].count(None):
        now = time.monotonic()
        if first is None:
            first = _first_failure(procs, now)
        if first is not None:
            # A rank killed by a signal leaves the others stuck in a collective: stop them soon.
            # After an error every rank agreed on, they are exiting anyway.
            grace = 5.0 if first[1] < 0 else 60.0
            if now - first[2] > grace:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
        elif any(p.returncode == 0 for p in procs):
            finished_at = finished_at or now
            if now - finished_at > finished_grace:
                stuck = [rank for rank, p in enumerate(procs) if p.poll() is None]
                for rank in stuck:
                    procs[rank].kill()
                    procs[rank].wait()
                break
        time.sleep(tick)
    if first is None:
        first = _first_failure(procs, 0.0, skip=stuck)
    return first, stuck


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # A rank whose launcher was killed gets SIGTERM: it checkpoints with the others and exits.
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _prepare_fork() -> bool:
    """Import what the ranks need, once; True where forking them is then safe (Linux, no CUDA, one thread)."""
    if os.environ.get(FRESH_RANKS_VAR, "") not in ("", "0") or not sys.platform.startswith("linux"):
        return False
    # Ask NVML, not the CUDA driver: a CUDA context made before fork() breaks CUDA in every child.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    if torch.cuda.is_initialized() or torch.cuda.is_available():
        return False
    for name in _RANK_IMPORTS:
        __import__(name)
    return threading.active_count() == 1 and not torch.cuda.is_initialized()


def _start_fresh_rank(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "piperctl", *argv],
        env={**os.environ, **env},
        # Own session: a Ctrl-C in the terminal reaches only us, and we forward it exactly once.
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads in this process yet
    )


class _ForkedRank:
    """A rank forked from this process: the part of `subprocess.Popen` the launcher uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while it runs."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the rank."""
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the rank."""
        self.send_signal(signal.SIGKILL)

    def wait(self) -> int:
        """Block until the rank exits; its exit code."""
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def _fork_rank(main: Callable[[list[str]], None], argv: list[str], env: dict[str, str]) -> _ForkedRank:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else text buffered here would be printed again by every rank
    pid = os.fork()
    if pid == 0:
        _run_rank(main, argv, env)
    return _ForkedRank(pid)


def _run_rank(main: Callable[[list[str]], None], argv: list[str], env: dict[str, str]) -> NoReturn:
    """The forked rank: what `python -m piperctl ARGV` would do with `env` set, then exit with its code."""
    try:
        os.setsid()  # as start_new_session: a Ctrl-C in the terminal reaches the launcher only
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.update(env)
        import torch

        # torch read OMP_NUM_THREADS when the launcher imported it; this rank's share is set here.
        if env["OMP_NUM_THREADS"].isdigit():
            torch.set_num_threads(max(1, int(env["OMP_NUM_THREADS"])))
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    run_and_exit(main, argv)


def run_and_exit(main: Callable[[list[str]], None], argv: list[str]) -> NoReturn:
    """In a forked process: `main(ARGV)` as the console script runs it, then exit with its code."""
    code = 1
    try:
        sys.argv = ["piperctl", *argv]
        try:
            main(argv)
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
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: S110 - a closed pipe: nothing left to say it on
                pass
        os._exit(code)


def _first_failure(procs: list[Any], now: float, skip: Sequence[int] = ()) -> tuple[int, int, float] | None:
    """(rank, exit code, now) of the failed rank to report, or None while none has failed.

    A rank killed by a signal is the cause; the others then fail for lost contact with it.
    """
    failed = [
        (rank, p.returncode)
        for rank, p in enumerate(procs)
        if p.returncode not in (None, 0) and rank not in skip
    ]
    failed.sort(key=lambda f: (f[1] >= 0, f[0]))
    return (*failed[0], now) if failed else None
