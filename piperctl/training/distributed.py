"""Data-parallel plumbing: process group and DDP through accelerate, a few collectives.

A run of N processes is N copies of the single-process loop. Each rank reads its own shard of every
global batch (see `piperctl.training.loading.EpochSampler`), DDP averages the gradients, and rank 0 alone writes
files. `Dist` is what the loop needs from that world: who am I, wrap the model, agree with the others.
With one process every method is the identity, so a single-process run is the plain loop it always was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from piperctl import console
from piperctl.errors import PiperctlError, from_os_error
from piperctl.fs import first_line

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

# Variables a launcher sets (torchrun / accelerate launch, MPI, our own `--num-processes`).
_WORLD_SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
LAUNCHER_VAR = "PIPERCTL_LAUNCHER"
# Policies whose every trainable parameter takes part in each training step: DDP need not search for
# unused ones (a graph traversal every step, and a warning on every rank when it finds none).
ALL_PARAMETERS_USED = frozenset({"act", "diffusion"})


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def env_world_size() -> int:
    """The number of processes a launcher started (1 when piperctl runs alone)."""
    return max(1, _env_int(_WORLD_SIZE_VARS, 1))


def env_rank() -> int:
    """This process's global rank as its launcher set it (0 when alone)."""
    return _env_int(_RANK_VARS, 0) if env_world_size() > 1 else 0


class Dist:
    """This process's place in a data-parallel run, and the few collectives the training loop needs."""

    def __init__(self, accelerator: Any = None) -> None:
        self.accelerator = accelerator
        if accelerator is None:
            self.rank, self.world_size, self.device = 0, 1, None
        else:
            self.rank = accelerator.process_index
            self.world_size = accelerator.num_processes
            device = accelerator.device
            # lerobot accepts "cpu" but not accelerate's "cpu:0"; each GPU rank keeps its own "cuda:N".
            self.device = "cpu" if device.type == "cpu" else str(device)

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and logs."""
        return self.rank == 0

    @property
    def launcher_hint(self) -> str:
        """How to start a resumed run the same way as this one (appended to `piperctl resume PATH`)."""
        if self.world_size == 1:
            return ""
        if os.environ.get(LAUNCHER_VAR) == "local":
            return f" --num-processes {self.world_size}"
        return f" (under your launcher, with {self.world_size} processes or another count)"

    def prepare(self, model: torch.nn.Module, optimizer: Any) -> tuple[torch.nn.Module, Any]:
        """Wrap the model in DDP and the optimizer for accelerate (unchanged with one process)."""
        if self.accelerator is None:
            return model, optimizer
        kind = getattr(getattr(model, "config", None), "type", None)
        self.accelerator.ddp_handler.find_unused_parameters = kind not in ALL_PARAMETERS_USED
        return self.accelerator.prepare(model, optimizer)

    @contextmanager
    def _collective(self) -> Iterator[None]:
        try:
            yield
        except RuntimeError as e:  # gloo/NCCL: another process died or hung up
            raise PiperctlError(
                f"lost contact with the other processes of this run ({first_line(e)})",
                hint="another process failed first; its message says why",
                exit_code=1,
            ) from e

    def no_sync(self, model: torch.nn.Module, skip: bool) -> Any:
        """With `skip`, a context in which DDP does not all-reduce gradients (a micro-batch before the last)."""
        from contextlib import nullcontext

        if self.accelerator is None or not skip:
            return nullcontext()
        return self.accelerator.no_sync(model)

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank (small picklable objects only)."""
        if self.accelerator is None:
            return [obj]
        from accelerate.utils import gather_object

        with self._collective():
            return gather_object([obj])

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        if self.accelerator is None:
            return obj
        from accelerate.utils import broadcast_object_list

        with self._collective():
            return broadcast_object_list([obj], from_process=0)[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over ranks."""
        if self.accelerator is None:
            return values
        import torch
        from accelerate.utils import reduce

        with self._collective():
            return reduce(
                torch.tensor(values, dtype=torch.float64, device=self.accelerator.device), "sum"
            ).tolist()

    def mean(self, value: float) -> float:
        """The mean of `value` over ranks (one rank: the value itself, bit for bit)."""
        if self.accelerator is None:
            return value
        return self.sum([value])[0] / self.world_size

    def agree_on_signal(self, signum: int | None) -> int:
        """The stop signal every rank acts on: any rank's SIGINT/SIGTERM stops all of them at this step.

        The highest signal number wins, so all ranks exit with the same code (SIGTERM over SIGINT).
        """
        if self.accelerator is None:
            return signum or 0
        return max(int(s or 0) for s in self.all_gather(signum))

    def all_or_none(self, fn: Callable[[], T], *, main_only: bool = False) -> T:
        """Run `fn` (on every rank, or on rank 0 only); if it fails anywhere, raise on every rank.

        Without this a rank that fails alone leaves the others waiting in their next collective.
        The lowest failing rank reports its error; the others raise a silent copy with the same exit code.
        With `main_only`, rank 0's return value is handed to every rank (and this is a barrier).
        """
        if self.accelerator is None:
            return fn()
        result: Any = None
        error: BaseException | None = None
        if self.is_main or not main_only:
            try:
                result = fn()
            except OSError as e:  # the user's to fix (permissions, disk full): one line on every rank
                error = from_os_error(e)
                error.__cause__ = e
            except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = e
        report = None
        if error is not None:
            message = str(error) if isinstance(error, PiperctlError) else f"{type(error).__name__}: {error}"
            code = error.exit_code if isinstance(error, PiperctlError) else 1
            report = (self.rank, message, code)
        # One collective carries both every rank's verdict and rank 0's result.
        gathered = self.all_gather((report, result if main_only and self.is_main else None))
        failed = [r for r, _ in gathered if r is not None]
        if failed:
            rank, message, code = failed[0]
            if error is not None and rank == self.rank:
                if isinstance(error, PiperctlError):
                    error.rank_report = True  # type: ignore[attr-defined]
                raise error
            copy = PiperctlError(f"rank {rank} failed: {message}", exit_code=code)
            copy.silent = True
            raise copy from error
        return gathered[0][1] if main_only else result

    def close(self) -> None:
        """Leave the process group (after a normal end or an agreed stop)."""
        if self.accelerator is not None:
            # Tear down together: a rank that destroys the gloo group while its peer is still in
            # a collective (or still owns DDP's reducer) can die in std::terminate (SIGABRT).
            self.accelerator.wait_for_everyone()
            # gloo's worker threads release the barrier's tensors after it returns, and need the GIL
            # for that. A group destroyed (later, when DDP's reducer is freed) while one still waits
            # for it deadlocks at exit; a moment without the GIL lets them finish.
            time.sleep(0.2)
            self.accelerator.end_training()


def init(device: Callable[[], str], precision: str = "fp32") -> Dist:
    """Join the process group a launcher set up (or run alone); `device()` names the device to use.

    `device` is only called with several processes: it picks the backend (gloo on CPU, NCCL on
    CUDA), and each process then uses its own GPU (`cuda:LOCAL_RANK`). `precision` (fp32, bf16,
    fp16) becomes accelerate's mixed_precision.
    """
    if env_world_size() == 1:
        return Dist()
    console.set_rank(env_rank())
    name = device()
    if name == "mps":
        raise PiperctlError(
            "several processes cannot share Apple's MPS device", hint="train with one process, or on CPU/CUDA"
        )
    if name.startswith("cuda"):
        import torch

        per_machine, gpus = _env_int(("LOCAL_WORLD_SIZE",), 1), torch.cuda.device_count()
        if per_machine > gpus:
            raise PiperctlError(
                f"{per_machine} processes on this machine but {gpus} GPU(s): each process needs its own GPU",
                hint="start one process per GPU, or train on CPU with --device cpu",
            )
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Like lerobot-train: policies may leave parameters unused in a step (conditional computation);
    # `Dist.prepare` turns the search off for the policies known to use every parameter.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    try:
        from piperctl.training.precision import ACCELERATE_NAMES

        accelerator = Accelerator(
            cpu=name == "cpu",
            kwargs_handlers=[ddp],
            step_scheduler_with_optimizer=False,
            mixed_precision=ACCELERATE_NAMES[precision],
        )
    except (RuntimeError, ValueError) as e:
        raise PiperctlError(
            f"cannot join the process group ({first_line(e)})",
            hint="start every process with the same launcher settings (MASTER_ADDR, MASTER_PORT, WORLD_SIZE)",
        ) from e
    dist = Dist(accelerator)
    if dist.world_size != env_world_size():
        raise PiperctlError(
            f"accelerate sees {dist.world_size} processes, the launcher started {env_world_size()}"
        )
    console.set_rank(dist.rank)
    return dist


@contextmanager
def errors_once() -> Iterator[None]:
    """Errors that every rank raises are printed by one: mark the copies on the other ranks silent."""
    rank = env_rank()
    console.set_rank(rank)
    try:
        yield
    except PiperctlError as e:
        # A rank's own report (from `all_or_none`) keeps its voice; every other copy is a duplicate.
        if rank > 0 and not getattr(e, "rank_report", False):
            e.silent = True
        raise
