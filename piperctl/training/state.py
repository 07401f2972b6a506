"""What a checkpoint holds of a run, in one place: captured for a save, restored on resume.

As in torchtitan, each part of the state is `Stateful` (`state_dict` / `load_state_dict`): the
policy's weights, the optimizer, the LR scheduler, the fp16 loss scaler (`Precision`), the random
generators and `Progress` (step, samples, data order, topology, best checkpoint). `RunState` lists
them and is their one owner: `capture` takes a consistent `Snapshot` of all of them at one step
(written by `Snapshot.write` into the files of docs/checkpoint-format.md), `restore` loads them back.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from piperctl import __version__
from piperctl.checkpoints.adapters import (
    BaseRef,
    save_finetuned_files,
    save_peft_model,
    trainable_tensors,
)
from piperctl.checkpoints.format import (
    LEROBOT_LAYOUT,
    MODEL_CARD,
    OPTIMIZER_STATE,
    POLICY_WEIGHTS,
    TRAINING_STATE,
    BestCheckpoint,
    DataOrder,
    Topology,
    TrainingState,
    utc_now,
)
from piperctl.checkpoints.model import load_weights, policy_from_config, save_model_files
from piperctl.errors import PiperctlError
from piperctl.faults import maybe_crash
from piperctl.fs import first_line
from piperctl.training import rng
from piperctl.training.distributed import Dist
from piperctl.training.loading import isolated_rng
from piperctl.training.precision import Precision

if TYPE_CHECKING:
    from lerobot.policies.pretrained import PreTrainedPolicy
    from lerobot.processor import PolicyProcessorPipeline

    from piperctl.training.build import ModelParts


class Stateful(Protocol):
    """A part of the run a checkpoint holds (torch's and torchtitan's protocol)."""

    def state_dict(self) -> Any:
        """The part's state, as saved."""
        ...

    def load_state_dict(self, state: Any) -> None:
        """Put back a state returned by `state_dict`."""
        ...


@dataclass
class Progress:
    """Where the run stands: optimizer steps, samples seen, the data order, its process-count stretches, its best."""

    FIELDS = ("step", "samples_seen", "data", "topology", "best")  # as named in TrainingState

    step: int = 0
    samples_seen: int = 0
    data: DataOrder = field(default_factory=DataOrder)
    topology: list[Topology] = field(default_factory=list)
    best: BestCheckpoint | None = None

    def state_dict(self) -> dict[str, Any]:
        """Copies of every field (the loop goes on changing the data order while a save is written)."""
        return {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "data": dataclasses.replace(self.data),
            "topology": list(self.topology),
            "best": self.best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from the fields `state_dict` (or a `TrainingState`'s same-named fields) gave."""
        self.step = state["step"]
        self.samples_seen = state["samples_seen"]
        # The epoch's length is this run's (set when the data opens), not necessarily the checkpoint's.
        self.data = DataOrder(state["data"].epoch, state["data"].offset, self.data.epoch_length)
        self.topology = list(state["topology"])
        self.best = state["best"]


class RandomState:
    """Every random generator of every rank (python, numpy, torch CPU/CUDA/MPS): one part of the state."""

    def __init__(self, dist: Dist, seed: int) -> None:
        self.dist = dist
        self.seed = seed

    def state_dict(self) -> list[rng.RngState]:
        """Every rank's generator states, rank r's at index r (a collective: every rank calls it)."""
        return self.dist.all_gather(rng.capture_rng_state())

    def load_state_dict(self, folder: Path, step: int) -> None:
        """This rank's generators from a checkpoint; a rank its run did not have starts a fresh stream."""
        if not rng.load_rng_state(folder, self.dist.rank):
            rng.seed_everything(rng.derive_seed(self.seed, self.dist.rank, step))


@dataclass
class Snapshot:
    """One checkpoint's worth of state, captured at one step; `write` may run in another thread."""

    step: int
    policy: PreTrainedPolicy
    preprocessor: PolicyProcessorPipeline
    postprocessor: PolicyProcessorPipeline
    optimizer: dict[str, Any]
    generators: list[rng.RngState]  # every rank's, rank r's at index r
    training_state: TrainingState
    base: BaseRef | None = None  # a fine-tuning run: `trainable` is saved instead of the whole policy
    trainable: dict[str, torch.Tensor] | None = None

    def write(self, folder: Path) -> None:
        """Write the checkpoint's files into `folder` (the manager publishes and seals it)."""
        if self.base is None:
            save_model_files(folder, self.policy, self.preprocessor, self.postprocessor)
        else:
            save_finetuned_files(
                folder,
                self.policy.config,
                self.trainable or {},
                self.base,
                self.preprocessor,
                self.postprocessor,
            )
        maybe_crash("mid-save", self.step)
        maybe_crash("disk-full", self.step)
        torch.save(self.optimizer, folder / OPTIMIZER_STATE)
        rng.save_rng_states(folder, self.generators)
        (folder / TRAINING_STATE).write_text(self.training_state.to_text(), encoding="utf-8")


class RunState:
    """The one owner of what a checkpoint holds: it captures every part for a save and restores them on resume.

    `parts`: the policy, its processors, optimizer and scheduler; `describes`: the training state's fields that do not change while the run goes on (its config,
    dataset, policy type, batch sizes, LR schedule); `capture` fills in the rest.
    """

    def __init__(
        self,
        parts: ModelParts,
        precision: Precision,
        progress: Progress,
        rng_state: RandomState,
        describes: TrainingState,
    ) -> None:
        self.parts = parts  # policy, processors, optimizer (the prepared one once DDP wraps it), scheduler
        self.precision = precision
        self.progress = progress
        self.rng = rng_state
        self.describes = describes
        self.resumed_from: Path | None = None
        self._shadow: PreTrainedPolicy | None = None
        self._optimizer_shadow: dict[str, Any] | None = None
        self._trainable_shadow: dict[str, torch.Tensor] | None = None

    def training_state(self) -> TrainingState:
        """Where the run stands now, as training_state.json records it."""
        return dataclasses.replace(
            self.describes,
            **self.progress.state_dict(),
            scheduler=self.parts.scheduler.state_dict() if self.parts.scheduler is not None else None,
            scaler=self.precision.state_dict(),
            created=utc_now(),
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
        )

    def capture(self, copy: bool) -> Snapshot:
        """Every part at this step (a collective: gathers all ranks' generators, so all finished the step).

        `copy`: CPU copies of the weights and optimizer state that the loop may go on changing under
        (for background saves); otherwise the live objects, written before training continues.
        """
        state = self.training_state()
        generators = self.rng.state_dict()
        p = self.parts
        if p.base is not None:
            # Only what trains changes: the trainable tensors (and their optimizer state) are the save.
            live = trainable_tensors(p.policy)
            trainable = _cpu_copy(live, into=self._trainable_shadow) if copy else live
            optimizer = self._copy_optimizer() if copy else p.optimizer.state_dict()
            self._trainable_shadow = trainable if copy else None
            return Snapshot(
                state.step, p.policy, p.preprocessor, p.postprocessor, optimizer, generators, state,
                p.base, trainable,
            )  # fmt: skip
        if copy:
            policy, optimizer = self.cpu_copies()
        else:
            policy, optimizer = self.parts.policy, self.parts.optimizer.state_dict()
        return Snapshot(state.step, policy, p.preprocessor, p.postprocessor, optimizer, generators, state)

    def _copy_optimizer(self) -> dict[str, Any]:
        # Copying into the buffers of the previous save avoids allocating (and page-faulting) them anew.
        self._optimizer_shadow = _cpu_copy(self.parts.optimizer.state_dict(), into=self._optimizer_shadow)
        return self._optimizer_shadow

    def cpu_copies(self) -> tuple[PreTrainedPolicy, dict[str, Any]]:
        """CPU copies of the weights (in a shadow policy, built once) and of the optimizer state."""
        if self.parts.base is not None:
            return self.parts.policy, self._copy_optimizer()  # capture copies only the trainable tensors
        if self._shadow is None:
            # Building a module draws initial weights from the global generators: keep training's stream.
            with isolated_rng(0):
                self._shadow = policy_from_config(self.parts.policy_cfg).to("cpu")
        self._shadow.load_state_dict(self.parts.policy.state_dict())
        return self._shadow, self._copy_optimizer()

    def restore(self, folder: Path, state: TrainingState) -> bool:
        """Load every part from checkpoint `folder` (whose verified training state is `state`).

        True when this run has another number of processes than the one that wrote the checkpoint
        (a new stretch of the topology begins).
        """
        if self.parts.base is None:  # a fine-tuning run's tensors were loaded when its model was rebuilt
            load_weights(self.parts.policy, folder / POLICY_WEIGHTS)
        _load_optimizer_state(self.parts.optimizer, folder / OPTIMIZER_STATE)
        self.precision.load_state_dict(state.scaler)
        if self.parts.scheduler is not None and state.scheduler is not None:
            self.parts.scheduler.load_state_dict(state.scheduler)
        self.progress.load_state_dict({name: getattr(state, name) for name in Progress.FIELDS})
        here = self.describes
        per_process = here.batch_size_per_process or 0
        if not self.progress.topology:  # written before the topology was recorded
            effective = state.effective_batch_size or per_process * state.world_size * here.grad_accum
            self.progress.topology = [Topology(0, state.world_size, per_process, effective)]
        changed = self.progress.topology[-1].world_size != here.world_size
        if changed:
            self.progress.topology.append(
                Topology(state.step, here.world_size, per_process, here.effective_batch_size or 0)
            )
        self.rng.load_state_dict(folder, state.step)
        self.resumed_from = folder
        return changed

    def write_final(self, folder: Path, run_dir: Path) -> None:
        """Fill the run's final model folder: lerobot's layout, piperctl.json and the model card (no training state)."""
        from piperctl.checkpoints.export import model_info, write_model_info
        from piperctl.checkpoints.model_card import model_card

        p = self.parts
        if p.base is not None and p.base.peft is not None:
            save_peft_model(folder, p.policy, p.base, p.preprocessor, p.postprocessor)
        else:
            save_model_files(folder, p.policy, p.preprocessor, p.postprocessor, LEROBOT_LAYOUT)
        info = model_info(self.training_state(), run_dir, "final")
        write_model_info(folder, info)
        (folder / MODEL_CARD).write_text(model_card(info), encoding="utf-8")
        maybe_crash("mid-final-save", self.progress.step)


def _load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    try:
        # The full integrity check (which scans this pickle) passed before resume got here.
        opt_state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not a plain state dict
        raise PiperctlError(
            f"{path} cannot be loaded safely ({first_line(e)})",
            hint="the file is damaged or not a plain optimizer state; pick another checkpoint",
        ) from e
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise PiperctlError(f"{path} does not fit this policy's parameters ({e})") from e


def versions() -> dict[str, str]:
    """The versions a training state records: piperctl, lerobot, torch, python."""
    import lerobot

    return {
        "piperctl": __version__,
        "lerobot": lerobot.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _cpu_copy(obj: Any, into: Any = None) -> Any:
    """A copy of a (nested) state dict whose tensors are CPU tensors of its own, safe to write while training goes on.

    `into`: a previous copy of the same structure whose tensors are reused (copied into) where they fit.
    """
    if isinstance(obj, torch.Tensor):
        if isinstance(into, torch.Tensor) and into.shape == obj.shape and into.dtype == obj.dtype:
            return into.copy_(obj.detach())
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        old = into if isinstance(into, dict) else {}
        return {k: _cpu_copy(v, old.get(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        old = into if isinstance(into, list | tuple) and len(into) == len(obj) else [None] * len(obj)
        return type(obj)(_cpu_copy(v, o) for v, o in zip(obj, old, strict=True))
    return obj
