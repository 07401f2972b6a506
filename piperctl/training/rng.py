"""Capture and restore every random generator a training run touches, without pickle.

A checkpoint holds the generators of every rank of the run that wrote it. Rank 0's states sit under
the keys a single-process checkpoint uses (`torch_cpu`, `python`, ...), rank r's under `rank<r>.` in
rng_state.safetensors and `ranks["<r>"]` in rng_state.json, so a one-process checkpoint is simply a
checkpoint with one rank.

lerobot's `random_utils` is not used here: its `set_seed` calls `np.random.seed(seed)`, which refuses
the 63-bit seeds derived per rank and per sample (`derive_seed`), and its serialized state keeps no
MPS generator and stores python/numpy states as tensors, not the JSON this checkpoint format documents.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from piperctl.checkpoints.format import RNG_STATE_JSON, RNG_STATE_TENSORS

# One process's generators: torch states as tensors, python and numpy states as JSON.
RngState = tuple[dict[str, torch.Tensor], dict]


def capture_rng_state() -> RngState:
    """This process's python, numpy, torch CPU and CUDA/MPS generator states."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    if hasattr(torch, "mps") and torch.backends.mps.is_available():
        tensors["torch_mps"] = torch.mps.get_rng_state()
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    data = {
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss},
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    return tensors, data


def _prefix(rank: int) -> str:
    return "" if rank == 0 else f"rank{rank}."


def save_rng_states(folder: Path, states: list[RngState]) -> None:
    """Write the generator states of every rank (`states[r]` is rank r's) into `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    for rank, (rank_tensors, _) in enumerate(states):
        tensors.update({_prefix(rank) + k: v for k, v in rank_tensors.items()})
    save_file(tensors, str(folder / RNG_STATE_TENSORS))
    data = dict(states[0][1])
    data["world_size"] = len(states)
    if len(states) > 1:
        data["ranks"] = {str(rank): states[rank][1] for rank in range(1, len(states))}
    (folder / RNG_STATE_JSON).write_text(json.dumps(data) + "\n", encoding="utf-8")


def saved_ranks(folder: Path) -> int:
    """How many ranks' generator states a checkpoint holds."""
    data = json.loads((folder / RNG_STATE_JSON).read_text(encoding="utf-8"))
    return int(data.get("world_size", 1))


def load_rng_state(folder: Path, rank: int = 0) -> bool:
    """Restore rank `rank`'s generator states from `folder`; False (nothing changed) if it has none."""
    data = json.loads((folder / RNG_STATE_JSON).read_text(encoding="utf-8"))
    if rank > 0:
        data = data.get("ranks", {}).get(str(rank))
        if data is None:
            return False
    prefix = _prefix(rank)
    tensors = {
        k[len(prefix) :]: v
        for k, v in load_file(str(folder / RNG_STATE_TENSORS)).items()
        if k.startswith(prefix) and (rank > 0 or not k.startswith("rank"))
    }
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "torch_mps" in tensors and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["torch_mps"])
    py = data["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = data["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    return True


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. run seed, epoch, sample position)."""
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(
            1, dtype=np.uint64
        )[0]
        >> 1
    )
