"""Capture and restore every random generator a training run touches, without pickle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from piperctl.checkpoint import RNG_STATE_JSON, RNG_STATE_TENSORS


def save_rng_state(folder: Path) -> None:
    """Write python, numpy, torch CPU and CUDA generator states into `folder`."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    if hasattr(torch, "mps") and torch.backends.mps.is_available():
        tensors["torch_mps"] = torch.mps.get_rng_state()
    save_file(tensors, str(folder / RNG_STATE_TENSORS))
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
    (folder / RNG_STATE_JSON).write_text(json.dumps(data) + "\n", encoding="utf-8")


def load_rng_state(folder: Path) -> None:
    """Restore the generator states written by `save_rng_state`."""
    tensors = load_file(str(folder / RNG_STATE_TENSORS))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "torch_mps" in tensors and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["torch_mps"])
    data = json.loads((folder / RNG_STATE_JSON).read_text(encoding="utf-8"))
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
