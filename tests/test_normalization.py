"""Normalization like lerobot-train: ImageNet statistics for cameras (opt out with --no-imagenet-stats),
the training episodes' own statistics for state and action, written into the saved processors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tests.conftest import train_tiny

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CAMERA = "observation.images.front"


def _normalizer(checkpoint: Path) -> dict[str, torch.Tensor]:
    (path,) = checkpoint.glob("*preprocessor*normalizer*.safetensors")
    return load_file(str(path))


def test_cameras_use_imagenet_stats_by_default_and_the_datasets_own_on_request(
    reference_run: Path, tiny_ds: Path, tmp_path: Path
) -> None:
    default = _normalizer(reference_run / "checkpoint-8")
    for stat, want in IMAGENET.items():
        np.testing.assert_allclose(default[f"{CAMERA}.{stat}"].flatten().numpy(), want, rtol=1e-6)
    config = json.loads((reference_run / "checkpoint-8" / "training_state.json").read_text())["config"]
    assert config["imagenet_stats"] is True

    own_run = tmp_path / "own"
    train_tiny(own_run, tiny_ds, steps=1, save_every=1, imagenet_stats=False)
    own = _normalizer(own_run / "checkpoint-1")
    assert not np.allclose(own[f"{CAMERA}.std"].flatten().numpy(), IMAGENET["std"], rtol=1e-2)
    assert float(own[f"{CAMERA}.std"].max()) < 1.0 and float(own[f"{CAMERA}.mean"].min()) > 0.0
    # State and action: the training episodes' statistics either way (never ImageNet's, never held-out ones).
    for key in ("observation.state.mean", "observation.state.std", "action.mean", "action.std"):
        assert torch.equal(default[key], own[key]), key
